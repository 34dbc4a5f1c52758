"""Linear schedules in ``-params`` and presets, written as the RL Zoo writes them: ``lin_<start>``.

``learning_rate:lin_3e-4`` and ``clip_range:lin_0.2`` become SB3 schedules (start times the
progress remaining, 0 at the end); ``ent_coef:lin_0.01`` is set before every update by
:class:`EntropySchedule` (SB3 takes only a number there). Annealing the entropy bonus is what
CleanRL's PPO-TrXL does too: late in training it lets the policy become as sure as a
deterministic evaluation needs.
"""

from __future__ import annotations

import math
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import LinearSchedule

from agents.config import ConfigError

LINEAR = "lin_"
SCHEDULED = ("learning_rate", "clip_range", "ent_coef")
"""the keywords that take ``lin_<start>``"""


def linear_start(key: str, value: Any) -> float | None:
    """The start of ``value`` if it is ``lin_<number >= 0>``; None if it is not a schedule at all."""
    if not (isinstance(value, str) and value.startswith(LINEAR)):
        return None
    if key not in SCHEDULED:
        raise ConfigError(
            f"-params {key}={value!r} is invalid: a linear schedule (lin_X) is allowed only for {', '.join(SCHEDULED)}"
        )
    try:
        start = float(value[len(LINEAR) :])
    except ValueError:
        start = math.nan
    if not (math.isfinite(start) and start >= 0):
        raise ConfigError(f"-params {key}={value!r} is invalid: must be lin_ and a number >= 0, e.g. lin_0.01")
    return start


def starts(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every schedule replaced by its start (for range checks); checks every schedule."""
    out = {}
    for key, value in values.items():
        start = linear_start(key, value)
        out[key] = value if start is None else start
    return out


def as_algorithm_kwargs(values: dict[str, Any]) -> dict[str, Any]:
    """Algorithm keywords for SB3: learning rate and clip range schedules as callables, an entropy
    schedule as its start (:class:`EntropySchedule` takes it from there)."""
    out = dict(values)
    for key, value in values.items():
        start = linear_start(key, value)
        if start is not None:
            out[key] = start if key == "ent_coef" else LinearSchedule(start, 0.0, 1.0)
    return out


class EntropySchedule(BaseCallback):
    """Before every update: ``ent_coef = start * (1 - env steps so far / env steps of the run)``.

    Reads the model's own step counts, as SB3's schedules do: a resume (``-i``) to the run's own total
    continues the same line; one given another ``-n`` rescales it to that total from the resume on.
    """

    def __init__(self, start: float):
        super().__init__()
        self.start = start

    def _on_training_start(self) -> None:
        self._update()

    def _on_rollout_end(self) -> None:
        self._update()

    def _update(self) -> None:
        total = max(int(self.model._total_timesteps), 1)
        remaining = min(max(1.0 - self.model.num_timesteps / total, 0.0), 1.0)
        self.model.ent_coef = self.start * remaining  # type: ignore[attr-defined]
        self.logger.record("train/ent_coef", self.model.ent_coef)  # type: ignore[attr-defined]

    def _on_step(self) -> bool:
        return True
