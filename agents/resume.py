"""Runs that a kill does not set back: a resume point saved while training, and the next attempt going on from it.

A sweep's case and a search's trial each train in a folder of their own. While training, the run saves
the point it would resume from (:class:`SaveForResume`); when its sweep or search is interrupted (Ray
kills the trial's process without a word), crashes, or loses its machine, the same command trains the
case or trial again in the same folder and :func:`train_resumable` goes on from that point with
``train.py -i`` instead of starting over.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from agents.cli import config_from_args
from agents.config import ConfigError, TrainConfig
from agents.run import RunResult, train
from agents.runfolder import REPLAY_BUFFER, normalization_file, save_atomic, write_atomic, write_replay_steps

RESUME_FILE = "resume.json"
"""in an unfinished run's folder: the point to resume it from (its model and replay buffer files, env
steps, the wall time of its attempts until then, the steps at which it was resumed before)"""
CHECKPOINT_S = 300.0
"""how often (seconds) a case or trial saves the point it would resume from if killed"""


class SaveForResume(BaseCallback):
    """A run's resume point, saved at the start of a rollout (every step counted has been learned from,
    none is half-collected) at most every ``every_s`` seconds: the model (with its reward statistics) as
    ``resume_<steps>.zip``, an off-policy model's replay buffer as ``resume_<steps>_replay_buffer.pkl``,
    then ``resume.json`` naming them, each written atomically and ``resume.json`` last, so a kill at any
    moment leaves a whole point; the previous point's files go after."""

    def __init__(self, folder: Path, every_s: float, before: dict, started: float):
        super().__init__()
        self.folder, self.every_s, self.before, self.started = folder, every_s, before, started
        """``folder``: the case's or trial's, which holds one run; ``before``: the resume point this attempt
        started from ({} for a new run); ``started``: its clock"""
        self.run: Path | None = None
        self.budget = 0
        self.point: dict = dict(before)

    def _on_training_start(self) -> None:
        (self.run,) = {config.parent.parent for config in self.folder.glob("*/*/*/config.json")}
        self.budget = int(self.locals["total_timesteps"])  # SB3's absolute total, a resumed run's too
        self.saved = time.perf_counter()

    def _on_rollout_start(self) -> None:
        now = time.perf_counter()
        if now - self.saved >= self.every_s and self.model.num_timesteps > self.point.get("env_steps", 0):
            assert self.run is not None
            stem = f"resume_{self.model.num_timesteps}"
            model = save_atomic(self.model, self.run / f"{stem}.zip")
            replay = None
            if isinstance(self.model, OffPolicyAlgorithm):
                replay = write_atomic(self.run / f"{stem}_{REPLAY_BUFFER}", self.model.save_replay_buffer).name
            self.write(model.name, replay)
            self.saved = now

    def write(self, model: str, replay: str | None) -> None:
        """``resume.json`` naming the point's files (``replay`` None: the run's own replay buffer file), then
        the previous point's own files removed."""
        assert self.run is not None
        run, previous = self.run, self.point
        self.point = {
            **self.before,
            "model": model,
            "replay": replay,
            "env_steps": self.model.num_timesteps,
            "wall_s": self.wall_s(),
        }
        write_atomic(run / RESUME_FILE, lambda path: path.write_text(json.dumps(self.point) + "\n"))
        if previous.get("model", "").startswith("resume_") and previous["model"] != model:
            for name in point_files(previous):
                (run / name).unlink(missing_ok=True)

    def wall_s(self) -> float:
        return self.before.get("wall_s", 0.0) + time.perf_counter() - self.started

    def _on_step(self) -> bool:
        return True


def point_files(point: dict) -> list[str]:
    """The files of a resume point made by :class:`SaveForResume`: model, reward statistics, replay buffer."""
    model = Path(point["model"])
    return [model.name, normalization_file(model).name, *([point["replay"]] if point.get("replay") else [])]


def resume_point(folder: Path) -> tuple[Path, dict] | None:
    """The model an unfinished run in ``folder`` (a case's or trial's) resumes from, and its ``resume.json``;
    None when there is none (the run trains afresh)."""
    for file in sorted(folder.glob(f"*/*/{RESUME_FILE}")):
        point = json.loads(file.read_text())
        model = file.parent / point["model"]
        if model.is_file():
            return model, point
    return None


@dataclass(frozen=True)
class Attempt:
    result: RunResult
    wall_s: float
    """the time of every attempt at the run so far, this one's set-up and evaluations included"""
    resumed_at: list[int]
    """the env steps each later attempt went on from (empty for a run trained in one go)"""


def train_resumable(
    fresh: TrainConfig,
    folder: Path,
    label: str,
    extra_callbacks: Sequence[BaseCallback] = (),
    checkpoint_s: float = CHECKPOINT_S,
) -> Attempt:
    """Train in ``folder`` (``fresh.log_folder``) from the resume point an earlier attempt left there, else
    afresh with ``fresh`` (the run folders of an unfinished attempt without a point, ``folder/ALGO/RUN``,
    are removed first: the caller has found no finished run there). A point that ``-i`` refuses is said
    in one line, and the run trains afresh. An interrupted attempt leaves its own save as the next point;
    a finished one removes its points. ``checkpoint_s`` < 0 neither saves nor uses points.
    ConfigError: a fresh run that cannot start."""
    found = resume_point(folder) if checkpoint_s >= 0 else None
    if found is not None:
        model, before = found
        if before.get("replay") and (model.parent / before["replay"]).is_file():  # where -i reads it
            shutil.copyfile(model.parent / before["replay"], model.parent / REPLAY_BUFFER)
            write_replay_steps(model.parent, before["env_steps"])
        cfg = config_from_args(["-i", str(model), "--verbose", "0", "--device", fresh.device])
        before = {**before, "resumed_at": [*before.get("resumed_at", []), before["env_steps"]]}
        print(f"{label}: resumed at {before['env_steps']:,} env steps from {model}", flush=True)
    else:
        for run in folder.glob("*/*"):  # an unfinished attempt without a point: start over
            if run.is_dir():
                shutil.rmtree(run)
        cfg, before = fresh, {}
    start = time.perf_counter()
    keeper = SaveForResume(folder, checkpoint_s, before, start) if checkpoint_s >= 0 else None
    try:
        result = train(cfg, extra_callbacks=[*([keeper] if keeper else []), *extra_callbacks])
    except ConfigError as error:
        if found is None:
            raise
        print(f"{label}: cannot resume from {found[0]} ({error}); training afresh", flush=True)
        (found[0].parent / RESUME_FILE).replace(found[0].parent / f"{RESUME_FILE}.refused")
        return train_resumable(fresh, folder, label, extra_callbacks, checkpoint_s)
    if result.interrupted_by:
        # train.py's own save is the latest point, unless it holds the whole budget (interrupted in the last
        # update, the rollout counted but not learned from): -i would refuse it, the last point serves
        if keeper is not None and keeper.run is not None and result.timesteps < keeper.budget:
            keeper.write(result.model_path.name, None)
    else:
        for leftover in [*result.folder.glob("resume_*"), *result.folder.glob(f".{Path(RESUME_FILE).stem}*")]:
            leftover.unlink()
        (result.folder / RESUME_FILE).unlink(missing_ok=True)
    wall_s = before.get("wall_s", 0.0) + time.perf_counter() - start
    return Attempt(result, wall_s, list(before.get("resumed_at", [])))
