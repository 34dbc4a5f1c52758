"""From a ``TrainConfig`` to a checked ``RunPlan``: presets filled in, every setting resolved, nothing built."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

import envs
from agents import schedules
from agents.checks import (
    check_algo_values,
    check_device,
    check_env_id,
    check_int_flag,
    check_writable,
    first_line,
    integral,
)
from agents.config import HISTORY_INPUTS, VEC_ENVS, ConfigError, TrainConfig
from agents.presets import default_history, env_family, episode_cap, preset_for
from agents.registry import ALGOS, EXTRACTORS, AlgoEntry, ExtractorEntry, default_extractor, is_image, listed, names
from rlattn import ChannelFirst, FlatObservation, HistoryObservation
from rlattn.validation import check_int
from rlattn.wrappers import channel_last_image

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
RUN_KEYS = {"normalize_reward"}
"""keys of the run itself, not of the algorithm: ``normalize_reward`` (True/False) scales the training
rewards by a running estimate of the discounted return's spread (SB3's ``VecNormalize``, observations untouched)"""


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
    normalize_reward: bool = False
    """training rewards divided by a running estimate of the discounted return's standard deviation
    (``VecNormalize(norm_obs=False)``); evaluation sees the env's own rewards"""

    @property
    def gamma(self) -> float:
        """The algorithm's discount: the one the reward normalization's return estimate uses."""
        if "gamma" in self.algo_kwargs:
            return float(self.algo_kwargs["gamma"])
        default = inspect.signature(self.algo_entry.cls).parameters.get("gamma")
        return float(default.default) if default is not None else 0.99

    @property
    def algo_entry(self) -> AlgoEntry:
        return ALGOS[self.config.algo]

    @property
    def extractor_entry(self) -> ExtractorEntry:
        return EXTRACTORS[self.extractor]

    @property
    def observation(self) -> str:
        """How the policy sees the env: ``"history"`` (HistoryObservation), ``"stack"`` (stacked frames) or ``"frame"``.

        A recurrent algorithm keeps its own memory and sees one step: the bare frame, or a one-step
        history when that step also holds the previous action or reward.
        """
        view, memory = self.extractor_entry.view, self.algo_entry.memory
        if view == "frame" or memory == "episodic" or (memory == "recurrent" and not self.history_inputs):
            return "frame"
        return "stack" if view == "stack" else "history"

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
    """``gym.make`` with this project's ids registered (also inside subprocess workers).

    A Dict or Tuple observation (MiniGrid's, POPGym's) becomes one float vector (:class:`~rlattn.FlatObservation`),
    the same for every algorithm and extractor, so baselines and attention see the same inputs; a
    channel-last image becomes channel-first (:class:`~rlattn.ChannelFirst`), as every image extractor reads it.
    """
    assert envs.NAMESPACE  # importing envs registered the ids
    env = gym.make(env_id, **kwargs)
    if isinstance(env.observation_space, (gym.spaces.Dict, gym.spaces.Tuple)):
        return FlatObservation(env)
    if channel_last_image(env.observation_space):
        return ChannelFirst(env)
    return env


MAKE_KEYWORDS = ("max_episode_steps",)
"""keywords that ``gym.make`` takes itself, whatever the env's constructor: a TimeLimit of N steps"""


def _check_env_kwargs(env_id: str, env_kwargs: dict[str, Any], flag: str = "--env-kwargs") -> gym.Env:
    entry_point = gym.spec(env_id).entry_point
    try:  # a registered id whose module needs an extra (MuJoCo, Box2D, JAX) or names a missing class
        creator = gym.envs.registration.load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point
    except Exception as error:
        raise ConfigError(
            f"--env {env_id}: its entry point {entry_point!r} cannot be loaded: "
            f"{type(error).__name__}: {first_line(error)}"
        ) from None
    params = inspect.signature(creator).parameters  # type: ignore[arg-type]
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        allowed = [name for name in params if name not in ("self", "render_mode")] + list(MAKE_KEYWORDS)
        for key in env_kwargs:
            if key not in allowed:
                raise ConfigError(
                    f"{flag}: env keyword {key!r} is not accepted by {env_id}: allowed are {', '.join(allowed) or 'none'}"
                )
    try:
        return make_env(env_id, **env_kwargs)
    except Exception as error:  # an env's own constructor may raise anything (KeyError for an unknown map, ...)
        where = f"{flag} for {env_id}" if env_kwargs else f"making {env_id}"
        kind = "" if isinstance(error, (ValueError, TypeError)) else f"{type(error).__name__}: "
        raise ConfigError(f"{where}: {kind}{first_line(error)}") from None


