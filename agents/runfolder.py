"""A run folder: the Zoo's layout and file names, the saved settings, atomic saves, the result file.

```
LOG_FOLDER/ALGO/ENV_N/
  ENV.zip, best_model.zip, rl_model_<steps>_steps.zip, replay_buffer.pkl, crashed_model.zip
  <model>_vecnormalize.pkl beside each model zip (runs with normalize_reward: the running return statistics)
  evaluations.npz, N.monitor.csv, progress.csv, events.out.tfevents.*, result.json
  ENV/args.json, ENV/config.json, ENV/command.txt
```
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

import rlattn
from agents.checks import check_model_file
from agents.config import ConfigError, TrainConfig
from agents.evaluate import EvalResult
from agents.plan import RunPlan

REPLAY_BUFFER = "replay_buffer.pkl"
RESULT = "result.json"
BEST_MODEL = "best_model.zip"


def env_name(env_id: str) -> str:
    return env_id.replace("/", "-").replace(":", "-")


def final_model(folder: Path, env_id: str) -> Path:
    """Where the run's final model is (and an interrupted run's model)."""
    return folder / f"{env_name(env_id)}.zip"


def new_run_folder(log_folder: str, algo: str, env_id: str) -> Path:
    """``LOG_FOLDER/ALGO/ENV_N`` with N one more than the latest run (the Zoo's layout).

    Runs started at the same moment into one log folder get different N: a number another run has
    just taken is skipped."""
    parent = Path(log_folder) / algo
    parent.mkdir(parents=True, exist_ok=True)
    name = env_name(env_id)
    while True:
        runs = [
            int(m.group(1))
            for p in parent.glob(f"{name}_*")
            if (m := re.fullmatch(re.escape(name) + r"_(\d+)", p.name))
        ]
        folder = parent / f"{name}_{max(runs, default=0) + 1}"
        try:
            folder.mkdir()
        except FileExistsError:  # taken between the listing and mkdir: list again
            continue
        return folder


def write_run_info(folder: Path, plan: RunPlan) -> None:
    """The arguments (``args.json``), the resolved settings (``config.json``) and the command line."""
    info_dir = folder / env_name(plan.config.env)
    info_dir.mkdir()
    (info_dir / "args.json").write_text(json.dumps(asdict(plan.config), indent=2, default=str) + "\n")
    (info_dir / "config.json").write_text(json.dumps(resolved_settings(plan), indent=2, default=str) + "\n")
    append_command(folder, plan.config.env)


def append_command(folder: Path, env_id: str) -> None:
    with open(folder / env_name(env_id) / "command.txt", "a") as file:
        file.write(shlex.join([sys.executable, *sys.argv]) + "\n")


def resolved_settings(plan: RunPlan) -> dict[str, Any]:
    return {k: v for k, v in asdict(plan).items() if k != "config"}


def load_run_config(folder: Path, what: str) -> TrainConfig:
    """The settings a run folder written by train.py was started with (its ``*/args.json``)."""
    saved_args = sorted(folder.glob("*/args.json"))
    if len(saved_args) != 1:
        raise ConfigError(
            f"{what} is invalid: {folder} holds no run settings (*/args.json); expected a run folder written by train.py"
        )
    try:
        args = json.loads(saved_args[0].read_text())
        if isinstance(args, dict) and args.get("history_inputs") is None:
            # what the run's steps held, as resolved when it started (runs from before the flag: nothing)
            resolved = saved_args[0].with_name("config.json")
            args["history_inputs"] = (
                list(json.loads(resolved.read_text()).get("history_inputs", [])) if resolved.is_file() else []
            )
        return TrainConfig(**args)
    except (ValueError, TypeError, AttributeError) as error:
        raise ConfigError(f"{what}: cannot read {saved_args[0]}: {error}") from None


def find_model(target: str, flag: str = "--replay") -> tuple[Path, Path]:
    """(run folder, model zip): a model zip, or a run folder's best (else final) model."""
    path = Path(target)
    if path.is_file():
        return path.parent, check_model_file(target, flag)
    if not path.is_dir():
        raise ConfigError(
            f"{flag} {target!r} is invalid: no such folder or file; expected a run folder written by train.py"
        )
    saved = load_run_config(path, f"{flag} {target!r}")
    for file in (path / BEST_MODEL, final_model(path, saved.env)):
        if file.is_file():
            return path, check_model_file(str(file), flag)
    raise ConfigError(
        f"{flag} {target!r} is invalid: the folder holds no {BEST_MODEL} or {final_model(path, saved.env).name}"
    )


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """``write`` to a file beside ``path``, then rename it into place: a crash mid-write never leaves a
    broken file under the real name, and the last good one stays until the new one is complete."""
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def normalization_file(model_path: Path) -> Path:
    """Where the reward normalization's running statistics of the model at ``model_path`` are kept."""
    return model_path.with_name(f"{model_path.stem}_vecnormalize.pkl")


def save_atomic(model: BaseAlgorithm, path: Path) -> Path:
    """The model as ``path`` (a .zip), atomically; with it, the statistics of its ``VecNormalize`` if it has one."""
    normalization = model.get_vec_normalize_env()
    if normalization is not None:
        write_atomic(normalization_file(path), lambda target: normalization.save(str(target)))
    return write_atomic(path, model.save)


def save_replay_atomic(model: BaseAlgorithm, folder: Path) -> Path | None:
    """Off-policy algorithms: the replay buffer as ``replay_buffer.pkl``, atomically; else nothing."""
    if not isinstance(model, OffPolicyAlgorithm):
        return None
    return write_atomic(folder / REPLAY_BUFFER, model.save_replay_buffer)


def keep_progress(folder: Path, timesteps: int) -> None:
    """SB3's CSV logger starts progress.csv afresh: keep the earlier part under its step count."""
    progress = folder / "progress.csv"
    if progress.is_file():
        os.replace(progress, folder / f"progress_until_{timesteps}.csv")


@dataclass(frozen=True)
class RunRecord:
    """What ``result.json`` holds: how a run ended, for benchmarks and sweeps (nothing parses stdout)."""

    env_steps: int
    steps_per_second: float
    """env steps trained in this process (a resumed run's own part) per second of ``learn``"""
    wall_seconds: float
    """seconds of training in this process"""
    interrupted_by: str | None
    evaluation: dict[str, Any] | None
    """the final evaluation: episodes, mean_return, std_return, success_rate (None when interrupted)"""
    settings: dict[str, Any]
    """the arguments (``config``) and the resolved plan"""
    version: str = rlattn.__version__


def write_result(folder: Path, plan: RunPlan, record: dict[str, Any]) -> Path:
    """``result.json`` in the run folder, atomically."""
    settings = {"config": asdict(plan.config), **resolved_settings(plan)}
    result = RunRecord(**record, settings=settings)
    text = json.dumps(asdict(result), indent=2, default=str) + "\n"
    return write_atomic(folder / RESULT, lambda path: path.write_text(text))


def read_result(folder: Path) -> dict[str, Any]:
    """A run folder's ``result.json`` (a one-line ConfigError when there is none or it cannot be read)."""
    try:
        return json.loads((folder / RESULT).read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{folder / RESULT} cannot be read: {error}") from None


def evaluation_record(evaluation: EvalResult | None) -> dict[str, Any] | None:
    return asdict(evaluation) if evaluation is not None else None
