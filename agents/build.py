"""From a ``TrainConfig`` to a checked plan, vectorised envs and an SB3 algorithm."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
from sb3_contrib import RecurrentPPO
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import NatureCNN
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecFrameStack

import envs
from agents.checks import (
    check_algo_values,
    check_device,
    check_env_id,
    check_int_flag,
    check_writable,
    first_line,
)
from agents.config import ALGOS, EXTRACTORS, HISTORY_INPUTS, VEC_ENVS, ConfigError, TrainConfig
from agents.presets import default_history, default_patch_size, preset_for
from rlattn import (
    HistoryAttentionExtractor,
    HistoryFlattenExtractor,
    HistoryObservation,
    PatchAttentionExtractor,
    SpatioTemporalAttentionExtractor,
)
from rlattn.patches import init_pointer_head

ALGO_CLASSES: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C, "dqn": DQN, "ppo_lstm": RecurrentPPO}
EXTRACTOR_CLASSES = {
    "attention": HistoryAttentionExtractor,
    "local-attention": HistoryAttentionExtractor,
    "sparse-attention": HistoryAttentionExtractor,
    "mlp": HistoryFlattenExtractor,
    "mlp-stack": HistoryFlattenExtractor,
    "patch-attention": PatchAttentionExtractor,
    "spatiotemporal-attention": SpatioTemporalAttentionExtractor,
    "cnn": NatureCNN,
    "cnn-stack": NatureCNN,
}
IMAGE_EXTRACTORS = ("patch-attention", "spatiotemporal-attention", "cnn", "cnn-stack")
NATURE_CNN_MIN = 36
"""the smallest image side NatureCNN's convolutions (8/4, 4/2, 3/1) accept"""
SINGLE_FRAME = ("patch-attention", "cnn")
"""extractors that see the current observation only (no history wrapper)"""
_SET_BY_US = {
    "self",
    "policy",
    "env",
    "seed",
    "device",
    "verbose",
    "tensorboard_log",
    "policy_kwargs",
    "_init_setup_model",
    "observation_space",
}
_POLICY_KEYS = {"net_arch", "policy_kwargs"}
SPARSE_TOP_K = 8
"""keys each query keeps with --extractor sparse-attention (override with -params top_k:N)"""


@dataclass
class RunPlan:
    """Every setting resolved from the config and the presets, checked before anything is trained."""

    config: TrainConfig
    extractor: str
    history: int
    n_timesteps: int
    n_envs: int
    algo_kwargs: dict[str, Any] = field(default_factory=dict)
    extractor_kwargs: dict[str, Any] = field(default_factory=dict)
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """the training envs' keywords: ``--env-kwargs``, plus the preset's training-only ones"""
    eval_env_kwargs: dict[str, Any] = field(default_factory=dict)
    """evaluation, attention logging and replay: ``--env-kwargs`` updated by ``--eval-env-kwargs``"""
    history_inputs: tuple[str, ...] = ()
    """what each observed step holds besides the observation: ``"action"``, ``"reward"``"""

    @property
    def observation(self) -> str:
        """How the policy sees the env: ``"history"`` (HistoryObservation), ``"stack"`` (stacked frames) or ``"frame"``.

        ppo_lstm keeps its own memory and sees one step: the bare frame, or a one-step history when
        that step also holds the previous action or reward.
        """
        if (self.config.algo == "ppo_lstm" and not self.history_inputs) or self.extractor in SINGLE_FRAME:
            return "frame"
        return "stack" if self.extractor == "cnn-stack" else "history"

    @property
    def uses_history(self) -> bool:
        return self.observation == "history"

    def wrap(self, env: gym.Env) -> gym.Env:
        """The env as the policy sees it: in a ``HistoryObservation`` where the plan has one (stacking is a VecEnv wrapper)."""
        if not self.uses_history:
            return env
        inputs = self.history_inputs
        return HistoryObservation(
            env, self.history, include_action="action" in inputs, include_reward="reward" in inputs
        )


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """``gym.make`` with this project's ids registered (also inside subprocess workers)."""
    assert envs.NAMESPACE  # importing envs registered the ids
    return gym.make(env_id, **kwargs)


def _check_env_kwargs(env_id: str, env_kwargs: dict[str, Any], flag: str = "--env-kwargs") -> gym.Env:
    creator = gym.spec(env_id).entry_point
    if isinstance(creator, str):
        creator = gym.envs.registration.load_env_creator(creator)
    params = inspect.signature(creator).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        allowed = [name for name in params if name not in ("self", "render_mode")]
        for key in env_kwargs:
            if key not in allowed:
                raise ConfigError(
                    f"env keyword {key!r} is not accepted by {env_id}: allowed are {', '.join(allowed) or 'none'}"
                )
    try:
        return make_env(env_id, **env_kwargs)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{flag} for {env_id}: {error}") from None