def _resolve_extractor(cfg: TrainConfig, probe: gym.Env, preferred: str | None = None) -> str:
    """The extractor asked for, else the preset's (``preferred``), else the default for this algorithm
    and kind of observation."""
    image = is_image(probe.observation_space)
    algo = ALGOS[cfg.algo]
    if cfg.extractor is None and preferred is not None:
        return preferred
    if cfg.extractor is None:
        history = cfg.history if cfg.history is not None else default_history(probe, algo.memory)
        return default_extractor(algo, image, history)
    name = cfg.extractor
    kind = "image" if image else "vector"
    if algo.own_extractors and name not in algo.own_extractors[kind]:
        raise ConfigError(
            f"--extractor {name!r} does not go with {cfg.algo} on {kind}s, which keeps its own memory: "
            f"use {listed(list(algo.own_extractors[kind]))}"
        )
    entry, space = EXTRACTORS[name], probe.observation_space
    if entry.inputs == "image" and not image:
        if isinstance(probe, FlatObservation):  # a Dict or Tuple, flattened: say what the user's env gives
            raise ConfigError(
                f"--extractor {name} needs image observations (channel-first uint8 Box); {cfg.env} gives a "
                f"{type(probe.env.observation_space).__name__}, flattened into one vector a step (images inside too): "
                f"use {listed(names(EXTRACTORS, inputs='vector'))}, or keep the image key alone "
                "(gymnasium.wrappers.FilterObservation, then an env of its own)"
            )
        raise ConfigError(
            f"--extractor {name} needs image observations (channel-first uint8 Box); {cfg.env} gives {space}: use {listed(names(EXTRACTORS, inputs='vector'))}"
        )
    if entry.inputs == "vector" and image:
        raise ConfigError(
            f"--extractor {name} embeds vectors; {cfg.env} gives images {space}: use {listed(names(EXTRACTORS, inputs='image'))}"
        )
    side = entry.min_image_side
    if image and min(space.shape[-2:]) < side:  # type: ignore[index]
        smaller = [e.name for e in EXTRACTORS.values() if e.inputs == "image" and e.min_image_side < side]
        raise ConfigError(
            f"--extractor {name} needs images of at least {side}x{side} pixels; {cfg.env} gives {space.shape}: use {listed(smaller)} or a larger image"
        )
    return name


def _resolve_history(cfg: TrainConfig, entry: ExtractorEntry, probe: gym.Env, preset_history: int | None) -> int:
    """K: the steps a decision can see (an episodic algorithm's memory window W)."""
    single = entry.view in ("newest", "frame") and ALGOS[cfg.algo].memory != "episodic"
    if cfg.history is not None:
        if single and cfg.history != 1 and ALGOS[cfg.algo].memory == "recurrent":
            raise ConfigError(
                f"--history {cfg.history} does not go with --algo {cfg.algo}, whose recurrent state keeps the memory "
                "and which sees the newest step only: leave --history out (a history in the observation is --algo ppo "
                "with --extractor attention or mlp-stack)"
            )
        if single and cfg.history != 1:
            others = listed(
                names(EXTRACTORS, inputs=entry.inputs, view="history")
                + names(EXTRACTORS, inputs=entry.inputs, view="stack")
            )
            raise ConfigError(
                f"--history {cfg.history} does not go with --extractor {entry.name}, which sees the newest step only: use {others}"
            )
        return cfg.history
    return 1 if single else preset_history or default_history(probe, ALGOS[cfg.algo].memory)


