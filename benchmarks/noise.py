"""Does attention hold up on noisy inputs? Success and target mass against noise, global, local and sparse.

    python benchmarks/noise.py                                        # T-Maze L = 10 and visual search
    python benchmarks/noise.py --tasks tmaze --length 100 --tmaze-noise 0 0.5 0.9 --seeds 3
    python benchmarks/noise.py --tasks search --search-noise 0 32 64 128 --search-budget 300000

Every (task, noise, method, seed) is one Ray Tune trial (``sweep.py``) training through ``train.py``
with the presets it ships:

- **T-Maze** (passive, corridor ``--length``; the env's ``noise`` knob: distractor values in
  ``[0, noise)`` on the cue entries of every step but the cue's) with ``--extractor attention``,
  ``local-attention`` and ``sparse-attention``. Training mixes corridor lengths as the presets do;
  evaluation is the plain maze at the same noise. Sparse attention routes blocks of 16 steps (the
  registry's default): at L < 16 it attends to the one block, the whole history, as global does.
- **Visual search** (``rlattn/VisualSearch-v0``, the env's ``noise`` knob: uniform pixel noise in
  ``[0, noise]``) with ``--extractor patch-attention`` and one transformer block over the patches,
  global, neighbourhood (local, radius 1) or block-routed sparse attention (blocks of 8 patches, one
  row of the 8 x 8 grid each, attending to their 2 best rows and their own, with the compressed
  branch); the readout (one pooling query over every patch) is the same for all three.

Reported per cell: the final evaluation's success (IQM over ``--seeds`` with a 95% bootstrap CI, and
per seed) and, from the final model replayed on ``--faithfulness-episodes`` unseen episodes
(``benchmarks/faithfulness.py``, saved as ``faithfulness.json`` in each run folder): the readout's
attention mass on the ground truth at the decision (the cue's step, the target's patch) and the flip
rates when the most-attended step (patch), or a random other one, is masked (means over seeds).

A rerun reads finished runs from their folders (named by their settings) instead of training them;
records are also appended to ``--results`` (JSON).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import numpy as np
from faithfulness import measured
from sweep import (
    Case,
    Cell,
    Table,
    add_arguments,
    check_arguments,
    method_text,
    seeds,
    success_text,
    sweep_main,
    with_tuned,
)

from agents.cli import OneLineParser
from agents.config import ConfigError
from rlattn.faithfulness import PATCH_MASK

TASKS = {"tmaze": "rlattn/TMaze-v0", "search": "rlattn/VisualSearch-v0"}
METHODS = ("attention", "local-attention", "sparse-attention")
SEARCH_EXTRACTORS = {
    "attention": ("patch-attention", ("n_layers:1",)),
    "local-attention": ("patch-attention", ("n_layers:1", "attention:'neighbourhood'")),
    "sparse-attention": ("patch-attention", ("n_layers:1", "top_k:2", "block_size:8")),
}
"""each method's extractor and ``-params`` on the visual search"""
MEASURES = ("target_mass", "flip_rate_top", "flip_rate_random")
KEY_FIELDS = ("task", "length", "noise", "method", "budget", "tuned")
COLUMNS = (
    "task",
    "noise",
    "method",
    "budget",
    "seeds",
    "final success IQM [95% CI]",
    "per seed",
    "target mass",
    "flip top",
    "flip random",
)


