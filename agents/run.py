"""One training run: resolve, build or resume, train with interrupt-safe saves, evaluate, write the result file."""

from __future__ import annotations

import inspect
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import TensorBoardOutputFormat, configure
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from agents.build import build_model, make_vec
from agents.callbacks import (
    EVAL_SEED_OFFSET,
    FINAL_TAGS,
    LearnedSteps,
    OutsideTraining,
    read_evaluations,
    run_callbacks,
)
from agents.checks import check_model_file, first_line
from agents.config import ConfigError, TrainConfig
from agents.evaluate import EvalResult, evaluate
from agents.plan import RunPlan, preflight, resolve
from agents.registry import ALGOS
from agents.runfolder import (
    CRASHED_MODEL,
    TENSORBOARD_NOTE,
    append_command,
    as_started,
    evaluation_record,
    final_model,
    keep_progress,
    load_run_config,
    new_run_folder,
    normalization_file,
    replay_buffer_for,
    save_atomic,
    save_replay_atomic,
    tensorboard_folder,
    trim_events,
    write_result,
    write_run_info,
)
from rlattn import AttentionLoggingCallback

MAX_EVAL_ENVS = 32
"""evaluation episodes run side by side in up to this many envs, the policy acting on them in one batch"""


def eval_envs(episodes: int) -> int:
    """Envs for ``episodes`` evaluation episodes: one each, up to :data:`MAX_EVAL_ENVS`."""
    return max(1, min(episodes, MAX_EVAL_ENVS))


@dataclass(frozen=True)
class RunResult:
    folder: Path
    evaluation: EvalResult | None
    """None when the run was interrupted (no final evaluation)"""
    timesteps: int
    steps_per_second: float
    interrupted_by: str | None
    """the signal's name (SIGINT, SIGTERM) when the run was interrupted"""
    model_path: Path
    trained_all: bool = False
    """every env step asked for was trained (an interrupt came after training, while saving or evaluating)"""

    def summary(self) -> str:
        if self.interrupted_by and self.trained_all:
            return (
                f"interrupted ({self.interrupted_by}) after training all {self.timesteps} env steps, before the final "
                f"evaluation: model saved to {self.model_path}; evaluate it with: python train.py --replay {self.model_path}"
            )
        if self.interrupted_by:
            return (
                f"interrupted ({self.interrupted_by}) at {self.timesteps} env steps: model saved to {self.model_path}; "
                f"resume with: python train.py -i {self.model_path}"
            )
        return f"done: {self.evaluation} | {self.steps_per_second:.0f} env steps/s | run folder {self.folder}"

    @property
    def exit_code(self) -> int:
        """0, or 128 + the signal's number as shells report it (130 for Ctrl-C, 143 for SIGTERM)."""
        return 128 + int(signal.Signals[self.interrupted_by]) if self.interrupted_by else 0


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into the same path as Ctrl-C: save, then stop."""


class _Signals:
    """SIGINT and SIGTERM: while ``raising`` (training, the final evaluation) each raises
    :class:`Interrupted` in the main thread; otherwise (saving) it is only noted, so a second Ctrl-C
    cannot cut a save short. ``received`` holds every signal seen, first first."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.raising = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        name = signal.Signals(signum).name
        if self.raising:
            raise Interrupted(name)
        print(f"{name} received: the model is being saved, then the run stops", file=sys.stderr, flush=True)

    @contextmanager
    def armed(self) -> Iterator[None]:
        """Signals raise inside the block (one that came before raises at once) and are only noted after
        it; a KeyboardInterrupt from elsewhere is recorded as SIGINT."""
        self.raising = True
        try:
            if self.received:
                raise Interrupted(signal.Signals(self.received[0]).name)
            yield
        except KeyboardInterrupt:
            if not self.received:
                self.received.append(signal.SIGINT)
            raise
        finally:
            self.raising = False

    @property
    def first(self) -> str | None:
        return signal.Signals(self.received[0]).name if self.received else None


RESUME_FLAGS = {"trained_agent", "n_timesteps", "verbose", "progress", "device"}
"""what ``-i`` may be given with (the run's saved settings rule the rest)"""
REPLAY_FLAGS = {"replay", "episodes", "video", "seed", "device", "verbose"}
"""what ``--replay`` may be given with"""