def _resolve_history_inputs(
    cfg: TrainConfig, entry: ExtractorEntry, image: bool, preset_inputs: tuple[str, ...]
) -> tuple[str, ...]:
    """``--history-inputs``, else the preset's (only where the policy sees steps that can hold them)."""
    memory = ALGOS[cfg.algo].memory
    recurrent = memory == "recurrent"
    frames_alone = memory != "episodic" and (
        (entry.inputs == "image" and entry.view != "history") or (recurrent and image)
    )
    if cfg.history_inputs is None:
        return () if frames_alone else tuple(value for value in HISTORY_INPUTS if value in preset_inputs)
    for value in cfg.history_inputs:
        if value not in HISTORY_INPUTS:
            raise ConfigError(f"--history-inputs {value!r} is invalid: allowed are {', '.join(HISTORY_INPUTS)}")
    inputs = tuple(value for value in HISTORY_INPUTS if value in cfg.history_inputs)  # fixed order, once each
    unsupported = [value for value in inputs if value not in ALGOS[cfg.algo].history_inputs]
    if unsupported:
        raise ConfigError(
            f"--history-inputs {' '.join(unsupported)} does not go with {cfg.algo}: allowed are {', '.join(ALGOS[cfg.algo].history_inputs)}"
        )
    if inputs and frames_alone:
        sees = f"{cfg.algo} on images ({cfg.env})" if recurrent else f"--extractor {entry.name}"
        use = f"--algo {names(ALGOS, memory='observation')[0]} with " if recurrent else ""
        history_images = listed(names(EXTRACTORS, inputs="image", view="history"))
        raise ConfigError(
            f"--history-inputs {' '.join(inputs)} does not go with {sees}, which sees image frames alone: "
            f"use {use}--extractor {history_images}, or no --history-inputs"
        )
    return inputs


def _split_hyperparams(cfg: TrainConfig, extractor: str, preset: dict[str, Any]) -> tuple[dict, dict, dict, dict]:
    """Sort preset and user overrides into algorithm, extractor, policy and run (:data:`RUN_KEYS`) keywords."""
    algo = ALGOS[cfg.algo]
    algo_keys = algo.keywords() - _SET_BY_US - {*algo.memory_keys, "memory_kwargs"}
    if algo.plan_kwargs is not None:  # set from the plan (--history, --history-inputs), not -params
        algo_keys -= {"memory", "include_action", "include_reward"}
    extractor_keys = set(inspect.signature(EXTRACTORS[extractor].cls).parameters) - _SET_BY_US
    if algo.own_extractors:
        extractor_keys = set(algo.memory_keys) | algo.frame_keys(extractor)
    buckets: tuple[dict, dict, dict, dict] = ({}, {}, {}, {})
    for source, values in (("preset", preset), ("user", cfg.hyperparams)):
        for key, value in values.items():
            if key in RUN_KEYS:
                if not isinstance(value, bool):
                    raise ConfigError(f"-params {key}:{value!r} is invalid: must be True or False")
                buckets[3][key] = value
            elif key in algo_keys:
                buckets[0][key] = integral(key, value)
            elif key in extractor_keys:
                buckets[1][key] = value
            elif key == "policy_kwargs" and not isinstance(value, dict):
                raise ConfigError(
                    f"-params policy_kwargs={value!r} is invalid: must be a dict literal, e.g. policy_kwargs:{{'net_arch':[64]}}"
                )
            elif key in _POLICY_KEYS:
                buckets[2].update(_policy_values(cfg, extractor, key, value, extractor_keys, buckets[1]))
            elif source == "user":
                allowed = sorted(algo_keys | extractor_keys | _POLICY_KEYS | RUN_KEYS)
                raise ConfigError(
                    f"-params key {key!r} is not accepted by {cfg.algo} with --extractor {extractor}: allowed are {', '.join(allowed)}"
                )
    return buckets


