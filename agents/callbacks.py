"""The callbacks of a training run: HPARAMS, atomic checkpoints and best model, resumable evaluation."""

from __future__ import annotations

import os
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback
from stable_baselines3.common.logger import HParam
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from agents import schedules
from agents.build import make_vec
from agents.checks import first_line
from agents.config import ConfigError
from agents.evaluate import success_flags
from agents.plan import RunPlan
from agents.presets import env_family
from agents.runfolder import BEST_MODEL, save_atomic, save_replay_atomic, write_atomic
from rlattn import AttentionLoggingCallback

EVAL_SEED_OFFSET = 10_000  # evaluation envs never share seeds with training envs
ATTENTION_EPISODES = 8
"""episodes (side by side) behind each evaluation's attention/ views"""
TARGET_KEYS = {
    "TMaze": "cue_step",
    "VisualSearch": "target_box",
    "CuedVisualSearch": "target_box",
    "GlimpseSearch": "target_box",
}
"""the ``info`` key of what the agent should attend to, per env family"""
FINAL_TAGS = ("eval/final_mean_reward", "eval/final_success_rate")
"""where the run's final evaluation goes in TensorBoard (the curves' ``eval/`` tags are the periodic ones)"""


class HParamCallback(BaseCallback):
    """Record the run's settings in TensorBoard's HPARAMS tab, linked to the metrics the run logs
    (``metrics``: their tags; a column the run never fills would stay empty in the tab)."""

    def __init__(self, hparams: dict[str, Any], metrics: Sequence[str] = ("rollout/ep_rew_mean",)):
        super().__init__()
        if not metrics:
            raise ValueError("HParamCallback needs at least one metric tag for TensorBoard's HPARAMS tab")
        self.hparams = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
        self.metrics = tuple(metrics)

    def _on_training_start(self) -> None:
        metrics = dict.fromkeys(self.metrics, 0.0)
        self.logger.record("hparams", HParam(self.hparams, metrics), exclude=("stdout", "log", "json", "csv"))

    def _on_step(self) -> bool:
        return True


def steps_so_far(callback: BaseCallback) -> int:
    """The vectorised steps a resumed model has already taken (0 for a new one): a callback that counts its
    calls to act every N of them starts its count there, so a resumed run keeps the first run's schedule
    (evaluations and checkpoints at the same env steps as an uninterrupted run) instead of restarting it."""
    return callback.model.num_timesteps // callback.model.n_envs