def check_only_changes(cfg: TrainConfig, may_change: set[str], when: str, given: set[str] | None = None) -> None:
    """Every flag outside ``may_change`` is at its default: the run's saved settings rule. ``given``: the
    flags typed on the command line (a flag typed with its default value counts too)."""
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        typed = given is not None and f.name in given
        if f.name not in may_change and (typed or getattr(cfg, f.name) != getattr(defaults, f.name)):
            allowed = ", ".join(g.metadata["flags"][-1] for g in fields(TrainConfig) if g.name in may_change)
            raise ConfigError(
                f"{f.metadata['flags'][-1]} cannot be given when {when}: the run's saved settings are used; allowed are {allowed}"
            )


def resume_config(cfg: TrainConfig) -> TrainConfig:
    """The settings of the run that ``cfg.trained_agent`` belongs to, with the few a resume may change.

    ``-n`` is the total to reach (default: the run's own); ``--verbose``, ``-P`` and ``--device`` may
    change; any other flag must be left at its default.
    """
    file = check_model_file(cfg.trained_agent or "")
    saved = load_run_config(file.parent, f"-i {cfg.trained_agent!r}")
    check_only_changes(cfg, RESUME_FLAGS, "resuming (-i)")
    # where the run is now (a run folder moved or copied from another machine keeps working): its log
    # folder is the one holding it, and its TensorBoard folder the one it noted (see tensorboard_folder)
    noted = (file.parent / TENSORBOARD_NOTE).is_file()
    return replace(
        saved,
        log_folder=str(file.parent.parent.parent),
        tensorboard_log=None if noted else saved.tensorboard_log,
        trained_agent=str(file),
        n_timesteps=cfg.n_timesteps if cfg.n_timesteps is not None else saved.n_timesteps,
        verbose=cfg.verbose,
        progress=cfg.progress,
        device=cfg.device,
    )


def _load(plan: RunPlan, file: Path, venv: VecEnv) -> BaseAlgorithm:
    """The saved model on ``venv``, with its replay buffer where there is one."""
    try:
        model = ALGOS[plan.config.algo].cls.load(file, env=venv, device=plan.config.device)
    except Exception as error:
        raise ConfigError(f"-i {str(file)!r} cannot be loaded as {plan.config.algo}: {first_line(error)}") from None
    if isinstance(model, OffPolicyAlgorithm):
        replay = replay_buffer_for(model, file.parent)
        if replay is not None:
            try:
                model.load_replay_buffer(replay)
            except Exception as error:  # cut short, or not a replay buffer: pickle and numpy may raise anything
                raise ConfigError(
                    f"{replay} cannot be read ({type(error).__name__}: {first_line(error)}): move it aside to resume "
                    "with an empty replay buffer"
                ) from None
    normalization = model.get_vec_normalize_env()
    if normalization is not None:
        restore_normalization(normalization, normalization_file(file))
    if model.num_timesteps >= plan.n_timesteps:
        raise ConfigError(
            f"-n {plan.n_timesteps} is invalid: {file} has already trained {model.num_timesteps} env steps; ask for a larger total"
        )
    return model


def restore_normalization(normalization: VecNormalize, path: Path) -> None:
    """The running statistics saved beside a model, into the resumed run's ``VecNormalize``."""
    if not path.is_file():
        warnings.warn(f"{path} is missing: the reward normalization starts its statistics afresh", stacklevel=2)
        return
    try:
        saved = VecNormalize.load(str(path), normalization.venv)
    except Exception as error:  # cut short, or not VecNormalize's: pickle may raise anything
        raise ConfigError(
            f"{path} cannot be read ({type(error).__name__}: {first_line(error)}): move it aside to resume with the "
            "reward normalization's statistics started afresh"
        ) from None
    normalization.ret_rms = saved.ret_rms  # observations are not normalized: the return's spread is all there is


def _close(venv: VecEnv) -> None:
    try:
        venv.close()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # subprocess workers that an interrupt already stopped