def _policy_values(
    cfg: TrainConfig, extractor: str, key: str, value: Any, extractor_keys: set[str], into: dict[str, Any]
) -> dict[str, Any]:
    """A ``policy_kwargs`` dict (or ``net_arch``) for the policy bucket. Where build.py sets the extractor
    (algorithms without their own), its ``features_extractor_kwargs`` go to the extractor's keywords
    (checked like ``-params`` keys), which build.py would otherwise overwrite; an algorithm with its own
    extractors keeps them in ``policy_kwargs``, and build.py lays them over its frame encoder's."""
    if key != "policy_kwargs":
        return {key: value}
    values = dict(value)
    if "features_extractor_class" in values:
        raise ConfigError(
            f"-params policy_kwargs features_extractor_class={values['features_extractor_class']!r} is invalid: "
            f"--extractor chooses it (allowed are {', '.join(EXTRACTORS)})"
        )
    inner = values.get("features_extractor_kwargs", {})
    if not isinstance(inner, dict):
        raise ConfigError(
            f"-params policy_kwargs features_extractor_kwargs={inner!r} is invalid: must be a dict literal"
        )
    if ALGOS[cfg.algo].own_extractors:
        return values
    values.pop("features_extractor_kwargs", None)
    for name, item in inner.items():
        if name not in extractor_keys:
            raise ConfigError(
                f"-params policy_kwargs features_extractor_kwargs key {name!r} is not accepted by {cfg.algo} with "
                f"--extractor {extractor}: allowed are {', '.join(sorted(extractor_keys))}"
            )
        into[name] = item
    return values


def _check_flags(cfg: TrainConfig) -> str:
    """Everything that needs no env; returns the env id without its ``module:`` prefix."""
    if cfg.algo not in ALGOS:
        raise ConfigError(f"--algo {cfg.algo!r} is invalid: allowed are {', '.join(ALGOS)}")
    if cfg.vec_env not in VEC_ENVS:
        raise ConfigError(f"--vec-env {cfg.vec_env!r} is invalid: allowed are {', '.join(VEC_ENVS)}")
    env_id = check_env_id(cfg.env)
    if cfg.extractor is not None and cfg.extractor not in EXTRACTORS:
        raise ConfigError(f"--extractor {cfg.extractor!r} is invalid: allowed are {', '.join(EXTRACTORS)}")
    check_device(cfg.device)
    for flag, value in (("--n-timesteps", cfg.n_timesteps), ("--n-envs", cfg.n_envs), ("--history", cfg.history)):
        if value is not None:
            check_int_flag(flag, value)
    check_int_flag("--eval-episodes", cfg.eval_episodes)
    check_int_flag("--eval-freq", cfg.eval_freq, disabled=-1)
    check_int_flag("--save-freq", cfg.save_freq, disabled=-1)
    check_int_flag("--seed", cfg.seed, low=0, high=SEED_MAX)
    check_int_flag("--verbose", cfg.verbose, low=0, high=2)
    check_writable(str(Path(cfg.log_folder) / cfg.algo), "-f")  # where the run folder goes: LOG/ALGO
    if cfg.tensorboard_log:
        check_writable(str(Path(cfg.tensorboard_log) / cfg.algo), "-tb")
    return env_id


def _check_eval_env(env_id: str, cfg: TrainConfig, probe: gym.Env, eval_env_kwargs: dict[str, Any]) -> None:
    eval_probe = _check_env_kwargs(env_id, eval_env_kwargs, "--eval-env-kwargs")
    if eval_probe.observation_space != probe.observation_space or eval_probe.action_space != probe.action_space:
        raise ConfigError(
            f"--eval-env-kwargs {cfg.eval_env_kwargs} is invalid: the evaluation env's spaces "
            f"({eval_probe.observation_space}, {eval_probe.action_space}) differ from the training env's "
            f"({probe.observation_space}, {probe.action_space})"
        )
    eval_probe.close()


SEED_MAX = 2**32 - 1 - 20_000
"""the largest --seed: env, evaluation (+10,000) and attention-view seeds all stay below NumPy's 2**32"""


