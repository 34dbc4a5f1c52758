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

import ast
import itertools
import json
import os
import re
import shlex
import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

import rlattn
from agents.checks import check_model_file, first_line
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


LITERALS = "literals"
"""the key under which a settings file keeps, as Python literals, the keyword values JSON would change"""


def to_json(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` as JSON holds them, and under ``LITERALS`` each keyword value (of a dict-valued
    setting) that JSON would change, as the Python literal it was: ``size:(8, 8)`` stays a tuple."""
    data = json.loads(json.dumps(settings, default=str))
    literals: dict[str, dict[str, str]] = {}
    for name, value in settings.items():
        if not isinstance(value, dict):
            continue
        for key, item in value.items():
            if data[name].get(str(key)) != item and _literal(item):
                literals.setdefault(name, {})[str(key)] = repr(item)
    return {**data, LITERALS: literals} if literals else data


def from_json(data: dict[str, Any]) -> dict[str, Any]:
    """Settings read back: ``to_json``'s literals put back in place of their JSON forms."""
    literals = data.pop(LITERALS, None)
    if isinstance(literals, dict):
        for name, values in literals.items():
            if isinstance(data.get(name), dict) and isinstance(values, dict):
                data[name] = {**data[name], **{key: ast.literal_eval(text) for key, text in values.items()}}
    return data


def _literal(value: Any) -> bool:
    try:
        return bool(ast.literal_eval(repr(value)) == value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False


def write_run_info(folder: Path, plan: RunPlan) -> None:
    """The arguments (``args.json``), the resolved settings (``config.json``) and the command line."""
    info_dir = folder / env_name(plan.config.env)
    info_dir.mkdir()
    (info_dir / "args.json").write_text(json.dumps(to_json(asdict(plan.config)), indent=2) + "\n")
    (info_dir / "config.json").write_text(json.dumps(to_json(resolved_settings(plan)), indent=2) + "\n")
    append_command(folder, plan.config.env)


def append_command(folder: Path, env_id: str) -> None:
    with open(folder / env_name(env_id) / "command.txt", "a") as file:
        file.write(shlex.join([sys.executable, *sys.argv]) + "\n")


def resolved_settings(plan: RunPlan) -> dict[str, Any]:
    return {k: v for k, v in asdict(plan).items() if k != "config"}


STARTED_WITH = (
    "extractor",
    "history",
    "n_envs",
    "algo_kwargs",
    "extractor_kwargs",
    "policy_kwargs",
    "env_kwargs",
    "eval_env_kwargs",
    "history_inputs",
    "normalize_reward",
)
"""the resolved settings a resumed or replayed run takes from its ``config.json``, not from today's presets"""


def as_started(plan: RunPlan, folder: Path, total: bool = False) -> RunPlan:
    """``plan`` with the settings the run in ``folder`` was started with (its ``config.json``) where the
    presets of this version resolve them differently, so a resumed or replayed run is the run that was
    trained; a warning names each difference. ``total``: the run's total env steps too (a resume without
    ``-n`` of a run started without one). A run folder without the file: ``plan`` unchanged."""
    path = folder / env_name(plan.config.env) / "config.json"
    if not path.is_file():
        return plan
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved, dict):
            raise ValueError(f"a JSON object was expected, not {type(saved).__name__}")
        saved = from_json(saved)
    except (OSError, ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as error:
        raise ConfigError(f"{path} cannot be read: {first_line(error)}") from None
    now = from_json(to_json(resolved_settings(plan)))
    keys = (*STARTED_WITH, "n_timesteps") if total else STARTED_WITH
    changed = {key: saved[key] for key in keys if key in saved and saved[key] != now.get(key)}
    if not changed:
        return plan
    differences = "; ".join(f"{key} {value!r} (now {now.get(key)!r})" for key, value in changed.items())
    warnings.warn(f"{folder} goes on with the settings it was started with: {differences}", stacklevel=2)
    if "history_inputs" in changed:
        changed["history_inputs"] = tuple(changed["history_inputs"])
    return replace(plan, **changed)


def load_run_config(folder: Path, what: str) -> TrainConfig:
    """The settings a run folder written by train.py was started with (its ``*/args.json``)."""
    saved_args = sorted(folder.glob("*/args.json"))
    if len(saved_args) != 1:
        raise ConfigError(
            f"{what} is invalid: {folder} holds no run settings (*/args.json); expected a run folder written by train.py"
        )
    unreadable = (ValueError, TypeError, AttributeError, SyntaxError, MemoryError, RecursionError)
    try:
        args = json.loads(saved_args[0].read_text())
        args = from_json(args) if isinstance(args, dict) else args
    except unreadable as error:
        raise ConfigError(f"{what}: cannot read {saved_args[0]}: {first_line(error)}") from None
    if isinstance(args, dict) and args.get("history_inputs") is None:
        # what the run's steps held, as resolved when it started (runs from before the flag: nothing)
        resolved = saved_args[0].with_name("config.json")
        try:
            args["history_inputs"] = (
                list(json.loads(resolved.read_text()).get("history_inputs", [])) if resolved.is_file() else []
            )
        except unreadable as error:
            raise ConfigError(f"{what}: cannot read {resolved}: {first_line(error)}") from None
    try:
        return TrainConfig(**args)
    except unreadable as error:
        raise ConfigError(f"{what}: cannot read {saved_args[0]}: {first_line(error)}") from None


CRASHED_MODEL = "crashed_model.zip"
"""what a run saves when training raises"""


def find_model(target: str, flag: str = "--replay") -> tuple[Path, Path]:
    """(run folder, model zip): a model zip, or a run folder's best (else final, else the model a crash saved)."""
    path = Path(target)
    if path.is_file():
        return path.parent, check_model_file(target, flag)
    if not path.is_dir():
        raise ConfigError(
            f"{flag} {target!r} is invalid: no such folder or file; expected a run folder written by train.py"
        )
    saved = load_run_config(path, f"{flag} {target!r}")
    for file in (path / BEST_MODEL, final_model(path, saved.env), path / CRASHED_MODEL):
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


def replay_steps_file(folder: Path) -> Path:
    """Beside ``replay_buffer.pkl``: the step counter of the model it was saved with."""
    return folder / f"{Path(REPLAY_BUFFER).stem}.json"


def save_replay_atomic(model: BaseAlgorithm, folder: Path) -> Path | None:
    """Off-policy algorithms: the replay buffer as ``replay_buffer.pkl``, atomically, then the model's step
    counter beside it (``replay_buffer.json``: a resume from an older checkpoint must not take it); else nothing."""
    if not isinstance(model, OffPolicyAlgorithm):
        return None
    replay_steps_file(folder).unlink(missing_ok=True)  # until both are written, the pair is not vouched for
    path = write_atomic(folder / REPLAY_BUFFER, model.save_replay_buffer)
    write_replay_steps(folder, model.num_timesteps)
    return path


def write_replay_steps(folder: Path, env_steps: int) -> None:
    """``replay_buffer.json``: the step counter of the model the folder's replay buffer belongs to."""
    text = json.dumps({"env_steps": env_steps}) + "\n"
    write_atomic(replay_steps_file(folder), lambda target: target.write_text(text))


def replay_buffer_for(model: BaseAlgorithm, folder: Path) -> Path | None:
    """The run's replay buffer if it was saved with this model's step counter (or by a version that did not
    write the counter: then as before, whatever the model); a warning when it was saved with another."""
    path = folder / REPLAY_BUFFER
    if not path.is_file():
        return None
    if not replay_steps_file(folder).is_file():
        return path
    try:
        steps = json.loads(replay_steps_file(folder).read_text())["env_steps"]
    except (OSError, ValueError, KeyError, TypeError):
        steps = None
    if steps != model.num_timesteps:
        saved = "at an unknown step" if steps is None else f"at {steps} env steps"
        warnings.warn(
            f"{path} was saved {saved}, the model at {model.num_timesteps}: the resumed run starts with an empty replay buffer",
            stacklevel=2,
        )
        return None
    return path


TENSORBOARD_NOTE = "tensorboard.txt"
"""in a run folder whose TensorBoard events go elsewhere (``-tb``): that folder, for ``-i`` to go on in"""


TENSORBOARD_OWNER = ".rlattn-run"
"""in a ``-tb`` folder: the run folder (absolute) whose events it holds"""


def tensorboard_folder(
    folder: Path, tensorboard_log: str | None, algo: str, resumed: bool
) -> tuple[Path, bool, Callable[[], object]]:
    """Where a run's TensorBoard events go; whether the folder holds this run's events alone (so that a
    resume may rewrite them); and what to note once the run has started (nothing changes on disk for a
    resumed run before it can go on).

    The run folder, or with ``-tb`` a folder of its own under ``TB/ALGO/`` named after the run (``RUN-2``,
    ``RUN-3``, ... where that name is taken: runs of other ``-f`` folders sharing one ``-tb`` never write
    into one TensorBoard run), marked with its owner and noted in the run folder (relative to it, or
    absolute for an absolute ``-tb``; ``.`` for the run folder itself). A resumed run goes on in the
    noted folder when it is its own (or the run was moved and its first place is gone); a copy of
    another run, or a run whose TensorBoard folder is not on this machine, writes into its run folder
    from then on (with a warning for the latter)."""
    note = folder / TENSORBOARD_NOTE

    def noting(text: str) -> Callable[[], object]:
        return lambda: note.write_text(text + "\n")

    if resumed and note.is_file():
        text = note.read_text().strip()
        if text == ".":
            return folder, True, lambda: None
        noted = Path(text)
        target = noted if noted.is_absolute() else folder / noted
        owner = target / TENSORBOARD_OWNER
        if owner.is_file():
            ran = Path(owner.read_text().strip())
            if ran == folder.resolve():
                return target, True, lambda: None
            if not ran.exists():  # the run was moved here: its TensorBoard folder goes with it
                return target, True, lambda: owner.write_text(str(folder.resolve()) + "\n")
            return folder, True, noting(".")  # a copy of another run: a branch with events of its own
        if target.is_dir():  # noted before owners were marked: its folder, left as it is
            return target, False, lambda: None
        warnings.warn(
            f"{folder}'s TensorBoard folder {target} is not here: its events go to the run folder", stacklevel=2
        )
        return folder, True, noting(".")
    if not tensorboard_log:
        return folder, True, lambda: None
    parent = Path(tensorboard_log) / algo
    if (parent / folder.name).resolve() == folder.resolve():  # -tb is -f: the run folder itself
        return folder, True, noting(".")
    if resumed:  # a run from before the note: named after the run, maybe shared with another -f's run
        return parent / folder.name, False, lambda: None
    n = 1
    while True:
        target = parent / (folder.name if n == 1 else f"{folder.name}-{n}")
        try:
            target.mkdir(parents=True)
        except FileExistsError:  # another run's (or one made at this moment)
            n += 1
            continue
        (target / TENSORBOARD_OWNER).write_text(str(folder.resolve()) + "\n")
        noted = target.resolve() if Path(tensorboard_log).is_absolute() else Path(os.path.relpath(target, folder))
        return target, True, noting(str(noted))


def trim_events(tensorboard_dir: Path, last_step: int) -> None:
    """TensorBoard events logged after ``last_step`` by earlier parts of a run, left out of their files: a
    run resumed from a checkpoint older than its end logs those steps again, and TensorBoard would draw
    both. Each file is rewritten beside itself (under a name TensorBoard does not read) and renamed into
    place; events without a step's data stay."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    for file in sorted(tensorboard_dir.glob("events.out.tfevents.*")):
        records = list(RawEventFileLoader(str(file)).Load())  # as written: rewritten, they stay as SB3 wrote them
        events = [Event.FromString(record) for record in records]
        kept = [r for r, e in zip(records, events, strict=True) if not e.HasField("summary") or e.step <= last_step]
        if len(kept) == len(records):
            continue
        partial = tensorboard_dir / ".trimming"
        try:
            with open(partial, "wb") as out:
                writer = RecordWriter(out)
                for record in kept:
                    writer.write(record)
            os.replace(partial, file)
        finally:
            partial.unlink(missing_ok=True)


def keep_progress(folder: Path, timesteps: int) -> None:
    """SB3's CSV logger starts progress.csv afresh: keep the earlier part as ``progress_until_<steps>.csv``
    (``_2``, ``_3``, ... if that name is taken); one without a logged row is removed."""
    progress = folder / "progress.csv"
    if not progress.is_file():
        return
    with open(progress) as file:
        rows = sum(1 for _ in itertools.islice(file, 2))
    if rows < 2:  # a run stopped before its first log: a header at most
        progress.unlink()
        return
    target, n = folder / f"progress_until_{timesteps}.csv", 2
    while target.exists():
        target, n = folder / f"progress_until_{timesteps}_{n}.csv", n + 1
    os.replace(progress, target)


@dataclass(frozen=True)
class RunRecord:
    """What ``result.json`` holds: how a run ended, for benchmarks and sweeps (nothing parses stdout)."""

    env_steps: int
    steps_per_second: float
    """env steps trained in this process (a resumed run's own part) per second of training: the seconds of
    ``learn`` less those spent in evaluations and the run's other callbacks (results written before
    2026-12-07 have no ``outside_training_seconds`` and counted them)"""
    wall_seconds: float
    """seconds of ``learn`` in this process, evaluations and callbacks included"""
    interrupted_by: str | None
    evaluation: dict[str, Any] | None
    """the final evaluation: episodes, mean_return, std_return, success_rate (None when interrupted)"""
    settings: dict[str, Any]
    """the arguments (``config``) and the resolved plan"""
    outside_training_seconds: float | None = None
    """of ``wall_seconds``, those spent in evaluations and the other callbacks"""
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
