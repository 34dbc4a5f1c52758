"""One training run: the Zoo's folder layout, TensorBoard through SB3's logger, a final evaluation."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.logger import HParam, configure
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from agents.build import (
    ALGO_CLASSES,
    RunPlan,
    build_model,
    make_vec,
    resolve,
)
from agents.checks import check_model_file, first_line
from agents.config import ConfigError, TrainConfig
from agents.evaluate import EvalResult, evaluate
from agents.presets import env_family
from rlattn import AttentionLoggingCallback

EVAL_SEED_OFFSET = 10_000  # evaluation envs never share seeds with training envs
MAX_EVAL_ENVS = 32
"""evaluation episodes run side by side in up to this many envs, the policy acting on them in one batch"""
ATTENTION_EPISODES = 8
"""episodes (side by side) behind each evaluation's attention/ views"""


def eval_envs(episodes: int) -> int:
    """Envs for ``episodes`` evaluation episodes: one each, up to :data:`MAX_EVAL_ENVS`."""
    return max(1, min(episodes, MAX_EVAL_ENVS))


TARGET_KEYS = {
    "TMaze": "cue_step",
    "VisualSearch": "target_box",
    "CuedVisualSearch": "target_box",
    "GlimpseSearch": "target_box",
}
REPLAY_BUFFER = "replay_buffer.pkl"


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

    def summary(self) -> str:
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


def env_name(env_id: str) -> str:
    return env_id.replace("/", "-").replace(":", "-")


def new_run_folder(log_folder: str, algo: str, env_id: str) -> Path:
    """``LOG_FOLDER/ALGO/ENV_N`` with N one more than the latest run (the Zoo's layout)."""
    parent = Path(log_folder) / algo
    name = env_name(env_id)
    runs = [
        int(m.group(1)) for p in parent.glob(f"{name}_*") if (m := re.fullmatch(re.escape(name) + r"_(\d+)", p.name))
    ]
    folder = parent / f"{name}_{max(runs, default=0) + 1}"
    folder.mkdir(parents=True)
    return folder


class HParamCallback(BaseCallback):
    """Record the run's settings in TensorBoard's HPARAMS tab, linked to the eval metrics."""

    def __init__(self, hparams: dict[str, Any]):
        super().__init__()
        self.hparams = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}

    def _on_training_start(self) -> None:
        metrics = {"eval/success_rate": 0.0, "eval/mean_reward": 0.0, "attention/target_mass": 0.0}
        self.logger.record("hparams", HParam(self.hparams, metrics), exclude=("stdout", "log", "json", "csv"))

    def _on_step(self) -> bool:
        return True


def _write_run_info(folder: Path, plan: RunPlan) -> None:
    info_dir = folder / env_name(plan.config.env)
    info_dir.mkdir()
    (info_dir / "args.json").write_text(json.dumps(asdict(plan.config), indent=2, default=str) + "\n")
    resolved = {k: v for k, v in asdict(plan).items() if k != "config"}
    (info_dir / "config.json").write_text(json.dumps(resolved, indent=2, default=str) + "\n")
    (info_dir / "command.txt").write_text(shlex.join([sys.executable, *sys.argv]) + "\n")


def _write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """``write`` to a file beside ``path``, then rename it into place: a crash mid-write never leaves a
    broken file under the real name, and the last good one stays until the new one is complete."""
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def save_atomic(model: BaseAlgorithm, path: Path) -> Path:
    """The model as ``path`` (a .zip), atomically."""
    return _write_atomic(path, model.save)


def save_replay_atomic(model: BaseAlgorithm, folder: Path) -> Path | None:
    """Off-policy algorithms: the replay buffer as ``replay_buffer.pkl``, atomically; else nothing."""
    if not isinstance(model, OffPolicyAlgorithm):
        return None
    return _write_atomic(folder / REPLAY_BUFFER, model.save_replay_buffer)