def resolve(cfg: TrainConfig) -> RunPlan:
    """Check every setting and fill in the presets; raises ConfigError with a one-line message.

    Everything that needs no env is checked first; then one env is made to check the env keywords
    and the history, and the extractor is built once on its space. No model, no vectorised envs.
    """
    env_id = _check_flags(cfg)
    probe = _check_env_kwargs(env_id, cfg.env_kwargs)
    eval_env_kwargs = {**cfg.env_kwargs, **cfg.eval_env_kwargs}
    if cfg.eval_env_kwargs:
        _check_eval_env(env_id, cfg, probe, eval_env_kwargs)
    preset = preset_for(cfg.algo, cfg.env, probe)
    env_kwargs = dict(cfg.env_kwargs)
    if preset.train_env is not None and not cfg.eval_env_kwargs:
        extra = preset.train_env(probe)
        if not set(extra) & set(cfg.env_kwargs):  # the user's own keywords switch the preset's off
            env_kwargs.update(extra)
            probe.close()
            probe = _check_env_kwargs(env_id, env_kwargs)
    try:
        extractor = _resolve_extractor(cfg, probe, preset.extractor)
        entry = EXTRACTORS[extractor]
        algo_kwargs, extractor_kwargs, policy_kwargs, run_kwargs = _split_hyperparams(
            cfg, extractor, preset.for_extractor(extractor)
        )
        check_algo_values(ALGOS[cfg.algo].cls, schedules.starts(algo_kwargs))
        preset_inputs = preset.history_inputs(probe) if preset.history_inputs is not None else ()
        plan = RunPlan(
            config=cfg,
            extractor=extractor,
            history=_resolve_history(cfg, entry, probe, preset.history),
            n_timesteps=cfg.n_timesteps if cfg.n_timesteps is not None else preset.n_timesteps,
            n_envs=cfg.n_envs if cfg.n_envs is not None else preset.n_envs,
            algo_kwargs=algo_kwargs,
            extractor_kwargs=extractor_kwargs,
            policy_kwargs=policy_kwargs,
            env_kwargs=env_kwargs,
            eval_env_kwargs=eval_env_kwargs,
            history_inputs=_resolve_history_inputs(cfg, entry, is_image(probe.observation_space), preset_inputs),
            normalize_reward=run_kwargs.get("normalize_reward", False),
        )
        _check_extractor(plan, probe)
    finally:
        probe.close()
    return plan


def _check_extractor(plan: RunPlan, probe: gym.Env) -> None:
    """Fill in the extractor's defaults and build it once on the policy's space."""
    entry, algo = plan.extractor_entry, plan.algo_entry
    if algo.own_extractors:
        if plan.uses_history:
            policy_space(plan, probe)  # the previous action or reward must fit a history step
        if algo.memory_class is not None:  # its memory's keys, checked by building it once (small)
            memory = {k: v for k, v in plan.extractor_kwargs.items() if k in algo.memory_keys}
            try:
                algo.memory_class(input_dim=1, window=plan.history, **memory)
            except (ValueError, TypeError) as error:
                raise ConfigError(
                    f"--algo {plan.config.algo} memory on {plan.config.env}: {first_line(error)}"
                ) from None
        if plan.extractor in algo.frame_encoders:  # its own per-frame encoder: the same defaults, built once
            defaults = entry.defaults(plan, probe) if entry.defaults is not None else {}
            plan.extractor_kwargs = {**algo.frame_kwargs(plan.extractor, defaults), **plan.extractor_kwargs}
            try:
                encoder = algo.frame_encoders[plan.extractor][1]
                encoder(policy_space(plan, probe), **algo.frame_kwargs(plan.extractor, plan.extractor_kwargs))
            except (ValueError, TypeError, AssertionError) as error:
                raise ConfigError(f"--extractor {plan.extractor} on {plan.config.env}: {first_line(error)}") from None
        return
    if entry.defaults is not None:
        plan.extractor_kwargs = {**entry.defaults(plan, probe), **plan.extractor_kwargs}
    try:
        if "features_dim" in plan.extractor_kwargs:  # SB3's own extractors (NatureCNN) only assert it, bare
            check_int("features_dim", plan.extractor_kwargs["features_dim"])
        entry.cls(policy_space(plan, probe), **plan.extractor_kwargs)
    except (ValueError, TypeError, AssertionError) as error:
        raise ConfigError(f"--extractor {plan.extractor} on {plan.config.env}: {first_line(error)}") from None


def available_memory() -> int | None:
    """Bytes of memory the machine has available now (Linux ``MemAvailable``), None where unknown."""
    return _meminfo().get("MemAvailable")


