"""The callbacks of a training run: HPARAMS, atomic checkpoints and best model, resumable evaluation."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.logger import HParam
from stable_baselines3.common.vec_env import VecEnv

from agents import schedules
from agents.build import make_vec
from agents.plan import RunPlan
from agents.presets import env_family
from agents.runfolder import BEST_MODEL, save_atomic, save_replay_atomic
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


def steps_so_far(callback: BaseCallback) -> int:
    """The vectorised steps a resumed model has already taken (0 for a new one): a callback that counts its
    calls to act every N of them starts its count there, so a resumed run keeps the first run's schedule
    (evaluations and checkpoints at the same env steps as an uninterrupted run) instead of restarting it."""
    return callback.model.num_timesteps // callback.model.n_envs


class AtomicCheckpointCallback(BaseCallback):
    """Every ``save_freq`` env steps: ``rl_model_<steps>_steps.zip`` (and the replay buffer), atomically."""

    def __init__(self, save_freq: int, folder: Path, n_envs: int):
        super().__init__()
        self.every = max(save_freq // n_envs, 1)
        self.folder = folder

    def _on_training_start(self) -> None:
        self.n_calls = steps_so_far(self)

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
        save_atomic(self.model, self.folder / BEST_MODEL)
        return True


class ResumableEvalCallback(EvalCallback):
    """SB3's EvalCallback that can start from an earlier run's ``evaluations.npz`` (so it is extended, not
    overwritten), evaluating a resumed run at the env steps the first run's schedule gives."""

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


class LearnedSteps(BaseCallback):
    """The env steps the model has learned from: on-policy algorithms drop a half-collected rollout
    when interrupted, so the saved step counter leaves it out and a resumed run collects it again.
    Off-policy algorithms count a step before storing its transition; an interrupt in between leaves
    the step uncounted too (``stored_steps``), so the counter matches the saved replay buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.learned = 0
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

    def stored_steps(self) -> int:
        """The off-policy step counter without a last step whose transition the interrupt kept out of the buffer."""
        counted = self.model.num_timesteps
        if self._buffer is not None and self._step == (counted, self._buffer.pos):
            return counted - self.model.n_envs
        return counted


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
    callbacks: list[BaseCallback] = [HParamCallback({**hparams, **plan.algo_kwargs, **plan.extractor_kwargs})]
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
    if cfg.save_freq > 0:
        callbacks.append(AtomicCheckpointCallback(cfg.save_freq, folder, plan.n_envs))
    entropy = schedules.linear_start("ent_coef", plan.algo_kwargs.get("ent_coef"))
    if entropy is not None:
        callbacks.insert(0, schedules.EntropySchedule(entropy))
    return callbacks
