"""Results over seeds as people can trust them: the interquartile mean (IQM) with a 95% stratified-bootstrap
confidence interval, computed by rliable (Agarwal et al. 2021, https://arxiv.org/abs/2108.13264, section 4).

The IQM is the mean of the middle 50% of the runs (scipy's ``trim_mean`` with 25% cut at each end):
robust to one lucky or unlucky seed, less noisy than the median.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rliable import library as rly
from rliable import metrics

REPS = 2_000
"""bootstrap resamples per interval (~0.7 s each on this machine; rliable's default of 50,000 takes ~18 s)"""


@dataclass(frozen=True)
class Interval:
    """The IQM of ``values`` over seeds and its 95% confidence interval ``[low, high]``."""

    iqm: float
    low: float
    high: float
    values: tuple[float, ...]

    def __str__(self) -> str:
        if len(self.values) < 2:  # a bootstrap over one value is that value: no interval to claim
            return f"{self.iqm:.2f} (1 seed)"
        return f"{self.iqm:.2f} [{self.low:.2f}, {self.high:.2f}]"

    def steps(self) -> str:
        """As env steps: ``52,000 [40,000, 61,000]``."""
        if len(self.values) < 2:
            return f"{self.iqm:,.0f} (1 seed)"
        return f"{self.iqm:,.0f} [{self.low:,.0f}, {self.high:,.0f}]"


def _iqm(scores: np.ndarray) -> np.ndarray:
    return np.array([metrics.aggregate_iqm(scores)])


def iqm_interval(values: Sequence[float], reps: int = REPS, seed: int = 0) -> Interval:
    """IQM and 95% stratified-bootstrap CI of one cell's per-seed ``values`` (one task: seeds are the runs)."""
    scores = np.asarray(values, dtype=np.float64).reshape(-1, 1)  # (seeds, 1 task)
    if scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError(f"values must be finite numbers, one per seed; got {list(values)}")
    # rliable's StratifiedBootstrap draws its resamples from numpy's global generator and ignores
    # random_state: seed that one, so a cell's table and plot get the same interval, run after run
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():  # arch's notice that RandomState is on its way out
            warnings.simplefilter("ignore", FutureWarning)
            points, intervals = rly.get_interval_estimates(
                {"cell": scores},
                _iqm,
                reps=reps,
                confidence_interval_size=0.95,
                random_state=np.random.RandomState(seed),
            )
    finally:
        np.random.set_state(state)
    low, high = intervals["cell"][:, 0]
    return Interval(float(points["cell"][0]), float(low), float(high), tuple(float(v) for v in scores[:, 0]))


def steps_interval(steps: Sequence[int | None], reps: int = REPS) -> Interval | None:
    """IQM and CI of env steps to a threshold where every seed reached it; None when any did not."""
    if not steps or any(s is None for s in steps):
        return None
    return iqm_interval([float(s) for s in steps if s is not None], reps)


def per_seed(values: Sequence[float | int | None], steps: bool = False) -> str:
    """The per-seed values in seed order: ``1.00 0.40 1.00``, or ``40,000 never 35,000``."""
    if steps:
        return " ".join("never" if v is None else f"{v:,.0f}" for v in values)
    return " ".join("-" if v is None or math.isnan(v) else f"{v:.2f}" for v in values)