def _meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in bytes (empty where there is none)."""
    values: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                name, _, rest = line.partition(":")
                if rest.split():
                    values[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        return {}
    return values


def reservable_memory() -> tuple[str, int] | None:
    """What numpy's zeroed arrays may reserve here (Linux's overcommit policy, ``/proc/sys/vm/overcommit_memory``):
    ``("each", RAM + swap)`` under the heuristic (the default, which refuses one allocation larger than that),
    ``("all", CommitLimit - Committed_AS)`` under strict accounting (every allocation counts); None where nothing
    is refused (always overcommit) or the policy is unknown (not Linux)."""
    try:
        with open("/proc/sys/vm/overcommit_memory") as file:
            mode = int(file.read().strip())
    except (OSError, ValueError):
        return None
    info = _meminfo()
    if mode == 0 and "MemTotal" in info:
        return "each", info["MemTotal"] + info.get("SwapTotal", 0)
    if mode == 2 and "CommitLimit" in info and "Committed_AS" in info:
        return "all", max(info["CommitLimit"] - info["Committed_AS"], 0)
    return None


def plan_digest(plan: RunPlan) -> str:
    """A short hash of what a run resolves to (every preset and default filled in; not its seed, log
    folder or other run-level flags): the same flags under another preset give another digest."""
    fields = {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan) if f.name != "config"}
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def preflight(plan: RunPlan) -> None:
    """What a training run checks on this machine before it starts (not part of ``resolve``: a sweep's
    case or a replay does not depend on it): a replay buffer or rollout that fits in memory, and a warning for
    an env outside this package's families whose episodes have no cap."""
    probe = make_env(plan.config.env, **plan.env_kwargs)
    try:
        if episode_cap(probe) is None and env_family(plan.config.env) == "*":
            warnings.warn(
                f"{plan.config.env} has no episode cap (no TimeLimit, no max_steps): an evaluation waits for its "
                "episodes to end on their own; --env-kwargs max_episode_steps:N gives them one",
                UserWarning,
                stacklevel=3,
            )
        _warn_preset_env_off(plan)
        _warn_short_budget(plan)
        _check_replay_memory(plan, probe)
        _check_rollout_memory(plan, probe)
    finally:
        probe.close()


def _algo_value(plan: RunPlan, key: str) -> Any:
    """An algorithm keyword as the run uses it: the plan's, else the algorithm's default."""
    cls = plan.algo_entry.cls
    return plan.algo_kwargs.get(key, inspect.signature(cls.__init__).parameters[key].default)


def _warn_short_budget(plan: RunPlan) -> None:
    """An on-policy run collects whole rollouts: ``-n`` below one (n_steps x n_envs) trains that many anyway."""
    cls = plan.algo_entry.cls
    if not issubclass(cls, OnPolicyAlgorithm):
        return
    n_steps = int(_algo_value(plan, "n_steps"))
    rollout = n_steps * plan.n_envs
    if plan.n_timesteps < rollout:
        warnings.warn(
            f"-n {plan.n_timesteps} is less than one rollout (n_steps {n_steps} x {plan.n_envs} envs = {rollout}): "
            f"the run trains {rollout} env steps",
            UserWarning,
            stacklevel=3,
        )


def _warn_preset_env_off(plan: RunPlan) -> None:
    """The preset's training-env keywords (a T-Maze's mixed corridors, say) step aside for the user's own
    env keywords: a warning names them, since learning may depend on them."""
    cfg = plan.config
    given = make_env(cfg.env, **cfg.env_kwargs)  # the env resolve chose the preset from: the user's keywords
    try:
        preset = preset_for(cfg.algo, cfg.env, given)
        extra = preset.train_env(given) if preset.train_env is not None else {}
    finally:
        given.close()
    if not extra or all(plan.env_kwargs.get(k) == v for k, v in extra.items()):
        return
    why = (
        "--eval-env-kwargs is given"
        if cfg.eval_env_kwargs
        else "--env-kwargs sets " + ", ".join(sorted(set(extra) & set(cfg.env_kwargs)))
    )
    keywords = " ".join(f"{k}:{v!r}" for k, v in extra.items())
    warnings.warn(
        f"the preset's training-env keywords are off ({why}): {keywords}; add them to --env-kwargs to train with them",
        UserWarning,
        stacklevel=3,
    )