def _start(plan: RunPlan, resumed: bool) -> tuple[Path, BaseAlgorithm, VecEnv, VecEnv, list]:
    """The run folder, the model (built, or loaded with ``-i``), training and evaluation envs, callbacks.

    A run that cannot start leaves nothing behind: a new run's folders are removed (with every folder
    above it that this run made), and a resume checks everything that can refuse it before it changes
    anything in the run folder.
    """
    cfg = plan.config
    # folders this run makes above its run folder (LOG/ALGO, TB/ALGO and each missing one above them): removed
    # again if it cannot start
    above = [Path(cfg.log_folder) / cfg.algo, *([Path(cfg.tensorboard_log) / cfg.algo] if cfg.tensorboard_log else [])]
    made = missing_folders(above)
    folder = Path(cfg.trained_agent).parent if resumed else new_run_folder(cfg.log_folder, cfg.algo, cfg.env)  # type: ignore[arg-type]
    monitors = set(folder.glob("*.monitor.csv"))  # a resume appends to these (and makes those missing)
    envs: list[VecEnv] = []
    tb_dir: Path | None = None
    try:
        envs.append(make_vec(plan, plan.n_envs, cfg.seed, monitor_dir=str(folder), append_monitor=resumed))
        envs.append(make_vec(plan, eval_envs(cfg.eval_episodes), cfg.seed + EVAL_SEED_OFFSET, evaluation=True))
        if resumed:
            model = _load(plan, Path(cfg.trained_agent), envs[0])  # type: ignore[arg-type]
            if cfg.eval_freq > 0:  # read again by the evaluation callback: checked before the folder changes
                read_evaluations(folder / "evaluations.npz")
            keep_progress(folder, model.num_timesteps)
            append_command(folder, cfg.env)
        else:
            model = build_model(plan, envs[0])
            write_run_info(folder, plan)
        tb_dir, own_events, settle = tensorboard_folder(folder, cfg.tensorboard_log, cfg.algo, resumed)
        if resumed and tb_dir != folder:  # SB3 writes progress.csv beside the events: the earlier one kept
            keep_progress(tb_dir, model.num_timesteps)
        outputs = ["stdout", "csv", "tensorboard"] if cfg.verbose else ["csv", "tensorboard"]
        model.set_logger(configure(str(tb_dir), outputs))
        callbacks = run_callbacks(plan, folder, envs[1], resumed)
        settle()  # where the events go, noted once the run can go on
        if resumed and own_events:  # the points it will log again leave the earlier files
            trim_events(tb_dir, model.num_timesteps)
    except BaseException:
        for env in envs:
            _close(env)
        if resumed:  # the monitor files this attempt made (empty: nothing was trained)
            for monitor in set(folder.glob("*.monitor.csv")) - monitors:
                monitor.unlink(missing_ok=True)
        else:
            for path in (folder, tb_dir if tb_dir != folder else None):
                if path is not None and path.exists():
                    shutil.rmtree(path)
            for path in made:  # deepest first; left where anything else is in them (another run's)
                try:
                    path.rmdir()
                except OSError:
                    pass
        raise
    return folder, model, envs[0], envs[1], callbacks


def missing_folders(paths: Sequence[Path]) -> list[Path]:
    """Each of ``paths`` that does not exist and every missing folder above it, deepest first (no repeats)."""
    missing: dict[Path, None] = {}
    for path in paths:
        for folder in (path, *path.parents):
            if folder.exists():
                break
            missing[folder] = None
    return sorted(missing, key=lambda folder: len(folder.absolute().parts), reverse=True)


LOG_STEPS = 1024
"""env steps between an on-policy run's ``rollout/`` and ``time/`` points at least (where its rollouts are shorter)"""


