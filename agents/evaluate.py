"""Evaluation that also counts successes (``info["is_success"]`` at the end of each episode)."""

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
    """None when the env reports no ``is_success``."""

    def __str__(self) -> str:
        success = "n/a" if self.success_rate is None else f"{self.success_rate:.2f}"
        return f"eval success {success} over {self.episodes} episodes | mean return {self.mean_return:.3f} +/- {self.std_return:.3f}"


def evaluate(model: BaseAlgorithm, venv: VecEnv, n_episodes: int, deterministic: bool = True) -> EvalResult:
    """Play ``n_episodes`` with ``model`` (recurrent policies included) on ``venv``."""
    successes: list[bool] = []

    def record(locals_: dict[str, Any], _: dict[str, Any]) -> None:
        if locals_["done"] and "is_success" in locals_["info"]:
            successes.append(bool(locals_["info"]["is_success"]))

    episode_returns, _ = evaluate_policy(
        model, venv, n_episodes, deterministic=deterministic, return_episode_rewards=True, callback=record
    )
    returns = np.asarray(episode_returns, dtype=np.float64)
    rate = float(np.mean(successes)) if successes else None
    return EvalResult(len(returns), float(returns.mean()), float(returns.std()), rate)
