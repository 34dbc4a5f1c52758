"""What ``train.py --optimize`` searches: Optuna distributions per algorithm and extractor keyword, and
``--search-space`` restricting or overriding them (an allow-list: only keys the run accepts)."""

from __future__ import annotations

import ast
import inspect
import itertools
import math
from dataclasses import replace
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from agents.checks import check_algo_values
from agents.config import ConfigError
from agents.plan import RunPlan, resolve
from agents.schedules import linear_start

SPACE: dict[str, BaseDistribution] = {
    "learning_rate": FloatDistribution(1e-5, 1e-3, log=True),
    "n_steps": CategoricalDistribution([32, 64, 128, 256, 512, 1024, 2048]),
    "batch_size": CategoricalDistribution([32, 64, 128, 256]),
    "ent_coef": FloatDistribution(1e-4, 0.1, log=True),
    "gamma": FloatDistribution(0.9, 0.9999),
    "gae_lambda": FloatDistribution(0.8, 1.0),
    "n_epochs": IntDistribution(3, 20),
    "clip_range": FloatDistribution(0.1, 0.4),
    "exploration_fraction": FloatDistribution(0.05, 0.5),
    "target_update_interval": CategoricalDistribution([1_000, 5_000, 10_000]),
    "embed_dim": CategoricalDistribution([32, 64, 128]),
    "n_layers": IntDistribution(1, 3),
    "n_heads": CategoricalDistribution([1, 2, 4]),
}
"""every searchable keyword and its default range; a run searches those its algorithm or extractor accepts"""
EXTRACTOR_KEYS = ("embed_dim", "n_layers", "n_heads")
"""searched for attention extractors only (those that take ``n_heads``)"""
USAGE = "expected KEY (its default range), KEY:LOW:HIGH (numbers, LOW < HIGH) or KEY:[V1,V2,...] (choices)"


def default_space(plan: RunPlan) -> dict[str, BaseDistribution]:
    """The keys of :data:`SPACE` this run's algorithm (or attention extractor, or episodic memory) takes, with
    their default ranges. An algorithm's keys are those of its class and of the classes it hands ``**kwargs``
    to (AttentionPPO's learning rate is PPO's); ``n_steps`` is a rollout's length for on-policy algorithms only
    (DQN's ``n_steps`` is its n-step return)."""
    algo_keys = plan.algo_entry.keywords()
    if not issubclass(plan.algo_entry.cls, OnPolicyAlgorithm):
        algo_keys.discard("n_steps")
    if plan.algo_entry.own_extractors:
        extractor_keys = set(plan.algo_entry.memory_keys)  # AttentionPPO's memory; none for RecurrentPPO
    else:
        extractor_keys = set(inspect.signature(plan.extractor_entry.cls).parameters)
    attention = "n_heads" in extractor_keys
    space = {
        key: dist
        for key, dist in SPACE.items()
        if (key in EXTRACTOR_KEYS and attention and key in extractor_keys)
        or (key not in EXTRACTOR_KEYS and key in algo_keys)
    }
    if "n_steps" in space:
        space["n_steps"] = _rollouts_within(plan, space["n_steps"])
    return space


def _rollouts_within(plan: RunPlan, dist: BaseDistribution) -> BaseDistribution:
    """The rollout lengths whose rollout (n_steps on each env) fits the budget: a trial stops at its budget,
    so a longer one would never be trained on. The shortest stays when none fits."""
    choices = dist.choices  # type: ignore[attr-defined]
    fits = [n for n in choices if n * plan.n_envs <= plan.n_timesteps] or [min(choices)]
    return CategoricalDistribution(fits)


def search_space(plan: RunPlan, items: list[str]) -> dict[str, BaseDistribution]:
    """The run's default space, or only the ``--search-space`` keys, each with its default or given range;
    every ``embed_dim`` and ``n_heads`` in it checked to go together before any trial."""
    space = _given_space(plan, items)
    _check_shapes(plan, space)
    return space


def _given_space(plan: RunPlan, items: list[str]) -> dict[str, BaseDistribution]:
    allowed = default_space(plan)
    if not items:
        return allowed
    space = {}
    for item in items:
        key, _, rest = item.partition(":")
        if key not in allowed:
            where = f"{plan.config.algo} with --extractor {plan.extractor}"
            raise ConfigError(
                f"--search-space key {key!r} is not searchable for {where}: allowed are {', '.join(allowed)}"
            )
        space[key] = _override(item, rest, allowed[key]) if rest else allowed[key]
        if key not in EXTRACTOR_KEYS:
            _check_bounds(item, plan, key, space[key])
    return space