class AtomicCheckpointCallback(BaseCallback):
    """Every ``save_freq`` env steps: ``rl_model_<steps>_steps.zip`` (and the replay buffer), atomically.

    On-policy algorithms learn only at the end of a rollout, so their checkpoint waits for the next
    rollout's start: the weights then have learned from every step the file's counter holds (a
    checkpoint taken mid-rollout would say 50,000 steps for weights of 49,152, and a run resumed from
    it would skip the difference). Its name gives that count (with 8 envs of 128 steps: 50,176).
    Off-policy algorithms store a step's transition after the step's callbacks, so theirs waits for the
    rollout's end (``train_freq`` steps): the replay buffer then holds every step counted.
    """

    def __init__(self, save_freq: int, folder: Path, n_envs: int):
        super().__init__()
        self.every = max(save_freq // n_envs, 1)
        self.folder = folder
        self._due = False

    def _on_training_start(self) -> None:
        self.n_calls = steps_so_far(self)

    def _on_step(self) -> bool:
        if self.n_calls % self.every == 0:
            self._due = True
        return True

    def _on_rollout_start(self) -> None:
        if self._due and isinstance(self.model, OnPolicyAlgorithm):
            self._due = False
            self._save()

    def _on_rollout_end(self) -> None:
        if self._due and not isinstance(self.model, OnPolicyAlgorithm):
            self._due = False
            self._save()

    def _save(self) -> None:
        save_atomic(self.model, self.folder / f"rl_model_{self.num_timesteps}_steps.zip")
        save_replay_atomic(self.model, self.folder)


class SaveBestCallback(BaseCallback):
    """Called by EvalCallback on a new best mean return: ``best_model.zip``, atomically."""

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = folder

    def _on_step(self) -> bool:
        save_atomic(self.model, self.folder / BEST_MODEL)
        return True


class ResumableEvalCallback(EvalCallback):
    """SB3's EvalCallback that can start from an earlier run's ``evaluations.npz`` (so it is extended, not
    overwritten), evaluating a resumed run at the env steps the first run's schedule gives."""

    _counted: list | None = None
    """the success list of the evaluation under way (SB3's ``_is_success_buffer``)"""
    _ended: list[Any] = []
    """``is_success`` (None where missing) of each episode that evaluation has ended"""
    reports_success = False
    """the env has reported ``is_success`` at some episode's end (this run's evaluations or the resumed run's)"""

    def _on_training_start(self) -> None:
        super()._on_training_start()
        self.n_calls = steps_so_far(self)
        # evaluations after the step this run goes on from (a checkpoint older than the run's end) belong to
        # a stretch that is trained again: dropped, so the curve holds each step once and in order
        keep = sum(t <= self.model.num_timesteps for t in self.evaluations_timesteps)
        if keep < len(self.evaluations_timesteps):
            for name in ("evaluations_timesteps", "evaluations_results", "evaluations_length", "evaluations_successes"):
                setattr(self, name, getattr(self, name)[:keep])
            means = [float(np.mean(r)) for r in self.evaluations_results]
            self.best_mean_reward = max(means, default=-np.inf)
            self._write_kept()

    def _write_kept(self) -> None:
        """``evaluations.npz`` cut to the evaluations kept (as SB3 writes it), so that what is read from the
        run's files before its next evaluation is the curve it goes on from."""
        if self.log_path is None:
            return
        timesteps, results = np.asarray(self.evaluations_timesteps), np.asarray(self.evaluations_results)
        lengths, successes = np.asarray(self.evaluations_length), np.asarray(self.evaluations_successes)

        def save(target: Path) -> None:
            if successes.size:
                np.savez(target, timesteps=timesteps, results=results, ep_lengths=lengths, successes=successes)
            else:
                np.savez(target, timesteps=timesteps, results=results, ep_lengths=lengths)

        write_atomic(Path(self.log_path).with_suffix(".npz"), save)

    def _log_success_callback(self, locals_: dict[str, Any], globals_: dict[str, Any]) -> None:
        """SB3's, but an episode that ends without ``is_success`` where others report it is a failure
        (``success_flags``): SB3 leaves it out, and an env that reports its successes only read 1.00."""
        if not locals_["done"]:
            return
        if self._is_success_buffer is not self._counted:  # SB3 starts each evaluation with a new list
            self._counted, self._ended = self._is_success_buffer, []
        flag = locals_["info"].get("is_success")
        self._ended.append(flag)
        if flag is not None and not self.reports_success:
            self.reports_success = True
            self._fill_earlier_successes()
        self._is_success_buffer[:] = success_flags(self._ended, self.reports_success)

    def _fill_earlier_successes(self) -> None:
        """Once the env has reported ``is_success``, the evaluations before that report (which SB3 gave no
        success list) count as failures, as :func:`success_flags` counts an episode ended without it: so
        ``evaluations.npz`` holds a success row for every evaluation, aligned with its timesteps."""
        missing = len(self.evaluations_results) - len(self.evaluations_successes)
        if missing > 0:
            earlier = [[False] * len(results) for results in self.evaluations_results[:missing]]
            self.evaluations_successes = [*earlier, *self.evaluations_successes]

    def _on_step(self) -> bool:
        """SB3's step, its ``evaluations.npz`` written beside the real one and renamed into place."""
        if self.log_path is None or not (self.eval_freq > 0 and self.n_calls % self.eval_freq == 0):
            return super()._on_step()
        real = Path(self.log_path).with_suffix(".npz")
        partial = real.with_name(f".{real.stem}.partial.npz")
        self.log_path = str(partial)
        try:
            go_on = super()._on_step()
            if partial.is_file():
                os.replace(partial, real)
        finally:
            self.log_path = str(real.with_suffix(""))
            partial.unlink(missing_ok=True)
        return go_on

    def restore(self, path: Path) -> None:
        """The evaluations of the run being resumed; one line if the file cannot be read."""
        saved = read_evaluations(path)
        if saved is None:
            return
        timesteps, results, lengths, successes = saved
        self.evaluations_timesteps, self.evaluations_results, self.evaluations_length = timesteps, results, lengths
        if successes is not None:
            self.evaluations_successes = successes
            self.reports_success = any(len(s) for s in successes)
            if self.reports_success:
                self._fill_earlier_successes()
        if self.evaluations_results:
            self.best_mean_reward = float(max(np.mean(r) for r in self.evaluations_results))


def read_evaluations(path: Path) -> tuple[list[int], list[list], list[list], list[list] | None] | None:
    """A run's ``evaluations.npz``: timesteps, results, episode lengths and successes (None where the file
    has none); None when there is no file. ConfigError (one line) when it cannot be read or does not add up:
    a resume checks it before it changes anything in the run folder."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as saved:
            timesteps = [int(t) for t in saved["timesteps"]]
            results = [list(r) for r in saved["results"]]
            lengths = [list(n) for n in saved["ep_lengths"]]
            successes = [list(s) for s in saved["successes"]] if "successes" in saved else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise ConfigError(
            f"{path} cannot be read ({first_line(error)}): move it aside to resume without the earlier evaluations"
        ) from None
    if not len(timesteps) == len(results) == len(lengths):
        raise ConfigError(
            f"{path} is inconsistent ({len(timesteps)} steps, {len(results)} results, {len(lengths)} lengths): "
            "move it aside to resume without the earlier evaluations"
        )
    return timesteps, results, lengths, successes


class OutsideTraining(CallbackList):
    """The run's callbacks (evaluations, attention views, checkpoints, a sweep's resume points), with the
    seconds spent in them: a run's env steps/s counts the time of training alone, as its tables say."""

    def __init__(self, callbacks: Sequence[BaseCallback]) -> None:
        super().__init__(list(callbacks))
        self.seconds = 0.0
        """seconds spent in the callbacks so far"""

    def _timed(self, hook: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return hook()
        finally:
            self.seconds += time.perf_counter() - start

    def _on_training_start(self) -> None:
        self._timed(super()._on_training_start)

    def _on_rollout_start(self) -> None:
        self._timed(super()._on_rollout_start)

    def _on_step(self) -> bool:
        return bool(self._timed(super()._on_step))

    def _on_rollout_end(self) -> None:
        self._timed(super()._on_rollout_end)

    def _on_training_end(self) -> None:
        self._timed(super()._on_training_end)


class LearnedSteps(BaseCallback):
    """The env steps the model has learned from: on-policy algorithms drop a half-collected rollout
    when interrupted, so the saved step counter leaves it out and a resumed run collects it again.
    Off-policy algorithms count a step before storing its transition; an interrupt in between leaves
    the step uncounted too (``saved_steps``), so the counter matches the saved replay buffer."""

    def __init__(self, start: int = 0) -> None:
        super().__init__()
        self.learned = start
        """the model's step counter when training starts (a resumed run's), until the callback sees it"""
        self._buffer: Any = None
        """the off-policy model's replay buffer (None on-policy)"""
        self._step: tuple[int, int] | None = None
        """(the step counter, the replay buffer's write position) when the last step was counted"""

    def _on_training_start(self) -> None:
        self.learned = self.num_timesteps
        self._buffer = getattr(self.model, "replay_buffer", None)

    def _on_rollout_start(self) -> None:
        self.learned = self.num_timesteps

    def _on_rollout_end(self) -> None:
        self.learned = self.num_timesteps

    def _on_step(self) -> bool:
        if self._buffer is not None:
            self._step = (self.num_timesteps, self._buffer.pos)
        return True

    def saved_steps(self) -> int:
        """The step counter to save a model with after an interrupt or a crash: on-policy, the steps learned
        from; off-policy, the steps counted without a last one whose transition was kept out of the buffer."""
        if getattr(self, "model", None) is None:  # stopped before training started: nothing new
            return self.learned
        if not isinstance(self.model, OffPolicyAlgorithm):
            return self.learned
        counted = self.model.num_timesteps
        if self._buffer is not None and self._step == (counted, self._buffer.pos):
            return counted - self.model.n_envs
        return counted


def _scores_target(plan: RunPlan, key: str) -> bool:
    """Whether the run's attention views can weigh the target: a step (``cue_step``) any history or memory
    can; a box in a frame only a readout over patches (an image extractor, or a memory's look after it)."""
    if key != "target_box":
        return True
    algo = plan.algo_entry
    if not algo.own_extractors:
        return plan.extractor_entry.inputs == "image"
    _, encoder = algo.frame_encoders.get(plan.extractor, (None, None))
    return callable(getattr(encoder, "look", None))


def run_callbacks(plan: RunPlan, folder: Path, eval_env: VecEnv, resumed: bool) -> list[BaseCallback]:
    """HPARAMS, evaluation (with attention logging where the extractor has it, saving the best model) and checkpoints."""
    cfg = plan.config
    hparams = {
        "algo": cfg.algo,
        "env": cfg.env,
        "extractor": plan.extractor,
        "history": plan.history,
        "history_inputs": " ".join(plan.history_inputs) or "none",
        "seed": cfg.seed,
        "normalize_reward": plan.normalize_reward,
    }
    callbacks: list[BaseCallback] = []
    metrics = ["rollout/ep_rew_mean"]
    if cfg.eval_freq > 0:
        # evaluation runs its envs in-process whatever --vec-env says; SB3 warns about the mismatch
        warnings.filterwarnings("ignore", message="Training and eval env are not of the same type")
        attention = None
        if plan.extractor_entry.logs_attention or plan.algo_entry.logs_attention:
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
        metrics.append("eval/mean_reward")
        if env_family(cfg.env) in TARGET_KEYS:  # the package's envs report is_success; others may not
            metrics.append("eval/success_rate")
        if attention is not None and attention.target_key is not None and _scores_target(plan, attention.target_key):
            metrics.append("attention/target_mass")
    # the final evaluation (train.py's last line, result.json), logged when the run ends
    metrics += [FINAL_TAGS[0]] + ([FINAL_TAGS[1]] if env_family(cfg.env) in TARGET_KEYS else [])
    callbacks.insert(0, HParamCallback({**hparams, **plan.algo_kwargs, **plan.extractor_kwargs}, metrics))
    if cfg.save_freq > 0:
        callbacks.append(AtomicCheckpointCallback(cfg.save_freq, folder, plan.n_envs))
    entropy = schedules.linear_start("ent_coef", plan.algo_kwargs.get("ent_coef"))
    if entropy is not None:
        callbacks.insert(0, schedules.EntropySchedule(entropy))
    return callbacks
