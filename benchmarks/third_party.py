"""Out of the box on memory tasks nobody here wrote: attention (both memory paths) against the baselines.

    pip install -e ".[bench]"                      # MiniGrid, POPGym, Ray Tune, rliable
    python benchmarks/third_party.py --seeds 3                       # every task, every method
    python benchmarks/third_party.py --tasks RepeatPrevious --methods attention ppo_lstm --seeds 1

Every (task, method, seed) is one Ray Tune trial (``sweep.py``: ``--workers`` at a time, ``--address``
for a cluster) running ``train.py --env module:id`` with nothing set but the algorithm, the extractor,
the budget and the seed: the presets and defaults a user gets on an env outside this package's
families. Equal env steps per task for every method. Evaluation every ``--eval-freq`` steps on
``--eval-episodes`` episodes (deterministic actions, unseen seeds).

Tasks (all pip-installable; returns normalised so the best episode scores 1):
- MiniGrid ``MemoryS7``, ``MemoryS11``, ``MemoryS13``: see an object at the start of a corridor, walk
  it, pick the matching one of two at its end. Observation: MiniGrid's Dict (7x7x3 ``image``,
  ``direction``; the text ``mission`` is dropped), flattened by ``rlattn.FlatObservation`` (the image's
  object, colour and state indices as 8-bit codes).
- POPGym ``PositionOnlyCartPoleEasy`` and ``PositionOnlyPendulumEasy``: CartPole and Pendulum with their
  velocities hidden. ``RepeatPreviousEasy``: name the card seen four steps ago. ``AutoencodeEasy``:
  watch a sequence of cards, then name them back in reverse (a Tuple observation).
Methods: ``attention`` (PPO, ``HistoryAttentionExtractor`` over a ``HistoryObservation``),
``ppo_attention`` (``rlattn.AttentionPPO``, each step encoded once), ``mlp-stack`` (the same history,
flattened), ``mlp-stack-16`` (the last 16 steps flattened: a short frame stack can beat a long one),
``ppo_lstm`` (sb3-contrib's RecurrentPPO) and ``mlp`` (the newest step only).

Reported per cell: IQM of the final normalised return over seeds with a 95% stratified-bootstrap CI
(rliable), the per-seed values, the best evaluation, training env steps/s, and those steps/s over
``ppo_lstm``'s on the same task (tuned over tuned; where it ran in the same table). The plot draws each
method's IQM and CI per task.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from stats import iqm_interval, per_seed
from sweep import (
    Case,
    Cell,
    Table,
    add_arguments,
    check_arguments,
    is_variant,
    method_text,
    not_done_text,
    seeds,
    seeds_text,
    sweep_main,
    variants,
    with_tuned,
)

from agents.cli import OneLineParser


@dataclass(frozen=True)
class Task:
    env: str
    """``module:id`` as ``train.py --env`` takes it"""
    budget: int
    """env steps per run"""
    best: float
    """the best episode's return: returns are divided by it"""


TASKS = {
    # ppo_attention first left chance at 450k-750k steps (README, "MiniGrid"): 1M
    "MemoryS7": Task("minigrid:MiniGrid-MemoryS7-v0", 1_000_000, 1.0),
    "MemoryS11": Task("minigrid:MiniGrid-MemoryS11-v0", 500_000, 1.0),
    "MemoryS13": Task("minigrid:MiniGrid-MemoryS13-v0", 500_000, 1.0),
    "PositionOnlyCartPole": Task("popgym:popgym-PositionOnlyCartPoleEasy-v0", 100_000, 1.0),
    "PositionOnlyPendulum": Task("popgym:popgym-PositionOnlyPendulumEasy-v0", 100_000, 1.0),
    "RepeatPrevious": Task("popgym:popgym-RepeatPreviousEasy-v0", 100_000, 1.0),
    "Autoencode": Task("popgym:popgym-AutoencodeEasy-v0", 100_000, 1.0),
}
METHODS: dict[str, tuple[str, ...]] = {
    "attention": ("--algo", "ppo", "--extractor", "attention"),
    "ppo_attention": ("--algo", "ppo_attention"),
    "mlp-stack": ("--algo", "ppo", "--extractor", "mlp-stack"),
    # the usual frame stack: on short memories a short stack can beat the default (whole-episode) one
    "mlp-stack-16": ("--algo", "ppo", "--extractor", "mlp-stack", "--history", "16"),
    "ppo_lstm": ("--algo", "ppo_lstm"),
    "mlp": ("--algo", "ppo", "--extractor", "mlp"),
}
"""each method's ``train.py`` arguments: nothing else is set, so the defaults are the ones measured"""
KEY_FIELDS = ("task", "method", "budget", "tuned")
PLOT_SLOT = ("task", "method", "tuned")
"""where the plot draws a cell (one bar): a run of another budget there replaces the plot's earlier one"""