def _check_replay_memory(plan: RunPlan, probe: gym.Env) -> None:
    """An off-policy algorithm's replay buffer must fit in memory: each stored transition holds its
    observation and the next (histories included). SB3 reserves the whole ``buffer_size`` up front (an
    array for the observations and one for the next, one each per key of a Dict), which Linux refuses
    beyond what it lets be reserved (:func:`reservable_memory`); within that, the OS provides the zeroed
    pages as they fill, so what must fit in the memory available is the transitions the run stores (its
    buffer, or its steps if fewer)."""
    cls = plan.algo_entry.cls
    if not issubclass(cls, OffPolicyAlgorithm):
        return
    buffer = int(_algo_value(plan, "buffer_size"))
    space = policy_space(plan, probe)
    one = _step_bytes(space)
    copies = 1 if plan.algo_kwargs.get("optimize_memory_usage", False) else 2
    rows = max(buffer // plan.n_envs, 1) * plan.n_envs  # SB3's (buffer_size // n_envs, n_envs, ...) arrays
    size = min(buffer, plan.n_timesteps)
    needed, available = size * one * copies, available_memory()
    if available is not None and needed > available:
        raise ConfigError(
            f"--algo {plan.config.algo} on {plan.config.env}: its replay buffer of {size:,} transitions, {copies} observations of "
            f"{one:,} bytes each (history {plan.history}), needs {needed / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB "
            "available: lower -params buffer_size:N or --history K"
        )
    limit = reservable_memory()
    if limit is not None:
        kind, reservable = limit
        leaves = space.spaces.values() if isinstance(space, gym.spaces.Dict) else [space]
        reserved = rows * (max(_step_bytes(leaf) for leaf in leaves) if kind == "each" else one * copies)
        if reserved > reservable:
            what = (
                f"an array of {reserved / 2**30:.1f} GiB" if kind == "each" else f"{reserved / 2**30:.1f} GiB of arrays"
            )
            allowed = "RAM + swap" if kind == "each" else "its commit limit left"
            raise ConfigError(
                f"--algo {plan.config.algo} on {plan.config.env}: SB3 reserves the whole replay buffer up front "
                f"(buffer_size {buffer:,} transitions, observations of {one:,} bytes, history {plan.history}): "
                f"{what}, more than this machine lets be reserved ({reservable / 2**30:.1f} GiB, {allowed}): "
                "lower -params buffer_size:N or --history K"
            )


def _step_bytes(space: gym.Space) -> int:
    """Bytes of one observation of ``space`` as SB3's buffers keep it (each leaf in its own dtype)."""
    leaves = space.spaces.values() if isinstance(space, gym.spaces.Dict) else [space]
    return sum(int(np.prod(leaf.shape or (1,))) * np.dtype(leaf.dtype).itemsize for leaf in leaves)  # type: ignore[arg-type]


def _check_rollout_memory(plan: RunPlan, probe: gym.Env) -> None:
    """An on-policy rollout must fit in memory: SB3 keeps n_steps x n_envs observations in their space's
    dtype (a history's K steps in each), filled in full every rollout, and copies them once more when the
    update flattens them (``swap_and_flatten``)."""
    cls = plan.algo_entry.cls
    if not issubclass(cls, OnPolicyAlgorithm):
        return
    n_steps = int(_algo_value(plan, "n_steps"))
    one = _step_bytes(policy_space(plan, probe))
    needed, available = 2 * n_steps * plan.n_envs * one, available_memory()
    if available is not None and needed > available:
        raise ConfigError(
            f"--algo {plan.config.algo} on {plan.config.env}: its rollout of {n_steps:,} steps x {plan.n_envs} envs, "
            f"observations of {one:,} bytes each (history {plan.history}), kept and copied once in the update, needs "
            f"{needed / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB available: lower -params n_steps:N, "
            "--n-envs or --history K"
        )


def policy_space(plan: RunPlan, probe: gym.Env) -> gym.Space:
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