def log_every(model: BaseAlgorithm) -> dict[str, Any]:
    """``learn``'s ``log_interval`` for algorithms whose default leaves long gaps in the curves: A2C logs
    every 100 rollouts (12,800 env steps with 16 steps x 8 envs); here every :data:`LOG_STEPS` env steps."""
    default = inspect.signature(model.learn).parameters["log_interval"].default
    if not isinstance(model, OnPolicyAlgorithm) or default <= 1:
        return {}
    return {"log_interval": max(1, LOG_STEPS // (model.n_steps * model.n_envs))}


def log_final(model: BaseAlgorithm, result: EvalResult) -> None:
    """The final evaluation in TensorBoard, at the run's last step: written to the TensorBoard output
    alone (a dump through SB3's logger would also print an empty table and add a blank CSV row, and
    flush the last update's values, which SB3 leaves unwritten, at a step already written)."""
    values = {FINAL_TAGS[0]: result.mean_return}
    if result.success_rate is not None:
        values[FINAL_TAGS[1]] = result.success_rate
    for output in model.logger.output_formats:
        if isinstance(output, TensorBoardOutputFormat):
            output.write(values, dict.fromkeys(values, ()), model.num_timesteps)


def train(cfg: TrainConfig, extra_callbacks: Sequence[BaseCallback] = ()) -> RunResult:
    """Resolve, build (or load, with ``-i``), train, save, evaluate and write ``result.json``.

    Set-up problems raise ConfigError before any training and leave nothing behind. SIGINT (Ctrl-C)
    and SIGTERM save the model under the final name (and the replay buffer), then stop without the
    final evaluation (one during that evaluation leaves it out); any other error during training saves
    ``crashed_model.zip`` and re-raises. Signals that come while saving are noted and wait for the save
    to finish. Every save is atomic. ``extra_callbacks`` run after the run's own (evaluation among them).
    """
    resumed = cfg.trained_agent is not None
    defaults = TrainConfig()
    for flag, given in (("--episodes", cfg.episodes != defaults.episodes), ("--video", cfg.video != defaults.video)):
        if given and not resumed:  # (-i refuses them with the rest of the flags it cannot change)
            raise ConfigError(f"{flag} is invalid when training: it goes with --replay RUN (see --help)")
    if resumed:
        cfg = resume_config(cfg)
    plan = resolve(cfg)
    if resumed:
        plan = as_started(plan, Path(cfg.trained_agent).parent, total=cfg.n_timesteps is None)  # type: ignore[arg-type]
    preflight(plan)
    if cfg.verbose and plan.env_kwargs != plan.eval_env_kwargs:
        print(f"training envs: {plan.env_kwargs}; evaluation envs: {plan.eval_env_kwargs}", flush=True)
    folder, model, venv, eval_env, callbacks = _start(plan, resumed)
    with _Signals() as signals:  # at once: a Ctrl-C from here on saves the model
        start, started_at = time.perf_counter(), model.num_timesteps
        learned = LearnedSteps(started_at)
        outside = OutsideTraining([*callbacks, *extra_callbacks])
        try:
            with signals.armed():
                model.learn(
                    plan.n_timesteps - model.num_timesteps,
                    callback=[learned, outside],
                    progress_bar=cfg.progress,
                    reset_num_timesteps=not resumed,
                    **log_every(model),
                )
        except KeyboardInterrupt:
            model.num_timesteps = learned.saved_steps()
        except BaseException:
            model.num_timesteps = learned.saved_steps()
            save_atomic(model, folder / CRASHED_MODEL)
            save_replay_atomic(model, folder)
            _close(venv)
            raise
        elapsed = time.perf_counter() - start  # learn's time: the saves below are not in it
        # training alone: evaluations and the other callbacks' time left out (wall_seconds has them)
        speed = (model.num_timesteps - started_at) / max(elapsed - outside.seconds, 1e-9)
        final = save_atomic(model, final_model(folder, cfg.env))
        save_replay_atomic(model, folder)
        _close(venv)
        result = None
        trained_all = model.num_timesteps >= plan.n_timesteps
        if not signals.received:
            try:
                with signals.armed():
                    reports = any(getattr(c, "reports_success", False) for c in callbacks)
                    result = evaluate(model, eval_env, cfg.eval_episodes, reports=reports)
                log_final(model, result)
            except KeyboardInterrupt:  # during the final evaluation: the model is saved, the evaluation left out
                pass
        _close(eval_env)
        for callback in callbacks:  # the attention views' own envs (train.py made them)
            after = getattr(callback, "callback", None)
            if isinstance(after, AttentionLoggingCallback):
                _close(after.env)
        interrupted = signals.first
        record = {
            "env_steps": model.num_timesteps,
            "steps_per_second": speed,
            "wall_seconds": elapsed,
            "outside_training_seconds": outside.seconds,
            "interrupted_by": interrupted,
            "evaluation": evaluation_record(result),
        }
        write_result(folder, plan, record)
    return RunResult(folder, result, model.num_timesteps, speed, interrupted, final, trained_all)