def arguments_for(task: Task, method: str, budget: int, seed: int, args: argparse.Namespace) -> tuple[str, ...]:
    return (
        *METHODS[method],
        *("--env", task.env, "-n", str(budget), "--seed", str(seed)),
        *("--eval-freq", str(args.eval_freq or max(budget // 10, 5_000)), "--eval-episodes", str(args.eval_episodes)),
        *("--save-freq", "-1", "--verbose", "0"),
    )


def normalised(record: dict, task: Task) -> dict:
    """The final and best evaluation returns divided by the task's best return."""
    curve = record.get("return_curve") or []
    return {
        "score": record["mean_return"] / task.best,
        "best_score": max((r for _, r in curve), default=record["mean_return"]) / task.best,
    }


def make_cases(args: argparse.Namespace) -> list[Case]:
    cases = []
    for name in args.tasks:
        task = TASKS[name]
        budget = args.budget or task.budget
        for method in args.methods:
            for seed in seeds(args):
                key = {"task": name, "method": method, "budget": budget, "seed": seed}
                key, arguments = with_tuned(key, arguments_for(task, method, budget, seed, args), method, args)
                label = f"{name} {method_text(key)} seed {seed}, {budget:,} steps"
                after = lambda record, task=task: normalised(record, task)  # noqa: E731
                cases.append(Case(key, label, arguments, after))
    return cases


COLUMNS = (
    "task",
    "method",
    "budget",
    "seeds",
    "final return IQM [95% CI]",
    "per seed",
    "best (mean)",
    "steps/s",
    "x ppo_lstm",
)
BASELINE = "ppo_lstm"
"""the method whose training env steps/s the others are measured against (the issue's 5x target)"""


def row(cell: Cell) -> list[str]:
    s = cell.settings
    head = [s["task"], method_text(s), f"{s['budget']:,}", seeds_text(cell)]
    if not cell.done:
        return [*head, not_done_text(cell.runs[0]), "", "", ""]
    scores = [r["score"] for r in cell.done]
    best = sum(r["best_score"] for r in cell.done) / len(cell.done)
    values = [r.get("score") for r in cell.runs]
    return [*head, str(iqm_interval(scores)), per_seed(values), f"{best:.2f}", cell.speed_text()]


def speed_ratio(cell: Cell, table: list[Cell]) -> list[str]:
    """Training env steps/s over the ``ppo_lstm`` cell's on the same task and budget, tuned over tuned and
    untuned over untuned (tuned settings change the cost of an update), from this sweep's records."""
    s = cell.settings
    baseline = next(
        (
            c
            for c in table
            if c.settings["method"] == BASELINE
            and bool(c.settings.get("tuned")) == bool(s.get("tuned"))
            and (c.settings["task"], c.settings["budget"]) == (s["task"], s["budget"])
        ),
        None,
    )
    if baseline is None or not baseline.done or not cell.done:
        return ["-"]
    mixed = "*" if cell.speed_text().endswith("*") or baseline.speed_text().endswith("*") else ""
    return [f"{cell.speed() / baseline.speed():.1f}x{mixed}"]


def plot(table: list[Cell], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(c.settings["task"] for c in table))
    methods = variants(table, list(METHODS))
    fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 4.5, 4))
    width = 0.8 / max(len(methods), 1)
    for j, (method, tuned) in enumerate(methods):
        label: str | None = method_text({"method": method, "tuned": tuned})
        # a method keeps its colour; its tuned runs are the same colour, hatched
        style = {"color": f"C{list(METHODS).index(method)}", **({"hatch": "//", "alpha": 0.6} if tuned else {})}
        for i, name in enumerate(tasks):
            cell = next((c for c in table if c.settings["task"] == name and is_variant(c, method, tuned)), None)
            if cell is None or not cell.done:
                continue
            ci = iqm_interval([r["score"] for r in cell.done])
            x = i + (j - (len(methods) - 1) / 2) * width
            ax.bar(x, ci.iqm, width, label=label, **style)
            label = None  # once in the legend, at the variant's first bar
            ax.errorbar(x, ci.iqm, [[ci.iqm - ci.low], [ci.high - ci.iqm]], color="black", capsize=2, linewidth=1)
            ax.scatter([x] * len(cell.done), [r["score"] for r in cell.done], s=8, color="black", zorder=3)
    ax.set_xticks(range(len(tasks)), tasks, rotation=20)
    ax.set_ylabel("final normalised return: IQM, 95% CI, seeds")
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, not over them
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--budget", type=int, default=None, help="env steps per run (default: the task's, see TASKS)")
    parser.add_argument("--eval-freq", type=int, default=None, help="default: a tenth of the budget, >= 5000")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--plot", type=Path, default=None, help="where the plot goes (default: beside --results, .png)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown too")
    add_arguments(parser, "third_party")
    args = parser.parse_args()
    check_arguments(parser, args)
    for name in ("budget", "eval_freq"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} is invalid: must be >= 1")
    if args.eval_episodes < 1:
        parser.error(f"--eval-episodes {args.eval_episodes} is invalid: must be >= 1")
    return args


def main() -> int:
    args = parse_args()
    table = Table(KEY_FIELDS, COLUMNS, "|---|---|---:|---:|---:|---|---:|---:|---:|", row, plot, speed_ratio, PLOT_SLOT)
    return sweep_main("third_party.py", make_cases(args), args, table)


if __name__ == "__main__":
    sys.exit(main())