def _check_extractor_name(cfg: TrainConfig) -> None:
    if cfg.extractor is not None and cfg.extractor not in EXTRACTORS:
        raise ConfigError(f"--extractor {cfg.extractor!r} is invalid: allowed are {', '.join(EXTRACTORS)}")


def is_image(space: gym.Space) -> bool:
    """A channel-first image Box, as SB3's CNN policies take it (uint8 0..255, any channel count)."""
    return isinstance(space, gym.spaces.Box) and is_image_space(space, check_channels=False)


def _resolve_extractor(cfg: TrainConfig, probe: gym.Env) -> str:
    """The extractor asked for, or the default for this algorithm and kind of observation."""
    image = is_image(probe.observation_space)
    if cfg.extractor is None:
        if cfg.algo == "ppo_lstm":
            return "cnn" if image else "mlp"
        if not image:
            return "attention"
        history = cfg.history if cfg.history is not None else default_history(probe)
        return "patch-attention" if history == 1 else "spatiotemporal-attention"
    extractor = cfg.extractor
    lstm_extractor = "cnn" if image else "mlp"
    if cfg.algo == "ppo_lstm" and extractor != lstm_extractor:
        raise ConfigError(
            f"--extractor {extractor!r} does not go with ppo_lstm, which keeps its own LSTM memory: use {lstm_extractor}"
        )
    space = probe.observation_space
    if extractor in IMAGE_EXTRACTORS and not image:
        raise ConfigError(
            f"--extractor {extractor} needs image observations (channel-first uint8 Box); {cfg.env} gives {space}: use attention, local-attention, sparse-attention, mlp or mlp-stack"
        )
    if extractor in ("cnn", "cnn-stack") and min(space.shape[-2:]) < NATURE_CNN_MIN:  # type: ignore[index]
        raise ConfigError(
            f"--extractor {extractor} needs images of at least {NATURE_CNN_MIN}x{NATURE_CNN_MIN} pixels (NatureCNN's three convolutions); {cfg.env} gives {space.shape}: use patch-attention or a larger image"
        )
    if extractor not in IMAGE_EXTRACTORS and image:
        raise ConfigError(
            f"--extractor {extractor} embeds vectors; {cfg.env} gives images {space}: use patch-attention, spatiotemporal-attention, cnn or cnn-stack"
        )
    return extractor


def _resolve_history(cfg: TrainConfig, extractor: str, probe: gym.Env, preset_history: int | None) -> int:
    single = extractor == "mlp" or extractor in SINGLE_FRAME
    if cfg.history is not None:
        if single and cfg.history != 1:
            others = (
                "spatiotemporal-attention or cnn-stack"
                if extractor in SINGLE_FRAME
                else "attention, local-attention or mlp-stack"
            )
            raise ConfigError(
                f"--history {cfg.history} does not go with --extractor {extractor}, which sees the newest step only: use {others}"
            )
        return cfg.history
    return 1 if single else preset_history or default_history(probe)


def _resolve_history_inputs(
    cfg: TrainConfig, extractor: str, image: bool, preset_inputs: tuple[str, ...]
) -> tuple[str, ...]:
    """``--history-inputs``, else the preset's (only where the policy sees steps that can hold them)."""
    frames_alone = extractor in SINGLE_FRAME or extractor == "cnn-stack" or (cfg.algo == "ppo_lstm" and image)
    if cfg.history_inputs is None:
        return () if frames_alone else tuple(value for value in HISTORY_INPUTS if value in preset_inputs)
    for value in cfg.history_inputs:
        if value not in HISTORY_INPUTS:
            raise ConfigError(f"--history-inputs {value!r} is invalid: allowed are {', '.join(HISTORY_INPUTS)}")
    inputs = tuple(value for value in HISTORY_INPUTS if value in cfg.history_inputs)  # fixed order, once each
    if inputs and frames_alone:
        sees = f"ppo_lstm on images ({cfg.env})" if cfg.algo == "ppo_lstm" else f"--extractor {extractor}"
        use = "--algo ppo with " if cfg.algo == "ppo_lstm" else ""
        raise ConfigError(
            f"--history-inputs {' '.join(inputs)} does not go with {sees}, which sees image frames alone: "
            f"use {use}--extractor spatiotemporal-attention, or no --history-inputs"
        )
    return inputs


