"""Evaluation that also counts successes (``info["is_success"]`` at the end of each episode; where an
env reports it at some ends only, an end without it is a failure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv


@dataclass(frozen=True)
class EvalResult:
    episodes: int
    mean_return: float
    std_return: float
    success_rate: float | None
    """None when the env reports no ``is_success`` (see :func:`success_flags`)."""

    def __str__(self) -> str:
        success = "n/a" if self.success_rate is None else f"{self.success_rate:.2f}"
        return f"eval success {success} over {self.episodes} episodes | mean return {self.mean_return:.3f} +/- {self.std_return:.3f}"


def success_flags(ended: list[Any], reports: bool = False) -> list[bool]:
    """The ``info.get("is_success")`` of each ended episode as successes: none where no episode reported
    one and the env is not known to (``reports``: it did in an earlier evaluation); else an episode that
    ended without it is a failure (an env may report its successes only: were those episodes left
    out, its timeouts would never lower the rate, and an evaluation without a success would have none)."""
    if not reports and all(flag is None for flag in ended):
        return []
    return [bool(flag) for flag in ended]


def evaluate(
    model: BaseAlgorithm, venv: VecEnv, n_episodes: int, deterministic: bool = True, reports: bool = False
) -> EvalResult:
    """Play ``n_episodes`` with ``model`` (recurrent policies included) on ``venv``; ``reports``: the env
    is known to report ``is_success`` (see :func:`success_flags`)."""
    ended: list[Any] = []

    def record(locals_: dict[str, Any], _: dict[str, Any]) -> None:
        if locals_["done"]:
            ended.append(locals_["info"].get("is_success"))

    episode_returns, _ = evaluate_policy(
        model, venv, n_episodes, deterministic=deterministic, return_episode_rewards=True, callback=record
    )
    returns = np.asarray(episode_returns, dtype=np.float64)
    successes = success_flags(ended, reports)
    rate = float(np.mean(successes)) if successes else None
    return EvalResult(len(returns), float(returns.mean()), float(returns.std()), rate)
