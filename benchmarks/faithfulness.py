"""Is a trained run's attention faithful? Flip rates when the most-attended input, or a random other, is masked.

    python benchmarks/faithfulness.py logs/ppo/rlattn-TMaze-v0_1
    python benchmarks/faithfulness.py RUN [RUN ...] --episodes 200 --model final --json faithfulness.json

For each run folder written by ``train.py`` (its model loaded with the run's own settings), plays
``--episodes`` deterministic evaluation episodes (seeds ``--seed ..``, unseen in training and its
evaluations) and scores each episode's decision, the last step acted on (the T-Maze's turn at the
junction, the visual search's choice), as ``AttentionLoggingCallback`` does for TensorBoard (the same
code, :meth:`~rlattn.AttentionLoggingCallback.measure`):

- target mass: the readout's attention on the env's ground truth (the cue's step, the target's
  patch), last block, mean over heads;
- flip rate, most attended: how often the deterministic action changes when the input the readout
  attends to most (last block, mean over heads) is masked;
- flip rate, random: the same for a random other input.

How a step or patch is masked (``valid`` set to 0 for history steps, the memory's slot left out for
``AttentionPPO``, the frame's emptiest patch copied over a patch) is in :mod:`rlattn.faithfulness`.
Each rate is shown with its counts; ``newest top`` counts decisions whose own step held the most
weight (never masked).
Each run's numbers also go to ``faithfulness.json`` in its folder (``--json``: all runs in one file).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from stable_baselines3.common.vec_env import VecEnv

from agents.build import make_vec
from agents.callbacks import TARGET_KEYS
from agents.checks import first_line
from agents.cli import OneLineParser
from agents.config import ConfigError
from agents.plan import RunPlan, resolve
from agents.presets import env_family
from agents.registry import ALGOS
from agents.runfolder import final_model, find_model, load_run_config
from rlattn import AttentionLoggingCallback
from rlattn.faithfulness import PATCH_MASK

SEED = 20_000
"""first episode seed: training uses the run's seed, its evaluations seed + 10,000"""
SIDE_BY_SIDE = 16
"""envs playing episodes at once (one batched policy call per step)"""
RESULT = "faithfulness.json"
COLUMNS = (
    "run",
    "env",
    "method",
    "episodes",
    "target mass (n)",
    "flip top (flips/n)",
    "flip random (flips/n)",
    "newest top",
)


def model_file(folder: Path, which: str) -> Path:
    """The run's best model (else final) for ``"best"``, its final model for ``"final"``."""
    if which == "best":
        return find_model(str(folder), "run")[1]
    path = final_model(folder, load_run_config(folder, f"run {str(folder)!r}").env)
    if not path.is_file():
        raise ConfigError(f"run {str(folder)!r} is invalid: it holds no final model {path.name}")
    return path


def load_run(folder: Path, which: str) -> tuple[RunPlan, Any, Path]:
    """The run's plan (its own settings, on the CPU), its model (``which`` as in :func:`model_file`) and the model's file."""
    saved = load_run_config(folder, f"run {str(folder)!r}")
    plan = resolve(replace(saved, device="cpu", verbose=0, log_folder=str(folder.parent)))
    path = model_file(folder, which)
    try:
        model = ALGOS[saved.algo].cls.load(path, device="cpu")
    except Exception as error:
        raise ConfigError(f"run {str(path)!r} cannot be loaded as {saved.algo}: {first_line(error)}") from None
    return plan, model, path


def add_run_arguments(parser: OneLineParser, episodes: int, help_episodes: str, model: str) -> None:
    """The arguments of a script that replays trained runs: the run folders, episodes, first seed, which model."""
    parser.add_argument("runs", nargs="+", type=Path, help="run folders written by train.py")
    parser.add_argument("--episodes", type=int, default=episodes, help=help_episodes)
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the first episode")
    parser.add_argument(
        "--model", choices=("best", "final"), default=model, help="best_model.zip (else final), or final"
    )


def measure_run(folder: Path, episodes: int = 100, seed: int = SEED, which: str = "best") -> dict[str, Any]:
    """Play ``episodes`` episodes with the run's model and score each decision: the record of one run."""
    plan, model, path = load_run(folder, which)
    saved = plan.config
    env: VecEnv = make_vec(plan, min(episodes, SIDE_BY_SIDE), seed, evaluation=True)
    callback = AttentionLoggingCallback(env, episodes, TARGET_KEYS.get(env_family(saved.env)), seed)
    callback.init_callback(model)
    scored = callback.measure()
    env.close()
    if scored is None:
        raise ConfigError(
            f"run {str(folder)!r}: {saved.algo} with --extractor {plan.extractor} has no attention to mask"
        )
    method = saved.algo if plan.algo_entry.memory == "episodic" else plan.extractor
    record = {"run": str(folder), "model": str(path), "env": saved.env, "method": method, "seed": seed}
    record["patch_mask"] = PATCH_MASK
    return record | scored.faithfulness.record()


def measured(folder: Path, episodes: int, seed: int, which: str = "final") -> dict[str, Any]:
    """The run's record from its ``faithfulness.json`` if made with these settings (and the current patch
    mask), else measured and saved."""
    path = folder / RESULT
    if path.is_file():
        record = json.loads(path.read_text())
        settings = (record.get("episodes"), record.get("seed"), record.get("which"), record.get("patch_mask"))
        if settings == (episodes, seed, which, PATCH_MASK):
            return record
    record = measure_run(folder, episodes, seed, which) | {"which": which}
    path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def rate(record: dict, value: str, count: str, n: str) -> str:
    if record.get(value) is None:
        return "-"
    return f"{record[value]:.3f} ({record[count]}/{record[n]})" if count else f"{record[value]:.3f} ({record[n]})"


def row(record: dict) -> list[str]:
    return [
        "/".join(Path(record["run"]).parts[-3:]),
        record["env"],
        record["method"],
        str(record["episodes"]),
        rate(record, "target_mass", "", "target_mass_n"),
        rate(record, "flip_rate_top", "top_flips", "top_n"),
        rate(record, "flip_rate_random", "random_flips", "random_n"),
        str(record["newest_top"]),
    ]


def print_table(records: list[dict]) -> None:
    rows = [row(r) for r in records]
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(COLUMNS)]
    print("  ".join(c.rjust(w) for c, w in zip(COLUMNS, widths, strict=True)))
    for values in rows:
        print("  ".join(v.rjust(w) for v, w in zip(values, widths, strict=True)))


def main() -> int:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, 100, "evaluation episodes per run (one decision each)", "best")
    parser.add_argument("--json", type=Path, default=None, help="also write all the records to this file")
    args = parser.parse_args()
    if args.episodes < 1:
        parser.error(f"--episodes {args.episodes} is invalid: must be >= 1")
    try:
        records = [measured(folder, args.episodes, args.seed, args.model) for folder in args.runs]
    except ConfigError as error:
        print(f"faithfulness.py: error: {error}", file=sys.stderr)
        return 2
    print_table(records)
    if args.json is not None:
        args.json.write_text(json.dumps(records, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
