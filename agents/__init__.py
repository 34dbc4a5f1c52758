"""The experiment layer: configs, presets, building SB3 algorithms with rlattn extractors, evaluation."""

from agents.build import build_model, make_vec
from agents.config import ConfigError, TrainConfig
from agents.evaluate import EvalResult, evaluate
from agents.plan import RunPlan, make_env, resolve
from agents.registry import AlgoEntry, ExtractorEntry, register_algo, register_extractor
from agents.run import RunResult, train

__all__ = [
    "AlgoEntry",
    "ExtractorEntry",
    "register_algo",
    "register_extractor",
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
