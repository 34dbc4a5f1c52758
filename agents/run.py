"""One training run: the Zoo's folder layout, TensorBoard through SB3's logger, a final evaluation."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback
from stable_baselines3.common.logger import HParam, configure

from agents.build import RunPlan, build_model, make_single, make_vec, resolve
from agents.config import TrainConfig
from agents.evaluate import EvalResult, evaluate
from agents.presets import env_family
from rlattn import AttentionLoggingCallback

EVAL_SEED_OFFSET = 10_000  # evaluation envs never share seeds with training envs
TARGET_KEYS = {"TMaze": "cue_step"}


@dataclass(frozen=True)
class RunResult:
    folder: Path
    evaluation: EvalResult
    timesteps: int
    steps_per_second: float
    interrupted: bool

    def summary(self) -> str:
        stopped = " (interrupted)" if self.interrupted else ""
        return f"done{stopped}: {self.evaluation} | {self.steps_per_second:.0f} env steps/s | run folder {self.folder}"


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


def _callbacks(plan: RunPlan, folder: Path, eval_env) -> list[BaseCallback]:
    cfg = plan.config
    hparams = {"algo": cfg.algo, "env": cfg.env, "extractor": plan.extractor, "history": plan.history, "seed": cfg.seed}
    callbacks: list[BaseCallback] = [HParamCallback({**hparams, **plan.algo_kwargs, **plan.extractor_kwargs})]
    if cfg.eval_freq > 0:
        attention = None
        if plan.extractor.endswith("attention"):
            attention = AttentionLoggingCallback(
                make_single(plan), target_key=TARGET_KEYS.get(env_family(cfg.env)), seed=cfg.seed + EVAL_SEED_OFFSET
            )
        callbacks.append(
            EvalCallback(
                eval_env,
                callback_after_eval=attention,
                n_eval_episodes=cfg.eval_episodes,
                eval_freq=max(cfg.eval_freq // plan.n_envs, 1),
                log_path=str(folder),
                best_model_save_path=str(folder),
                deterministic=True,
                verbose=cfg.verbose,
            )
        )
    if cfg.save_freq > 0:
        callbacks.append(
            CheckpointCallback(
                max(cfg.save_freq // plan.n_envs, 1), str(folder), name_prefix="rl_model", verbose=cfg.verbose
            )
        )
    return callbacks


def train(cfg: TrainConfig) -> RunResult:
    """Resolve, build, train, save and evaluate. Set-up problems raise ConfigError before any training.

    Ctrl-C saves the model under the final name and still evaluates it; any other error during
    training saves it as ``crashed_model.zip`` (next to the periodic checkpoints) and re-raises.
    """
    plan = resolve(cfg)
    folder = new_run_folder(cfg.log_folder, cfg.algo, cfg.env)
    envs: list = []
    try:
        envs.append(make_vec(plan, plan.n_envs, cfg.seed, monitor_dir=str(folder)))
        envs.append(make_vec(plan, 1, cfg.seed + EVAL_SEED_OFFSET))
        model = build_model(plan, envs[0])
        _write_run_info(folder, plan)
        tb_dir = Path(cfg.tensorboard_log) / folder.relative_to(cfg.log_folder) if cfg.tensorboard_log else folder
        model.set_logger(
            configure(str(tb_dir), ["stdout", "csv", "tensorboard"] if cfg.verbose else ["csv", "tensorboard"])
        )
        callbacks = _callbacks(plan, folder, envs[1])
    except BaseException:
        for env in envs:
            env.close()
        shutil.rmtree(folder)  # a run that could not start leaves nothing behind
        raise
    venv, eval_env = envs
    start, interrupted = time.perf_counter(), False
    try:
        model.learn(plan.n_timesteps, callback=callbacks, progress_bar=cfg.progress)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:
        model.save(folder / "crashed_model")
        raise
    model.save(folder / env_name(cfg.env))
    elapsed = time.perf_counter() - start
    result = evaluate(model, eval_env, cfg.eval_episodes)
    venv.close()
    eval_env.close()
    return RunResult(folder, result, model.num_timesteps, model.num_timesteps / max(elapsed, 1e-9), interrupted)