class AtomicCheckpointCallback(BaseCallback):
    """Every ``save_freq`` env steps: ``rl_model_<steps>_steps.zip`` (and the replay buffer), atomically."""

    def __init__(self, save_freq: int, folder: Path, n_envs: int):
        super().__init__()
        self.every = max(save_freq // n_envs, 1)
        self.folder = folder

    def _on_step(self) -> bool:
        if self.n_calls % self.every == 0:
            save_atomic(self.model, self.folder / f"rl_model_{self.num_timesteps}_steps.zip")
            save_replay_atomic(self.model, self.folder)
        return True


class SaveBestCallback(BaseCallback):
    """Called by EvalCallback on a new best mean return: ``best_model.zip``, atomically."""

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = folder

    def _on_step(self) -> bool:
        save_atomic(self.model, self.folder / "best_model.zip")
        return True


class ResumableEvalCallback(EvalCallback):
    """SB3's EvalCallback that can start from an earlier run's ``evaluations.npz`` (so it is extended, not overwritten)."""

    def restore(self, path: Path) -> None:
        if not path.is_file():
            return
        with np.load(path) as saved:
            self.evaluations_timesteps = [int(t) for t in saved["timesteps"]]
            self.evaluations_results = [list(r) for r in saved["results"]]
            self.evaluations_length = [list(n) for n in saved["ep_lengths"]]
            if "successes" in saved:
                self.evaluations_successes = [list(s) for s in saved["successes"]]
        if self.evaluations_results:
            self.best_mean_reward = float(max(np.mean(r) for r in self.evaluations_results))


def _callbacks(plan: RunPlan, folder: Path, eval_env, resumed: bool) -> list[BaseCallback]:
    cfg = plan.config
    hparams = {
        "algo": cfg.algo,
        "env": cfg.env,
        "extractor": plan.extractor,
        "history": plan.history,
        "history_inputs": " ".join(plan.history_inputs) or "none",
        "seed": cfg.seed,
    }
    callbacks: list[BaseCallback] = [HParamCallback({**hparams, **plan.algo_kwargs, **plan.extractor_kwargs})]
    if cfg.eval_freq > 0:
        # evaluation runs its envs in-process whatever --vec-env says; SB3 warns about the mismatch
        warnings.filterwarnings("ignore", message="Training and eval env are not of the same type")
        attention = None
        if plan.extractor.endswith("attention"):
            attention = AttentionLoggingCallback(
                make_vec(plan, ATTENTION_EPISODES, cfg.seed + EVAL_SEED_OFFSET, evaluation=True),
                n_episodes=ATTENTION_EPISODES,
                target_key=TARGET_KEYS.get(env_family(cfg.env)),
                seed=cfg.seed + EVAL_SEED_OFFSET,
            )
        evaluation = ResumableEvalCallback(
            eval_env,
            callback_on_new_best=SaveBestCallback(folder),
            callback_after_eval=attention,
            n_eval_episodes=cfg.eval_episodes,
            eval_freq=max(cfg.eval_freq // plan.n_envs, 1),
            log_path=str(folder),
            best_model_save_path=None,
            deterministic=True,
            verbose=cfg.verbose,
        )
        if resumed:
            evaluation.restore(folder / "evaluations.npz")
        callbacks.append(evaluation)
    if cfg.save_freq > 0:
        callbacks.append(AtomicCheckpointCallback(cfg.save_freq, folder, plan.n_envs))
    return callbacks


class LearnedSteps(BaseCallback):
    """The env steps the model has learned from: on-policy algorithms drop a half-collected rollout
    when interrupted, so the saved step counter leaves it out and a resumed run collects it again."""

    def __init__(self) -> None:
        super().__init__()
        self.learned = 0

    def _on_training_start(self) -> None:
        self.learned = self.num_timesteps

    def _on_rollout_start(self) -> None:
        self.learned = self.num_timesteps

    def _on_rollout_end(self) -> None:
        self.learned = self.num_timesteps

    def _on_step(self) -> bool:
        return True


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into the same path as Ctrl-C: save, then stop."""


@contextmanager
def _signals_interrupt() -> Iterator[list[int]]:
    """While training, SIGINT and SIGTERM raise in the main thread; yields the signal received."""
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        received.append(signum)
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


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


def check_only_changes(cfg: TrainConfig, may_change: set[str], when: str) -> None:
    """Every flag outside ``may_change`` is at its default: the run's saved settings rule."""
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        if f.name not in may_change and getattr(cfg, f.name) != getattr(defaults, f.name):
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
    check_only_changes(cfg, {"trained_agent", "n_timesteps", "verbose", "progress", "device"}, "resuming (-i)")
    return replace(
        saved,
        trained_agent=str(file),
        n_timesteps=cfg.n_timesteps if cfg.n_timesteps is not None else saved.n_timesteps,
        verbose=cfg.verbose,
        progress=cfg.progress,
        device=cfg.device,
    )


def _load(plan: RunPlan, file: Path, venv: VecEnv) -> BaseAlgorithm:
    """The saved model on ``venv``, with its replay buffer where there is one."""
    try:
        model = ALGO_CLASSES[plan.config.algo].load(file, env=venv, device=plan.config.device)
    except Exception as error:
        raise ConfigError(f"-i {str(file)!r} cannot be loaded as {plan.config.algo}: {first_line(error)}") from None
    replay = file.parent / REPLAY_BUFFER
    if isinstance(model, OffPolicyAlgorithm) and replay.is_file():
        model.load_replay_buffer(replay)
    if model.num_timesteps >= plan.n_timesteps:
        raise ConfigError(
            f"-n {plan.n_timesteps} is invalid: {file} has already trained {model.num_timesteps} env steps; ask for a larger total"
        )
    return model


def _close(venv: VecEnv) -> None:
    try:
        venv.close()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # subprocess workers that an interrupt already stopped


def train(cfg: TrainConfig) -> RunResult:
    """Resolve, build (or load, with ``-i``), train, save and evaluate.

    Set-up problems raise ConfigError before any training and leave nothing behind. SIGINT (Ctrl-C)
    and SIGTERM save the model under the final name (and the replay buffer), then stop without the
    final evaluation; any other error during training saves ``crashed_model.zip`` and re-raises.
    Every save is atomic.
    """
    resumed = cfg.trained_agent is not None
    if resumed:
        cfg = resume_config(cfg)
    plan = resolve(cfg)
    if cfg.verbose and plan.env_kwargs != plan.eval_env_kwargs:
        print(f"training envs: {plan.env_kwargs}; evaluation envs: {plan.eval_env_kwargs}", flush=True)
    folder = Path(cfg.trained_agent).parent if resumed else new_run_folder(cfg.log_folder, cfg.algo, cfg.env)  # type: ignore[arg-type]
    envs: list = []
    try:
        envs.append(make_vec(plan, plan.n_envs, cfg.seed, monitor_dir=str(folder), append_monitor=resumed))
        envs.append(make_vec(plan, eval_envs(cfg.eval_episodes), cfg.seed + EVAL_SEED_OFFSET, evaluation=True))
        if resumed:
            model = _load(plan, Path(cfg.trained_agent), envs[0])  # type: ignore[arg-type]
        else:
            model = build_model(plan, envs[0])
            _write_run_info(folder, plan)
        tb_root = Path(cfg.tensorboard_log) / cfg.algo if cfg.tensorboard_log else None
        tb_dir = tb_root / folder.name if tb_root else folder
        if resumed:
            _keep_progress(folder, model.num_timesteps)
            with open(folder / env_name(cfg.env) / "command.txt", "a") as file:
                file.write(shlex.join([sys.executable, *sys.argv]) + "\n")
        model.set_logger(
            configure(str(tb_dir), ["stdout", "csv", "tensorboard"] if cfg.verbose else ["csv", "tensorboard"])
        )
        callbacks = _callbacks(plan, folder, envs[1], resumed)
    except BaseException:
        for env in envs:
            _close(env)
        if not resumed and folder.exists():
            shutil.rmtree(folder)  # a run that could not start leaves nothing behind
        raise
    venv, eval_env = envs
    start, started_at = time.perf_counter(), model.num_timesteps
    learned = LearnedSteps()
    with _signals_interrupt() as received:
        try:
            model.learn(
                plan.n_timesteps - model.num_timesteps,
                callback=[learned, *callbacks],
                progress_bar=cfg.progress,
                reset_num_timesteps=not resumed,
            )
        except KeyboardInterrupt:
            received = received or [signal.SIGINT]
            if not isinstance(model, OffPolicyAlgorithm):
                model.num_timesteps = learned.learned
        except BaseException:
            save_atomic(model, folder / "crashed_model.zip")
            save_replay_atomic(model, folder)
            _close(venv)
            raise
        final = save_atomic(model, folder / f"{env_name(cfg.env)}.zip")
        save_replay_atomic(model, folder)
    elapsed = time.perf_counter() - start
    speed = (model.num_timesteps - started_at) / max(elapsed, 1e-9)
    _close(venv)
    if received:
        _close(eval_env)
        return RunResult(folder, None, model.num_timesteps, speed, signal.Signals(received[0]).name, final)
    result = evaluate(model, eval_env, cfg.eval_episodes)
    _close(eval_env)
    return RunResult(folder, result, model.num_timesteps, speed, None, final)


def _keep_progress(folder: Path, timesteps: int) -> None:
    """SB3's CSV logger starts progress.csv afresh: keep the earlier part under its step count."""
    progress = folder / "progress.csv"
    if progress.is_file():
        os.replace(progress, folder / f"progress_until_{timesteps}.csv")
