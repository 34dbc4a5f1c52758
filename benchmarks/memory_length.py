"""How far back can each policy remember? T-Maze success against corridor length, per method.

    python benchmarks/memory_length.py                                  # passive L = 10, 30, 100
    python benchmarks/memory_length.py --maze active --lengths 10 30 100
    python benchmarks/memory_length.py --lengths 300 1000 --methods attention  # long, opt-in

Every (maze, corridor length L, method, seed) is one Ray Tune trial (``sweep.py``: ``--workers`` at
a time, ``--address`` for a cluster) training through the package at the same env-step budget, with the presets ``train.py`` ships, and is evaluated every
``--eval-freq`` steps on ``--eval-episodes`` episodes (deterministic actions, unseen seeds).
Reported: the final evaluation's success rate (after the whole budget), the best evaluation's, the
env steps at which evaluation first reached 0.95 success, wall time (set-up and evaluations
included) and training env steps per second.
History-based methods see a whole episode (the preset history: L + 1 steps passive, L + 3 active);
``sparse-attention`` reads it block-routed (each block of 16 steps attends to its 4 best-scoring
blocks and its own); ``mlp-stack`` flattens that same history; ``mlp`` sees the newest step; ``ppo_lstm`` is
sb3-contrib's RecurrentPPO; ``ppo_attention`` (rlattn's AttentionPPO) remembers a whole episode
too, encoding each step once. On the active maze every method's steps also hold the previous action,
as the presets give it ("sees" ``obs+action``; zeros on the first step, which is how a policy can
tell the start, where it must step back for the cue, from the corridor, which looks the same).

As the presets do, training episodes draw their corridor length log-uniformly from ``--train-from``
(default: the method's preset's, a tenth of L and at most 10, or 2 for ``ppo_attention`` on long mazes)
to L and get L/10 steps of slack; evaluation is always the plain
L-step maze without slack (``--plain`` trains on that too). Why, in the README: on the plain maze a
policy must walk the whole corridor without a wasted step before it ever reaches the junction, and
by then it has learnt to walk on there too (RecurrentPPO never turns, even at L = 10).

Each run's folder is named by its settings, so a rerun of an interrupted sweep reads the finished
runs instead of training them; records are also appended to ``--results`` (JSON). The table (IQM
over ``--seeds`` with a 95% bootstrap CI, and the per-seed values) and the PNG plot (success against
L, one line and CI band per method) are made from the runs of this invocation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gymnasium as gym
from sweep import (
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

import envs  # noqa: F401  (registers the maze ids)
from agents.cli import OneLineParser
from agents.presets import preset_for, training_corridors

METHODS = ("attention", "local-attention", "sparse-attention", "ppo_attention", "mlp-stack", "mlp", "ppo_lstm")
OWN_MEMORY = {"ppo_lstm": ("ppo_lstm", "mlp"), "ppo_attention": ("ppo_attention", "mlp")}
"""methods that are an algorithm with its own memory: (algo, its per-step encoder)"""
MAZES = {"passive": "rlattn/TMaze-v0", "active": "rlattn/TMazeActive-v0"}
BUDGETS = {10: 100_000, 30: 150_000, 100: 300_000, 300: 500_000, 1000: 500_000, 10_000: 2_000_000}
"""default env-step budget per corridor length (the next larger length's for lengths not listed)"""
STYLES: dict[str, dict] = {
    "attention": {"marker": "o", "linestyle": "-", "linewidth": 2.5},
    "local-attention": {"marker": "s", "linestyle": "--"},
    "sparse-attention": {"marker": "P", "linestyle": "--"},
    "ppo_attention": {"marker": "D", "linestyle": "-", "linewidth": 2.5},
    "mlp-stack": {"marker": "^", "linestyle": ":"},
    "mlp": {"marker": "v", "linestyle": "-."},
    "ppo_lstm": {"marker": "x", "linestyle": "-"},
}


def history_inputs(maze: str) -> str | None:
    """What each observed step holds besides the observation, as the presets choose for this maze: ``"action"`` or None."""
    env = gym.make(MAZES[maze])
    choose = preset_for("ppo", MAZES[maze], env).history_inputs
    inputs = choose(env) if choose is not None else ()
    env.close()
    return " ".join(inputs) or None


def budget_for(length: int) -> int:
    return next((b for cap, b in sorted(BUDGETS.items()) if length <= cap), max(BUDGETS.values()))


def preset_training_env(maze: str, length: int, algo: str) -> dict:
    """The training-env keywords the preset of ``algo`` gives this maze at corridor ``length``."""
    env = gym.make(MAZES[maze], corridor_length=length)
    choose = preset_for(algo, MAZES[maze], env).train_env
    extra = choose(env) if choose is not None else {}
    env.close()
    return extra


PRESET_ARGS = argparse.Namespace(plain=False, train_from=None)
"""arguments that leave the shortest training corridor to the presets"""


def train_from_for(maze: str, length: int, method: str, args: argparse.Namespace) -> int | None:
    """The shortest training corridor of a run at ``length``: ``--train-from``, else the method's preset's
    (a tenth of L, at most 10, unless the preset says otherwise); None for the plain maze."""
    if args.plain:
        return None
    algo = OWN_MEMORY.get(method, ("ppo", method))[0]
    shortest = preset_training_env(maze, length, algo).get("min_corridor_length", training_corridors(length)[0])
    train_from = args.train_from if args.train_from is not None else shortest
    return train_from if train_from < length else None


def training_env(length: int, train_from: int | None) -> tuple[list[str], list[str]]:
    """``--env-kwargs`` and ``--eval-env-kwargs`` values: the plain maze, or mixed lengths in training.

    Both are spelled out, so the preset's own choice never applies.
    """
    if train_from is None:
        return [f"corridor_length:{length}", "min_corridor_length:None"], []
    mixed = [f"corridor_length:{length}", f"min_corridor_length:{train_from}", f"slack:{training_corridors(length)[1]}"]
    return mixed, ["min_corridor_length:None", "slack:0"]


def preset_extras(maze: str, length: int, algo: str) -> list[str]:
    """The preset's training-env keywords beyond mixed lengths and slack (``tight_fraction``, ...), as ``key:value``."""
    extra = preset_training_env(maze, length, algo)
    return [f"{key}:{value!r}" for key, value in extra.items() if key not in ("min_corridor_length", "slack")]


def arguments_for(maze: str, length: int, method: str, budget: int, seed: int, args: argparse.Namespace) -> tuple:
    """The ``train.py`` arguments of one run (on mixed lengths, with the preset's other training-env keywords)."""
    algo, extractor = OWN_MEMORY.get(method, ("ppo", method))
    env_kwargs, eval_env_kwargs = training_env(length, train_from_for(maze, length, method, args))
    if eval_env_kwargs:
        env_kwargs = [*env_kwargs, *preset_extras(maze, length, algo)]
    return (
        *("--algo", algo, "--extractor", extractor, "--env", MAZES[maze]),
        *("--env-kwargs", *env_kwargs, "-n", str(budget), "--seed", str(seed)),
        *(("--eval-env-kwargs", *eval_env_kwargs) if eval_env_kwargs else ()),
        *("--eval-freq", str(args.eval_freq or max(budget // 20, 5_000)), "--eval-episodes", str(args.eval_episodes)),
        *("--save-freq", "-1", "--verbose", "0"),
    )


def trained_on(record: dict) -> str:
    """The corridor lengths a run trained on: ``L``, or ``MIN..L +S`` for mixed lengths with slack."""
    train_from, length = record.get("train_from"), record["length"]
    if train_from is None or train_from >= length:
        return str(length)
    return f"{train_from}..{length} +{training_corridors(length)[1]}"


def observed(record: dict) -> str:
    """What each observed step held: ``obs``, or ``obs+action`` (the previous action too)."""
    return "+".join(["obs", *(record.get("inputs") or "").split()])


KEY_FIELDS = ("maze", "length", "method", "budget", "train_from", "inputs", "tuned")
"""what identifies a cell of the table (a run adds its seed)"""
COLUMNS = (
    "maze",
    "L",
    "trained on",
    "sees",
    "method",
    "budget",
    "seeds",
    "final success IQM [95% CI]",
    "per seed",
    "best (mean)",
    "env steps to 0.95 IQM [95% CI]",
    "per seed",
    "wall (mean)",
    "steps/s (mean)",
)


def row(cell: Cell) -> list[str]:
    """One table row: the cell's settings, IQM and CI over seeds, the per-seed values."""
    s = cell.settings
    head = [
        s["maze"],
        str(s["length"]),
        trained_on(s),
        observed(s),
        method_text(s),
        f"{s['budget']:,}",
        seeds_text(cell),
    ]
    if not cell.done:
        return [*head, *success_text(cell), "", "", "", "", ""]
    bests = sum(best(r) for r in cell.done) / len(cell.done)
    wall, speed = f"{cell.mean('wall_s') / 60:.1f} min", cell.speed_text()
    return [*head, *success_text(cell), f"{bests:.2f}", *steps_text(cell), wall, speed]


def series(
    table: list[Cell], maze: str, method: str, mixed: bool, tuned: bool = False
) -> list[tuple[int, float, float, float]]:
    """(L, IQM, CI low, CI high) of final success, by corridor length, for one line of the plot.

    Where cells of the line share a length (mixed lengths from different shortest corridors, e.g. 10..1000
    before the presets moved to 2..1000), the line takes the one trained as the method's preset trains now,
    else the one with the most seeds.
    """
    by_length: dict[int, list[Cell]] = {}
    for cell in table:
        if (
            cell.success is not None
            and cell.settings["maze"] == maze
            and is_variant(cell, method, tuned)
            and (cell.settings.get("train_from") is not None) == mixed
        ):
            by_length.setdefault(cell.settings["length"], []).append(cell)
    points = []
    for length, cells in by_length.items():
        preset = train_from_for(maze, length, method, PRESET_ARGS) if len(cells) > 1 else None
        # then the most seeds that ran, then the larger budget: never an older cell by the order it was listed
        cell = max(cells, key=lambda c: (c.settings.get("train_from") == preset, len(c.done), c.settings["budget"]))
        assert cell.success is not None
        points.append((length, cell.success.iqm, cell.success.low, cell.success.high))
    return sorted(points)


def plot(table: list[Cell], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mazes = sorted({c.settings["maze"] for c in table}, key=list(MAZES).index)
    both = len({c.settings.get("train_from") is not None for c in table}) == 2  # plain and mixed runs: tell them apart
    fig, axes = plt.subplots(1, len(mazes), figsize=(5.5 * len(mazes), 4), squeeze=False)
    lines = variants(table, METHODS)
    step = 0.008  # overlapping lines stay visible: each line and its band moved by a multiple of this
    shift = step * (len(lines) - 1) / 2
    for ax, maze in zip(axes[0], mazes, strict=True):
        for i, (method, tuned) in enumerate(lines):
            for mixed in (False, True):
                points = series(table, maze, method, mixed, tuned)
                if not points:
                    continue
                lengths, iqm, low, high = zip(*points, strict=True)
                offset = step * i - shift
                style = {**STYLES[method], **({"markerfacecolor": "none", "linestyle": ":"} if both and mixed else {})}
                style.update({"linestyle": "--", "linewidth": 1.5} if tuned else {})
                name = method_text({"method": method, "tuned": tuned})
                label = f"{name}, trained on {'mixed lengths' if mixed else 'the plain maze'}" if both else name
                line = ax.plot(lengths, [v + offset for v in iqm], label=label, **style)[0]
                band = ([v + offset for v in low], [v + offset for v in high])
                ax.fill_between(lengths, *band, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xscale("log")
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("corridor length L (steps between cue and decision)")
        ax.set_ylabel("final eval success: IQM over seeds, 95% CI band")
        ax.set_title(f"{maze} T-Maze (lines and bands offset by <= {shift:.3f})")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def make_cases(args: argparse.Namespace) -> list[Case]:
    """One case per (maze, length, method, seed)."""
    mazes = list(MAZES) if args.maze == "both" else [args.maze]
    cases = []
    for maze in mazes:
        inputs = history_inputs(maze)
        for length in args.lengths:
            budget = args.budget or budget_for(length)
            for method in args.methods:
                train_from = train_from_for(maze, length, method, args)
                trained = f", trained on {train_from}..{length}" if train_from else ""
                for seed in seeds(args):
                    key = {"maze": maze, "length": length, "method": method, "budget": budget, "seed": seed}
                    key.update(train_from=train_from, inputs=inputs)
                    key, arguments = with_tuned(
                        key, arguments_for(maze, length, method, budget, seed, args), method, args
                    )
                    label = f"{maze} L={length} {method_text(key)} seed {seed}, {budget:,} steps{trained}"
                    cases.append(Case(key, label, arguments))
    return cases


def parse_args() -> argparse.Namespace:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--maze", choices=(*MAZES, "both"), default="passive")
    parser.add_argument("--lengths", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--budget", type=int, default=None, help="env steps per run (default: by length, see BUDGETS)")
    parser.add_argument(
        "--train-from",
        type=int,
        default=None,
        metavar="MIN",
        help="train on corridor lengths MIN..L (log-uniform) with L/10 slack and evaluate on L without slack, as the presets do (default: the preset's, a tenth of L and at most 10; ppo_attention from L = 50 and every method from L = 1000 on: 2)",
    )
    parser.add_argument("--plain", action="store_true", help="train on the plain L-step maze at every L")
    parser.add_argument("--eval-freq", type=int, default=None, help="default: a twentieth of the budget, >= 5000")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--plot", type=Path, default=None, help="where the plot goes (default: beside --results, .png)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown too")
    add_arguments(parser, "memory_length")
    args = parser.parse_args()
    check_arguments(parser, args)
    for name in ("budget", "eval_freq", "train_from"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} is invalid: must be >= 1")
    if min(args.lengths) < 1 or args.eval_episodes < 1:
        parser.error(f"--lengths {min(args.lengths)} / --eval-episodes {args.eval_episodes} is invalid: must be >= 1")
    return args


def main() -> int:
    args = parse_args()
    table = Table(KEY_FIELDS, COLUMNS, "|---|---:|---:|---|---|---:|---:|---:|---|---:|---:|---|---:|---:|", row, plot)
    return sweep_main("memory_length.py", make_cases(args), args, table)


if __name__ == "__main__":
    sys.exit(main())
