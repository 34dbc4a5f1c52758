"""A run folder as train.py writes it, in a fraction of a second: its settings and an untrained model."""

from pathlib import Path

from stable_baselines3.common.base_class import BaseAlgorithm

from agents.build import build_model, make_vec, resolve
from agents.cli import config_from_args
from agents.runfolder import final_model, new_run_folder, save_atomic, save_replay_atomic, write_run_info


def untrained_run(log_folder: Path, args: list[str], model: BaseAlgorithm | None = None) -> Path:
    """``LOG/ALGO/ENV_1`` with ``args.json``, ``config.json``, ``command.txt`` and the final model (the run's own,
    built and never trained, or ``model``), with the files a save writes beside it; returns the model's path."""
    cfg = config_from_args([*args, "-f", str(log_folder), "--verbose", "0"])
    plan = resolve(cfg)
    folder = new_run_folder(cfg.log_folder, cfg.algo, cfg.env)
    write_run_info(folder, plan)
    venv = make_vec(plan, plan.n_envs, cfg.seed)
    try:
        saved = model if model is not None else build_model(plan, venv)
        path = save_atomic(saved, final_model(folder, cfg.env))
        save_replay_atomic(saved, folder)
    finally:
        venv.close()
    return path