def _split_hyperparams(cfg: TrainConfig, extractor: str, preset: dict[str, Any]) -> tuple[dict, dict, dict]:
    """Sort preset and user overrides into algorithm, extractor and policy keywords."""
    algo_keys = set(inspect.signature(ALGO_CLASSES[cfg.algo].__init__).parameters) - _SET_BY_US
    extractor_keys = set(inspect.signature(EXTRACTOR_CLASSES[extractor].__init__).parameters) - _SET_BY_US
    if cfg.algo == "ppo_lstm":
        extractor_keys = set()
    buckets: tuple[dict, dict, dict] = ({}, {}, {})
    for source, values in (("preset", preset), ("user", cfg.hyperparams)):
        for key, value in values.items():
            if key in algo_keys:
                buckets[0][key] = value
            elif key in extractor_keys:
                buckets[1][key] = value
            elif key == "policy_kwargs" and not isinstance(value, dict):
                raise ConfigError(
                    f"-params policy_kwargs={value!r} is invalid: must be a dict literal, e.g. policy_kwargs:{{'net_arch':[64]}}"
                )
            elif key in _POLICY_KEYS:
                buckets[2].update(value if key == "policy_kwargs" else {key: value})
            elif source == "user":
                allowed = sorted(algo_keys | extractor_keys | _POLICY_KEYS)
                raise ConfigError(
                    f"-params key {key!r} is not accepted by {cfg.algo} with --extractor {extractor}: allowed are {', '.join(allowed)}"
                )
    return buckets


def resolve(cfg: TrainConfig) -> RunPlan:
    """Check every setting and fill in the presets; raises ConfigError with a one-line message.

    Everything that needs no env is checked first; then one env is made to check the env keywords
    and the history, and the extractor is built once on its space. No model, no vectorised envs.
    """
    if cfg.algo not in ALGOS:
        raise ConfigError(f"--algo {cfg.algo!r} is invalid: allowed are {', '.join(ALGOS)}")
    if cfg.vec_env not in VEC_ENVS:
        raise ConfigError(f"--vec-env {cfg.vec_env!r} is invalid: allowed are {', '.join(VEC_ENVS)}")
    env_id = check_env_id(cfg.env)
    _check_extractor_name(cfg)
    check_device(cfg.device)
    for flag, value in (("--n-timesteps", cfg.n_timesteps), ("--n-envs", cfg.n_envs), ("--history", cfg.history)):
        if value is not None:
            check_int_flag(flag, value)
    check_int_flag("--eval-episodes", cfg.eval_episodes)
    check_int_flag("--eval-freq", cfg.eval_freq, disabled=-1)
    check_int_flag("--save-freq", cfg.save_freq, disabled=-1)
    check_int_flag("--seed", cfg.seed, low=0)
    check_int_flag("--verbose", cfg.verbose, low=0, high=2)
    check_writable(cfg.log_folder, "-f")
    if cfg.tensorboard_log:
        check_writable(cfg.tensorboard_log, "-tb")
    probe = _check_env_kwargs(env_id, cfg.env_kwargs)
    eval_env_kwargs = {**cfg.env_kwargs, **cfg.eval_env_kwargs}
    if cfg.eval_env_kwargs:
        eval_probe = _check_env_kwargs(env_id, eval_env_kwargs, "--eval-env-kwargs")
        if eval_probe.observation_space != probe.observation_space or eval_probe.action_space != probe.action_space:
            raise ConfigError(
                f"--eval-env-kwargs {cfg.eval_env_kwargs} is invalid: the evaluation env's spaces "
                f"({eval_probe.observation_space}, {eval_probe.action_space}) differ from the training env's "
                f"({probe.observation_space}, {probe.action_space})"
            )
        eval_probe.close()
    preset = preset_for(cfg.algo, cfg.env, probe)
    env_kwargs = dict(cfg.env_kwargs)
    if preset.train_env is not None and not cfg.eval_env_kwargs:
        extra = preset.train_env(probe)
        if not set(extra) & set(cfg.env_kwargs):  # the user's own keywords switch the preset's off
            env_kwargs.update(extra)
            probe.close()
            probe = _check_env_kwargs(env_id, env_kwargs)
    try:
        extractor = _resolve_extractor(cfg, probe)
        algo_kwargs, extractor_kwargs, policy_kwargs = _split_hyperparams(
            cfg, extractor, preset.for_extractor(extractor)
        )
        check_algo_values(ALGO_CLASSES[cfg.algo], algo_kwargs)
        plan = RunPlan(
            config=cfg,
            extractor=extractor,
            history=_resolve_history(cfg, extractor, probe, preset.history),
            n_timesteps=cfg.n_timesteps if cfg.n_timesteps is not None else preset.n_timesteps,
            n_envs=cfg.n_envs if cfg.n_envs is not None else preset.n_envs,
            algo_kwargs=algo_kwargs,
            extractor_kwargs=extractor_kwargs,
            policy_kwargs=policy_kwargs,
            env_kwargs=env_kwargs,
            eval_env_kwargs=eval_env_kwargs,
            history_inputs=_resolve_history_inputs(
                cfg,
                extractor,
                is_image(probe.observation_space),
                preset.history_inputs(probe) if preset.history_inputs is not None else (),
            ),
        )
        if extractor == "local-attention":
            plan.extractor_kwargs = {"attention": "local", "window": local_window(plan), **plan.extractor_kwargs}
        if extractor == "sparse-attention":
            plan.extractor_kwargs = {"top_k": min(SPARSE_TOP_K, plan.history), **plan.extractor_kwargs}
        if extractor in ("patch-attention", "spatiotemporal-attention"):
            plan.extractor_kwargs = {"patch_size": default_patch_size(probe), **plan.extractor_kwargs}
        if cfg.algo != "ppo_lstm":
            try:
                EXTRACTOR_CLASSES[extractor](_policy_space(plan, probe), **plan.extractor_kwargs)
            except (ValueError, TypeError, AssertionError) as error:
                raise ConfigError(f"--extractor {extractor} on {cfg.env}: {first_line(error)}") from None
        elif plan.uses_history:
            _policy_space(plan, probe)  # the previous action or reward must fit a history step
    finally:
        probe.close()
    return plan


