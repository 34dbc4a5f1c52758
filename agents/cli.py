"""The ``train.py`` command line, built from ``TrainConfig`` (flag names follow the RL Baselines3 Zoo)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from typing import Any

import gymnasium as gym

import envs
from agents.checks import check_optimize_flags
from agents.config import ConfigError, StoppedEarly, TrainConfig, parse_key_values
from agents.registry import ALGOS, algo_help, extractor_help
from agents.replay import replay
from agents.run import REPLAY_FLAGS, RESUME_FLAGS, check_only_changes, train


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit code 2, like every other bad input."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="train.py",
        description="Train an SB3 agent with an attention (or baseline) feature extractor, evaluate it and log to TensorBoard.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in fields(TrainConfig):
        meta = dict(f.metadata)
        flags = meta.pop("flags")
        if meta.pop("kv", None):  # given twice, a key:value flag keeps both lists (a later key wins)
            meta.update(action="extend", default=[])
        kind = meta.pop("registry", None)
        if kind == "algos":  # read at parse time: entries registered after import count
            meta.update(choices=list(ALGOS), help=algo_help())
        elif kind == "extractors":
            meta["help"] = f"feature extractor. {extractor_help()}"
        default = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc,operator]
        meta.setdefault("default", default)
        parser.add_argument(*flags, dest=f.name, **meta)
    return parser


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    args = build_parser().parse_args(argv)
    values = vars(args)
    for f in fields(TrainConfig):
        if f.metadata.get("kv"):
            values[f.name] = parse_key_values(values[f.name] or [], f.metadata["flags"][-1])
    return TrainConfig(**values)


def given_flags(argv: list[str] | None) -> set[str]:
    """The settings typed on the command line (their dest names), whatever their values."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def list_envs() -> str:
    lines = []
    for env_id in envs.ENV_IDS:
        spec = gym.spec(env_id)
        kwargs = ", ".join(f"{k}={v}" for k, v in spec.kwargs.items()) or "defaults"
        lines.append(f"{env_id:28s} {kwargs}")
    return "\n".join(lines)


OPTIMIZE_ONLY = ("n_trials", "storage", "study_name", "search_space", "objective")
"""the search's own settings: flags that go with ``--optimize`` alone"""


def optimize_flags(given: set[str]) -> dict[str, bool]:
    """Which of the search's own flags were typed (``given``: :func:`given_flags`), whatever their values."""
    flags = {f.name: f.metadata["flags"][-1] for f in fields(TrainConfig)}
    return {flags[name]: name in given for name in OPTIMIZE_ONLY}


INTERRUPTED = 130
"""the exit code of a process stopped by Ctrl-C (128 + SIGINT), as shells report it"""
STARTING = "interrupted before training started; nothing was saved"


def main(argv: list[str] | None = None) -> int:
    result: Any
    optimizing, stopped = False, STARTING
    try:
        cfg = config_from_args(argv)
        if cfg.list_envs:
            print(list_envs())
            return 0
        given = given_flags(argv)  # typed on the command line, whatever the value
        check_optimize_flags(cfg.optimize, optimize_flags(given), cfg.n_trials)
        if cfg.optimize and (cfg.trained_agent or cfg.replay is not None):
            other = "-i" if cfg.trained_agent else "--replay"
            raise ConfigError(f"--optimize does not go with {other}: a search trains new runs; leave one of them out")
        # -i and --replay take the run's saved settings: any other flag typed is refused, whatever its value
        if cfg.trained_agent:
            check_only_changes(cfg, RESUME_FLAGS, "resuming (-i)", given)
        elif cfg.replay is not None:
            check_only_changes(cfg, REPLAY_FLAGS, "replaying (--replay)", given)
        if cfg.optimize:
            optimizing = True  # a search says itself what an interrupt left
            from agents.tune import optimize  # Optuna and Ray load only when tuning

            result = optimize(cfg)
        elif cfg.replay is not None:
            stopped = "interrupted before the replay started; nothing was written"
            result = replay(cfg)
        else:
            result = train(cfg)  # a Ctrl-C while training saves the model and returns; one before it gets here
    except ConfigError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # Ctrl-C while none of train.py's own handling is on
        if optimizing:
            raise
        print(f"train.py: {interrupt if isinstance(interrupt, StoppedEarly) else stopped}", file=sys.stderr)
        return INTERRUPTED
    print(result.summary())
    return getattr(result, "exit_code", 0)