def arguments_for(task: str, noise: float, method: str, budget: int, seed: int, args: argparse.Namespace) -> tuple:
    """The ``train.py`` arguments of one run."""
    if task == "tmaze":
        extractor, params = method, ()
        env_kwargs: tuple[str, ...] = (f"corridor_length:{args.length}", f"noise:{noise}")
    else:
        extractor, params = SEARCH_EXTRACTORS[method]
        env_kwargs = (f"noise:{int(noise)}",)
    return (
        *("--algo", "ppo", "--extractor", extractor, "--env", TASKS[task], "--env-kwargs", *env_kwargs),
        *(("-params", *params) if params else ()),
        *("-n", str(budget), "--seed", str(seed), "--eval-freq", str(max(budget // 10, min(5_000, budget)))),
        *("--eval-episodes", str(args.eval_episodes), "--save-freq", "-1", "--verbose", "0"),
    )


def faithfulness_of(episodes: int, seed: int, record: dict) -> dict:
    """Target mass and flip rates of the run's final model (its faithfulness.json, once made)."""
    try:
        found = measured(Path(record["folder"]), episodes, seed, "final")
    except ConfigError as error:
        return {name: None for name in MEASURES} | {"faithfulness_error": str(error)}
    return {name: found.get(name) for name in MEASURES} | {"patch_mask": found.get("patch_mask")}


def current(record: dict) -> bool:
    """A saved visual-search record counts only if its flips were measured with today's patch mask."""
    return record.get("task") != "search" or record.get("patch_mask") == PATCH_MASK


def make_cases(args: argparse.Namespace) -> list[Case]:
    cases = []
    levels = {"tmaze": args.tmaze_noise, "search": args.search_noise}
    for task in args.tasks:
        budget = args.tmaze_budget if task == "tmaze" else args.search_budget
        methods = [m for m in args.methods if task == "tmaze" or m in SEARCH_EXTRACTORS]
        for noise in levels[task]:
            for method in methods:
                for seed in seeds(args):
                    length = args.length if task == "tmaze" else None
                    key = {"task": task, "length": length, "noise": noise, "method": method, "budget": budget}
                    key["seed"] = seed
                    after = partial(faithfulness_of, args.faithfulness_episodes, args.faithfulness_seed)
                    key, arguments = with_tuned(
                        key, arguments_for(task, noise, method, budget, seed, args), method, args
                    )
                    label = f"{task} noise {noise} {method_text(key)} seed {seed}, {budget:,} steps"
                    cases.append(Case(key, label, arguments, after, current))
    return cases


def mean_of(cell: Cell, name: str) -> str:
    values = [r[name] for r in cell.done if r.get(name) is not None]
    return f"{np.mean(values):.3f}" if values else "-"


def row(cell: Cell) -> list[str]:
    s = cell.settings
    task = f"T-Maze L={s['length']}" if s["task"] == "tmaze" else "visual search"
    head = [task, str(s["noise"]), method_text(s), f"{s['budget']:,}", str(len(cell.runs))]
    return [*head, *success_text(cell), *(mean_of(cell, name) for name in MEASURES)]


def parse_args() -> argparse.Namespace:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=tuple(TASKS), default=list(TASKS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--length", type=int, default=10, help="T-Maze corridor length")
    parser.add_argument("--tmaze-noise", type=float, nargs="+", default=[0.0, 0.5, 0.9], help="T-Maze noise, 0 .. 1")
    parser.add_argument("--search-noise", type=int, nargs="+", default=[0, 64, 128], help="pixel noise, 0 .. 128")
    parser.add_argument("--tmaze-budget", type=int, default=100_000, help="env steps per T-Maze run")
    parser.add_argument("--search-budget", type=int, default=500_000, help="env steps per visual-search run")
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--faithfulness-episodes", type=int, default=100)
    parser.add_argument("--faithfulness-seed", type=int, default=20_000)
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown too")
    add_arguments(parser, "noise")
    args = parser.parse_args()
    check_arguments(parser, args)
    for flag, value in (("--tmaze-noise", min(args.tmaze_noise)), ("--search-noise", min(args.search_noise))):
        if value < 0:
            parser.error(f"{flag} {value} is invalid: must be >= 0")
    if max(args.tmaze_noise) > 1 or max(args.search_noise) > 128:
        parser.error(
            f"--tmaze-noise {max(args.tmaze_noise)} / --search-noise {max(args.search_noise)} is invalid: at most 1 / 128"
        )
    for name in ("length", "tmaze_budget", "search_budget", "eval_episodes", "faithfulness_episodes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} is invalid: must be >= 1")
    return args


def main() -> int:
    args = parse_args()
    table = Table(KEY_FIELDS, COLUMNS, "|---|---:|---|---:|---:|---:|---|---:|---:|---:|", row)
    return sweep_main("noise.py", make_cases(args), args, table)


if __name__ == "__main__":
    sys.exit(main())
