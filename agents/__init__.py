"""The experiment layer: configs, presets, building SB3 algorithms with rlattn extractors, evaluation."""

from agents.build import RunPlan, build_model, make_env, make_vec, resolve
from agents.config import ConfigError, TrainConfig
from agents.evaluate import EvalResult, evaluate
from agents.run import RunResult, train

__all__ = [
    "ConfigError",
    "EvalResult",
    "RunPlan",
    "RunResult",
    "TrainConfig",
    "build_model",
    "evaluate",
    "make_env",
    "make_vec",
    "resolve",
    "train",
]