def _literal(item: str, text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigError(f"--search-space {item!r} is invalid: {text!r} is not a Python literal; {USAGE}") from None


def _override(item: str, rest: str, default: BaseDistribution) -> BaseDistribution:
    """``[v1, v2]`` -> choices; ``low:high`` -> a range, integer and log-scaled like the default where it can be."""
    if rest.startswith("["):
        values = _literal(item, rest)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"--search-space {item!r} is invalid: {USAGE}")
        return CategoricalDistribution(values)
    low_text, sep, high_text = rest.partition(":")
    low, high = _literal(item, low_text), _literal(item, high_text) if sep else None
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    if not numbers or not low < high:  # type: ignore[operator]
        raise ConfigError(f"--search-space {item!r} is invalid: {USAGE}")
    integer = isinstance(default, IntDistribution) or (
        isinstance(default, CategoricalDistribution) and all(isinstance(c, int) for c in default.choices)
    )
    log = bool(getattr(default, "log", False)) and low > 0  # type: ignore[operator]
    if integer and isinstance(low, int) and isinstance(high, int):
        return IntDistribution(low, high, log=log)
    return FloatDistribution(float(low), float(high), log=log)  # type: ignore[arg-type]


def _check_bounds(item: str, plan: RunPlan, key: str, dist: BaseDistribution) -> None:
    """The range's ends (or every choice) are values the algorithm accepts, so no trial fails on them."""
    values = dist.choices if isinstance(dist, CategoricalDistribution) else (dist.low, dist.high)  # type: ignore[attr-defined]
    try:
        for value in values:
            check_algo_values(plan.algo_entry.cls, {key: value})
    except ConfigError as error:
        raise ConfigError(f"--search-space {item!r} is invalid: {str(error).removeprefix('-params ')}") from None


def own_settings(plan: RunPlan, space: dict[str, BaseDistribution]) -> tuple[dict[str, Any] | None, list[str]]:
    """The run's own value of every key in ``space``, as the search's first trial, and what had to move.

    A key's own value is its ``-params`` value, else the preset's, else the default of the algorithm (or
    extractor) class; a linear schedule counts as its start. A value outside the space is replaced by
    the nearest one inside it (a range's end, the nearest choice), and named in the second item. None
    when a key has no value the space could hold (not a number where the space has numbers)."""
    point: dict[str, Any] = {}
    moved: list[str] = []
    for key, dist in space.items():
        value = _own_value(plan, key)
        start = linear_start(key, value)
        if start is not None:
            moved.append(f"{key} {value!r} -> {start!r} (constant: the search space has no schedules)")
            value = start
        inside = _nearest(dist, value)
        if inside is _NONE:
            return None, [f"{key} {value!r} is not a value of {dist}"]
        if inside != value:
            moved.append(f"{key} {value!r} -> {inside!r}")
        point[key] = inside
    return point, moved


_NONE = object()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _own_value(plan: RunPlan, key: str) -> Any:
    if key not in EXTRACTOR_KEYS:
        defaults = plan.algo_entry.keyword_defaults()
        given = plan.algo_kwargs
    elif plan.algo_entry.own_extractors:  # an episodic memory's keys: the preset (or -params) gives them
        defaults, given = {}, plan.extractor_kwargs
    else:
        defaults = {n: p.default for n, p in inspect.signature(plan.extractor_entry.cls).parameters.items()}
        given = plan.extractor_kwargs
    value = given.get(key, defaults.get(key))
    return None if value is inspect.Parameter.empty else value


def _nearest(dist: BaseDistribution, value: Any) -> Any:
    """``value`` if ``dist`` holds it, else the nearest value it holds; ``_NONE`` if there is none to compare."""
    if isinstance(dist, CategoricalDistribution):
        same = [c for c in dist.choices if c == value and isinstance(c, bool) == isinstance(value, bool)]
        if same:
            return same[0]  # the choice itself: 128, not an equal 128.0
        numbers = [c for c in dist.choices if _is_number(c)]
        if not (_is_number(value) and numbers):
            return _NONE
        return min(numbers, key=lambda c: abs(c - value))
    if not _is_number(value):
        return _NONE
    low, high = dist.low, dist.high  # type: ignore[attr-defined]
    inside = min(max(value, low), high)
    return int(round(inside)) if isinstance(dist, IntDistribution) else float(inside)


SHAPE_KEYS = ("embed_dim", "n_heads")
"""searched keys that must go together: each pair is built once, as the run would build it"""
MAX_SHAPES = 256


def _check_shapes(plan: RunPlan, space: dict[str, BaseDistribution]) -> None:
    """Every (embed_dim, n_heads) the space can draw builds: the run's extractor or memory checks it."""
    keys = [key for key in SHAPE_KEYS if key in space]
    if not keys:
        return
    values = [_integers(key, space[key]) for key in keys]
    if math.prod(map(len, values)) > MAX_SHAPES:
        raise ConfigError(
            f"--search-space {' '.join(keys)} can draw more than {MAX_SHAPES} shapes to check: give choices, e.g. embed_dim:[32,64,128]"
        )
    for combo in itertools.product(*values):
        params = dict(zip(keys, combo, strict=True))
        try:
            resolve(replace(plan.config, hyperparams={**plan.config.hyperparams, **params}))
        except ConfigError as error:
            shape = " ".join(f"{k}={v}" for k, v in params.items())
            raise ConfigError(
                f"--search-space can draw {shape}, which cannot be built ({error}): give values that go together"
            ) from None


def _integers(key: str, dist: BaseDistribution) -> list[Any]:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution):
        return list(range(dist.low, dist.high + 1, dist.step))
    raise ConfigError(f"--search-space {key} is invalid: it takes integers, as KEY:[V1,V2,...] or KEY:LOW:HIGH")
