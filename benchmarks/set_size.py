"""Does search stay accurate as the scene gets crowded? VisualSearch success against set size, per method.

    python benchmarks/set_size.py                                   # set sizes 4, 8, 16, 32; 500k steps each
    python benchmarks/set_size.py --search conjunction --set-sizes 16 --budget 300000

Every (set size, method, seed) is one Ray Tune trial (``sweep.py``) training on
``rlattn/VisualSearch-v0`` (64 x 64 images, an 8 x 8 grid) at the same env-step budget, with the presets ``train.py``
ships, evaluating every ``--eval-freq`` steps on ``--eval-episodes`` searches (deterministic
actions, unseen seeds). Methods: ``patch-attention`` (PPO with PatchAttentionExtractor),
``ppo_attention`` (AttentionPPO with its PatchPolicy: the frame's patches, an episodic memory, a look
after it) and ``cnn`` (PPO with SB3's NatureCNN). Reported: final and best evaluation success, env
steps to first reach 0.95, wall time, training steps/s and, for the two patch methods, the attention
mass on the target's patch at the answer step (the trained model replayed on ``--mass-episodes``
searches).

A rerun of an interrupted sweep reads the finished runs from their folders (named by their settings)
instead of training them; records are also appended to ``--results`` (JSON). The table (IQM over
``--seeds`` with a 95% bootstrap CI, and the per-seed values) and the PNG plot (one line and CI band
per method) are made from the runs of this invocation.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

from stats import Interval
from sweep import (
    ROOT,
    Case,
    Cell,
    Table,
    add_arguments,
    best,
    check_arguments,
    is_variant,
    method_text,
    seeds,
    seeds_text,
    steps_text,
    success_text,
    sweep_main,
    variants,
    with_tuned,
)

from agents.cli import OneLineParser
from agents.plan import SEED_MAX

METHODS = ("patch-attention", "ppo_attention", "cnn")
OWN_MEMORY = {"ppo_attention": ("ppo_attention", "patch-attention")}
"""methods that are an algorithm of their own: (--algo, --extractor)"""
LOOKS = ("patch-attention", "ppo_attention")
"""methods whose attention over the frame is replayed for its mass on the target"""
ENV = "rlattn/VisualSearch-v0"
STYLES = {
    "patch-attention": {"marker": "o", "linewidth": 2.5},
    "ppo_attention": {"marker": "D", "linewidth": 2.5},
    "cnn": {"marker": "s", "linestyle": "--"},
}


KEY_FIELDS = ("search", "set_size", "method", "budget", "tuned")
"""what identifies a cell of the table (a run adds its seed)"""
PLOT_SLOT = ("search", "set_size", "method", "tuned")
"""where the plot draws a cell: a run of another budget there replaces the plot's earlier one"""
COLUMNS = (
    "search",
    "set size",
    "method",
    "budget",
    "seeds",
    "final success IQM [95% CI]",
    "per seed",
    "best (mean)",
    "steps to 0.95 IQM [95% CI]",
    "per seed",
    "wall (mean)",
    "steps/s (mean)",
    "target mass (mean)",
)

MASS_SEED_OFFSET = 20_000
"""the target-mass replays play seeds this far above the run's: episodes training never saw"""


def target_mass(episodes: int, seed: int, record: dict) -> dict:
    """The replayed model's mean attention mass on the target at the answer step (its replay.json, once made)."""
    gif = Path(record["folder"]) / "replay.gif"
    if not gif.with_suffix(".json").is_file():
        command = [sys.executable, str(ROOT / "train.py"), "--replay", record["folder"], "--episodes", str(episodes)]
        done = subprocess.run([*command, "--seed", str(seed), "--video", str(gif)], capture_output=True, text=True)
        if done.returncode:
            return {"target_mass": None}
    return {"target_mass": json.loads(gif.with_suffix(".json").read_text())["target_mass"]}


def make_case(set_size: int, method: str, seed: int, args: argparse.Namespace) -> Case:
    """One training run, and the replayed target mass for the patch methods."""
    algo, extractor = OWN_MEMORY.get(method, ("ppo", method))
    arguments = (
        *("--algo", algo, "--extractor", extractor, "--env", ENV),
        *("--env-kwargs", f"set_size:{set_size}", f"search:'{args.search}'"),
        *("-n", str(args.budget), "--seed", str(seed)),
        *("--eval-freq", str(args.eval_freq), "--eval-episodes", str(args.eval_episodes)),
        *("--save-freq", "-1", "--verbose", "0"),
    )
    key = {"search": args.search, "set_size": set_size, "method": method, "budget": args.budget, "seed": seed}
    key, arguments = with_tuned(key, arguments, method, args)
    after = partial(target_mass, args.mass_episodes, seed + MASS_SEED_OFFSET) if method in LOOKS else None
    return Case(key, f"set size {set_size} {method_text(key)} seed {seed}, {args.budget:,} steps", arguments, after)


