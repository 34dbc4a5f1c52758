"""How far back can each policy remember? T-Maze success against corridor length, per method.

    python benchmarks/memory_length.py                                  # passive L = 10, 30, 100
    python benchmarks/memory_length.py --maze active --lengths 10 30 100
    python benchmarks/memory_length.py --lengths 300 1000 --methods attention  # long, opt-in

Every (maze, corridor length L, method) trains with ``train.py`` in its own process, at the same
env-step budget and seed, with the presets ``train.py`` ships, and is evaluated every
``--eval-freq`` steps on ``--eval-episodes`` episodes (deterministic actions, unseen seeds).
Reported: the final evaluation's success rate (after the whole budget), the best evaluation's, the
env steps at which evaluation first reached 0.95 success, wall time (set-up and evaluations
included) and training env steps per second.
History-based methods see a whole episode (the preset history: L + 1 steps passive, L + 3 active);
``mlp-stack`` flattens that same history; ``mlp`` sees the newest step; ``ppo_lstm`` is
sb3-contrib's RecurrentPPO. On the active maze every method's steps also hold the previous action,
as the presets give it ("sees" ``obs+action``; zeros on the first step, which is how a policy can
tell the start, where it must step back for the cue, from the corridor, which looks the same).

As the presets do, training episodes draw their corridor length log-uniformly from ``--train-from``
(default a tenth of L, at most 10) to L and get L/10 steps of slack; evaluation is always the plain
L-step maze without slack (``--plain`` trains on that too). Why, in the README: on the plain maze a
policy must walk the whole corridor without a wasted step before it ever reaches the junction, and
by then it has learnt to walk on there too (RecurrentPPO never turns, even at L = 10).

Results are appended to ``--results`` (JSON) after every run, so an interrupted sweep keeps what it
measured and ``--reuse`` picks up where it stopped; the table and the PNG plot (success against L,
one line per method) are made from the runs of this invocation.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import gymnasium as gym
from sweep import ROOT, best, reached, run_cases, save_plot, train

import envs  # noqa: F401  (registers the maze ids)
from agents.presets import preset_for, training_corridors

METHODS = ("attention", "local-attention", "mlp-stack", "mlp", "ppo_lstm")
MAZES = {"passive": "rlattn/TMaze-v0", "active": "rlattn/TMazeActive-v0"}
BUDGETS = {10: 100_000, 30: 150_000, 100: 300_000, 300: 500_000, 1000: 500_000}
"""default env-step budget per corridor length (the next larger length's for lengths not listed)"""
STYLES: dict[str, dict] = {
    "attention": {"marker": "o", "linestyle": "-", "linewidth": 2.5},
    "local-attention": {"marker": "s", "linestyle": "--"},
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


def train_from_for(length: int, args: argparse.Namespace) -> int | None:
    """The shortest training corridor of a run at ``length`` (as the presets choose by default), or None for the plain maze."""
    if args.plain:
        return None
    train_from = args.train_from if args.train_from is not None else training_corridors(length)[0]
    return train_from if train_from < length else None


def training_env(length: int, train_from: int | None) -> tuple[list[str], list[str]]:
    """``--env-kwargs`` and ``--eval-env-kwargs`` values: the plain maze, or mixed lengths in training.

    Both are spelled out, so the preset's own choice never applies.
    """
    if train_from is None:
        return [f"corridor_length:{length}", "min_corridor_length:None"], []
    mixed = [f"corridor_length:{length}", f"min_corridor_length:{train_from}", f"slack:{training_corridors(length)[1]}"]
    return mixed, ["min_corridor_length:None", "slack:0"]


def run_one(maze: str, length: int, method: str, budget: int, args: argparse.Namespace, log_folder: Path) -> dict:
    """One training run's measurements (the sweep adds the settings)."""
    algo, extractor = ("ppo_lstm", "mlp") if method == "ppo_lstm" else ("ppo", method)
    env_kwargs, eval_env_kwargs = training_env(length, train_from_for(length, args))
    arguments = [
        *("--algo", algo, "--extractor", extractor, "--env", MAZES[maze]),
        *("--env-kwargs", *env_kwargs, "-n", str(budget), "--seed", str(args.seed)),
        *(("--eval-env-kwargs", *eval_env_kwargs) if eval_env_kwargs else ()),
        *("--eval-freq", str(args.eval_freq or max(budget // 20, 5_000)), "--eval-episodes", str(args.eval_episodes)),
        *("--save-freq", "-1", "--verbose", "0"),
    ]
    return train(arguments, log_folder)


def trained_on(record: dict) -> str:
    """The corridor lengths a run trained on: ``L``, or ``MIN..L +S`` for mixed lengths with slack."""
    train_from, length = record.get("train_from"), record["length"]
    if train_from is None or train_from >= length:
        return str(length)
    return f"{train_from}..{length} +{training_corridors(length)[1]}"


def observed(record: dict) -> str:
    """What each observed step held: ``obs``, or ``obs+action`` (the previous action too)."""
    return "+".join(["obs", *(record.get("inputs") or "").split()])


def print_table(records: list[dict]) -> None:
    header = f"{'maze':<8} {'L':>5} {'trained on':>14} {'sees':>10} {'method':<16} {'budget':>9} {'success':>8} {'best':>6} {'steps to 0.95':>14} {'wall':>9} {'steps/s':>8}"
    print(header)
    print("-" * len(header))
    for r in records:
        head = (
            f"{r['maze']:<8} {r['length']:>5} {trained_on(r):>14} {observed(r):>10} {r['method']:<16} {r['budget']:>9}"
        )
        if "error" in r:
            print(f"{head} failed: {r['error']}")
            continue
        wall = f"{r['wall_s'] / 60:.1f} min"
        print(f"{head} {r['success']:>8.2f} {best(r):>6.2f} {reached(r):>14} {wall:>9} {r['steps_per_s']:>8}")


def print_markdown(records: list[dict]) -> None:
    print(
        "| maze | L | trained on | sees | method | budget | final success | best | env steps to 0.95 | wall | steps/s |"
    )
    print("|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for r in records:
        head = f"| {r['maze']} | {r['length']} | {trained_on(r)} | {observed(r)} | {r['method']} | {r['budget']:,}"
        if "error" in r:
            print(f"{head} | failed: {r['error']} | | | | |")
            continue
        print(
            f"{head} | {r['success']:.2f} | {best(r):.2f} "
            f"| {reached(r)} | {r['wall_s'] / 60:.1f} min | {r['steps_per_s']:,} |"
        )


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mazes = sorted({r["maze"] for r in records}, key=list(MAZES).index)
    both = len({r.get("train_from") is not None for r in records}) == 2  # plain and mixed runs: tell them apart
    fig, axes = plt.subplots(1, len(mazes), figsize=(5.5 * len(mazes), 4), squeeze=False)
    for ax, maze in zip(axes[0], mazes, strict=True):
        for i, method in enumerate(METHODS):
            for mixed in (False, True):
                points = sorted(
                    (r["length"], r["success"])
                    for r in records
                    if r["maze"] == maze
                    and r["method"] == method
                    and "success" in r
                    and (r.get("train_from") is not None) == mixed
                )
                if not points:
                    continue
                lengths, success = zip(*points, strict=True)
                offset = 0.012 * (i - 2)  # overlapping lines stay visible
                style = {**STYLES[method], **({"markerfacecolor": "none", "linestyle": ":"} if both and mixed else {})}
                label = f"{method}, trained on {'mixed lengths' if mixed else 'the plain maze'}" if both else method
                ax.plot(lengths, [s + offset for s in success], label=label, **style)
        ax.set_xscale("log")
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("corridor length L (steps between cue and decision)")
        ax.set_ylabel("final eval success (lines offset by <= 0.024)")
        ax.set_title(f"{maze} T-Maze")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--maze", choices=(*MAZES, "both"), default="passive")
    parser.add_argument("--lengths", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--budget", type=int, default=None, help="env steps per run (default: by length, see BUDGETS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--train-from",
        type=int,
        default=None,
        metavar="MIN",
        help="train on corridor lengths MIN..L (log-uniform) with L/10 slack and evaluate on L without slack, as the presets do (default: a tenth of L, at most 10)",
    )
    parser.add_argument("--plain", action="store_true", help="train on the plain L-step maze at every L")
    parser.add_argument("--eval-freq", type=int, default=None, help="default: a twentieth of the budget, >= 5000")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "memory_length.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "results" / "memory_length.png")
    parser.add_argument("--reuse", action="store_true", help="reuse runs already in --results with the same settings")
    parser.add_argument("--log-folder", type=Path, default=None, help="keep the run folders here (default: deleted)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown too")
    parser.add_argument("--saved-only", action="store_true", help="run nothing: table and plot from --results")
    args = parser.parse_args()
    for name in ("budget", "eval_freq", "train_from"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} is invalid: must be >= 1")
    if min(args.lengths) < 1 or args.eval_episodes < 1:
        parser.error(f"--lengths {min(args.lengths)} / --eval-episodes {args.eval_episodes} is invalid: must be >= 1")

    mazes = list(MAZES) if args.maze == "both" else [args.maze]
    cases = [
        (
            {
                "maze": maze,
                "length": length,
                "method": method,
                "budget": budget,
                "seed": args.seed,
                "train_from": train_from_for(length, args),
                "inputs": history_inputs(maze),
            },
            f"{maze} L={length} {method}, {budget:,} steps"
            + (f", trained on {train_from_for(length, args)}..{length}" if train_from_for(length, args) else ""),
            partial(run_one, maze, length, method, budget, args),
        )
        for maze in mazes
        for length in args.lengths
        for method in args.methods
        for budget in [args.budget or budget_for(length)]
    ]
    records = run_cases(cases, args)
    print_table(records)
    if args.markdown:
        print_markdown(records)
    save_plot(records, args.plot, plot)


if __name__ == "__main__":
    main()
