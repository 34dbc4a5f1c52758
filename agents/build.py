"""From a resolved ``RunPlan`` to vectorised envs and an SB3 algorithm (settings are resolved in ``agents.plan``)."""

from __future__ import annotations

from functools import partial

import gymnasium as gym
import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecFrameStack, VecNormalize

from agents import schedules
from agents.checks import first_line
from agents.config import ConfigError
from agents.plan import RunPlan, make_env, resolve
from agents.registry import is_image
from rlattn.patches import init_pointer_head

__all__ = ["build_model", "init_heads", "make_env", "make_vec", "resolve"]


def make_vec(
    plan: RunPlan,
    n_envs: int,
    seed: int,
    monitor_dir: str | None = None,
    append_monitor: bool = False,
    evaluation: bool = False,
) -> VecEnv:
    """Monitored, history-wrapped, vectorised copies of the env (monitor files appended to on resume).

    ``evaluation``: with the evaluation env keywords (``--eval-env-kwargs`` over ``--env-kwargs``), in-process.
    With ``normalize_reward`` the training envs' rewards are scaled (``VecNormalize``); evaluation envs get
    the same wrapper with nothing scaled, so SB3 can sync them and they report the env's own returns.
    """
    cfg = plan.config
    env_kwargs = plan.eval_env_kwargs if evaluation else plan.env_kwargs
    wrapper = plan.wrap if plan.uses_history else None
    # evaluation envs stay in-process: their episodes are cheap beside the batched policy call
    vec_cls = SubprocVecEnv if cfg.vec_env == "subproc" and n_envs > 1 and not evaluation else DummyVecEnv
    venv = make_vec_env(
        partial(make_env, cfg.env, **env_kwargs),
        n_envs,
        seed,
        monitor_dir=monitor_dir,
        monitor_kwargs={"override_existing": not append_monitor},
        wrapper_class=wrapper,
        vec_env_cls=vec_cls,
    )
    if plan.observation == "stack":
        venv = VecFrameStack(venv, plan.history, channels_order="first")
    if plan.normalize_reward:
        venv = VecNormalize(venv, training=not evaluation, norm_obs=False, norm_reward=not evaluation, gamma=plan.gamma)
    return venv


def _policy_name(plan: RunPlan, space: gym.Space) -> str:
    kind = "dict" if isinstance(space, gym.spaces.Dict) else ("image" if is_image(space) else "vector")
    return plan.algo_entry.policy_name(kind, plan.extractor)


def build_model(plan: RunPlan, venv: VecEnv) -> BaseAlgorithm:
    """The SB3 algorithm with its policy and extractor; SB3's ``ortho_init`` is set explicitly."""
    cfg = plan.config
    algo, entry = plan.algo_entry, plan.extractor_entry
    policy_kwargs = dict(plan.policy_kwargs)
    if not algo.own_extractors:
        policy_kwargs["features_extractor_class"] = entry.cls
        policy_kwargs["features_extractor_kwargs"] = plan.extractor_kwargs
    elif plan.extractor in algo.frame_encoders:
        policy_name, encoder = algo.frame_encoders[plan.extractor]
        if policy_name is None:  # the kind's own policy, with this encoder in front of its memory
            policy_kwargs["features_extractor_class"] = encoder
        if frame := algo.frame_kwargs(plan.extractor, plan.extractor_kwargs):  # the user's given keywords win
            policy_kwargs["features_extractor_kwargs"] = {**frame, **policy_kwargs.get("features_extractor_kwargs", {})}
    if algo.actor_critic:
        # Orthogonal re-init suits the MLP and CNN baselines, not the transformer's own init.
        policy_kwargs.setdefault("ortho_init", entry.ortho_init)
    own = algo.plan_kwargs(plan) if algo.plan_kwargs is not None else {}
    try:
        model = algo.cls(
            _policy_name(plan, venv.observation_space),
            venv,
            seed=cfg.seed,
            device=cfg.device,
            verbose=cfg.verbose,
            policy_kwargs=policy_kwargs,
            **own,
            **schedules.as_algorithm_kwargs(plan.algo_kwargs),
        )
    except Exception as error:
        raise ConfigError(
            f"cannot build {cfg.algo} with --extractor {plan.extractor} on {cfg.env}: {first_line(error)}"
        ) from None
    if isinstance(model.policy, ActorCriticPolicy) and policy_kwargs.get("ortho_init") is False:
        init_heads(model.policy)
    return model


def init_heads(policy: ActorCriticPolicy) -> None:
    """SB3's orthogonal init on the MLP, actor and critic heads, leaving the extractor's own init.

    The actor's 0.01 gain makes the first policy nearly uniform; without it PPO on the T-Maze can
    commit to "always right" before it ever tries turning at the junction.
    """
    gains = {policy.mlp_extractor: np.sqrt(2), policy.action_net: 0.01, policy.value_net: 1.0}
    for module, gain in gains.items():
        module.apply(partial(policy.init_weights, gain=gain))
    init_pointer_head(policy)  # a pointer readout's patches are the actions: start with policy = attention