def row(cell: Cell) -> list[str]:
    """One table row: the cell's settings, IQM and CI over seeds, the per-seed values."""
    s = cell.settings
    head = [s["search"], str(s["set_size"]), method_text(s), f"{s['budget']:,}", seeds_text(cell)]
    if not cell.done:
        return [*head, *success_text(cell), *[""] * (len(COLUMNS) - len(head) - 2)]
    masses = [r["target_mass"] for r in cell.done if r.get("target_mass") is not None]
    mass = f"{sum(masses) / len(masses):.3f}" if masses else "-"
    bests = sum(best(r) for r in cell.done) / len(cell.done)
    wall, speed = f"{cell.mean('wall_s') / 60:.1f} min", cell.speed_text()
    return [*head, *success_text(cell), f"{bests:.2f}", *steps_text(cell), wall, speed, mass]


def band(
    ax: Any, points: list[tuple[int, float, float, float]], method: str, tuned: bool = False, search: str = ""
) -> None:
    """IQM line and its 95% CI band, by set size (``search`` named in the label where the plot has several)."""
    if points:
        sizes, iqm, low, high = zip(*sorted(points), strict=True)
        style = {**STYLES[method], **({"linestyle": "--"} if tuned else {}), **({"linestyle": ":"} if search else {})}
        label = method_text({"method": method, "tuned": tuned}) + (f", {search} search" if search else "")
        line = ax.plot(sizes, iqm, label=label, **style)[0]
        ax.fill_between(sizes, low, high, color=line.get_color(), alpha=0.15, linewidth=0)


def interval(stat: Interval) -> tuple[float, float, float]:
    return stat.iqm, stat.low, stat.high


def plot(table: list[Cell], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    kinds = sorted({c.settings["search"] for c in table}, key=lambda k: k != "feature")
    for search in kinds:  # one line per search: a conjunction cell is not a point of the feature line
        named = search if len(kinds) > 1 and search != kinds[0] else ""
        for method, tuned in variants(table, METHODS):
            mine = [c for c in table if is_variant(c, method, tuned) and c.settings["search"] == search]
            success = [(c.settings["set_size"], *interval(c.success)) for c in mine if c.success]
            band(left, success, method, tuned, named)
            band(right, [(c.settings["set_size"], *interval(c.steps)) for c in mine if c.steps], method, tuned, named)
    searches = "/".join(kinds)
    left.set_ylim(-0.05, 1.05)
    left.set_ylabel("final eval success: IQM, 95% CI band")
    right.set_yscale("log")
    right.set_ylabel("env steps to first reach 0.95 (all seeds reached)")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("set size (items in the 8 x 8 grid)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # the right panel is empty when no cell reached 0.95
            ax.legend()
    counts = sorted({len(c.done) for c in table if c.done})  # the seeds each point is drawn from
    seeds = f"{counts[0]} seed(s)" if len(counts) == 1 else f"{counts[0]}-{counts[-1]} seeds per point"
    budgets = "/".join(f"{b:,}" for b in sorted({c.settings["budget"] for c in table}))
    fig.suptitle(f"VisualSearch, {searches} search, {budgets} env steps per run, {seeds}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set-sizes", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--search", choices=("feature", "conjunction"), default="feature")
    parser.add_argument("--budget", type=int, default=500_000, help="env steps per run")
    parser.add_argument("--eval-freq", type=int, default=25_000)
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--mass-episodes", type=int, default=100, help="searches replayed to measure target mass")
    parser.add_argument("--plot", type=Path, default=None, help="where the plot goes (default: beside --results, .png)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    add_arguments(parser, "set_size")
    args = parser.parse_args()
    check_arguments(parser, args)
    for name in ("budget", "eval_freq", "eval_episodes", "mass_episodes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} is invalid: must be >= 1")
    if args.seed + args.seeds - 1 + MASS_SEED_OFFSET > SEED_MAX:  # the target-mass replays' seeds too
        parser.error(
            f"--seed {args.seed} is invalid: with --seeds {args.seeds} it must be <= {SEED_MAX - MASS_SEED_OFFSET - args.seeds + 1}"
        )
    if not all(1 <= n <= 64 for n in args.set_sizes):
        parser.error(f"--set-sizes {args.set_sizes} is invalid: each must be 1 .. 64 (the 8 x 8 grid)")
    return args


def main() -> int:
    args = parse_args()
    cases = [
        make_case(n, method, seed, args) for n in args.set_sizes for method in args.methods for seed in seeds(args)
    ]
    table = Table(KEY_FIELDS, COLUMNS, "|---|---:|---|" + "---:|" * (len(COLUMNS) - 3), row, plot, plot_slot=PLOT_SLOT)
    return sweep_main("set_size.py", cases, args, table)


if __name__ == "__main__":
    sys.exit(main())