def _policy_space(plan: RunPlan, probe: gym.Env) -> gym.Space:
    """The observation space the policy will see: the env's, a history of it, or stacked frames."""
    space = probe.observation_space
    if plan.observation == "history":
        try:
            return plan.wrap(probe).observation_space
        except ValueError as error:
            raise ConfigError(f"--env {plan.config.env} cannot be given a history: {error}") from None
    if plan.observation == "stack":
        assert isinstance(space, gym.spaces.Box)
        return gym.spaces.Box(
            np.repeat(space.low, plan.history, axis=0), np.repeat(space.high, plan.history, axis=0), dtype=space.dtype
        )
    return space


def local_window(plan: RunPlan) -> int:
    """Default window: just wide enough for the stacked local blocks to reach the oldest step."""
    default_layers = inspect.signature(HistoryAttentionExtractor).parameters["n_layers"].default
    n_layers = int(plan.extractor_kwargs.get("n_layers", default_layers))
    n_tokens = plan.history + (plan.extractor_kwargs.get("readout") == "summary")
    return min(n_tokens, -(-(n_tokens - 1) // n_layers) + 1)


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
    return VecFrameStack(venv, plan.history, channels_order="first") if plan.observation == "stack" else venv


def build_model(plan: RunPlan, venv: VecEnv) -> BaseAlgorithm:
    """The SB3 algorithm with its policy and extractor; SB3's ``ortho_init`` is set explicitly."""
    cfg = plan.config
    policy_kwargs = dict(plan.policy_kwargs)
    image = is_image(venv.observation_space)
    if cfg.algo != "ppo_lstm":
        policy = "MultiInputPolicy" if plan.uses_history else ("CnnPolicy" if image else "MlpPolicy")
        policy_kwargs["features_extractor_class"] = EXTRACTOR_CLASSES[plan.extractor]
        policy_kwargs["features_extractor_kwargs"] = plan.extractor_kwargs
        if cfg.algo in ("ppo", "a2c"):
            # Orthogonal re-init suits the MLP and CNN baselines, not the transformer's own init.
            policy_kwargs.setdefault("ortho_init", not plan.extractor.endswith("attention"))
    elif image:
        policy = "CnnLstmPolicy"
    else:
        policy = "MlpLstmPolicy" if isinstance(venv.observation_space, gym.spaces.Box) else "MultiInputLstmPolicy"
    algo = ALGO_CLASSES[cfg.algo]
    try:
        model = algo(
            policy,
            venv,
            seed=cfg.seed,
            device=cfg.device,
            verbose=cfg.verbose,
            policy_kwargs=policy_kwargs,
            **plan.algo_kwargs,
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
