"""Does search stay accurate as the scene gets crowded? VisualSearch success against set size, per method.

    python benchmarks/set_size.py                                   # set sizes 4, 8, 16, 32; 500k steps each
    python benchmarks/set_size.py --search conjunction --set-sizes 16 --budget 300000

Every (set size, method) trains with ``train.py`` on ``rlattn/VisualSearch-v0`` (64 x 64 images, an
8 x 8 grid) in its own process, at the same env-step budget and seed, with the presets ``train.py``
ships, evaluating every ``--eval-freq`` steps on ``--eval-episodes`` searches (deterministic
actions, unseen seeds). Methods: ``patch-attention`` (PatchAttentionExtractor) and ``cnn`` (SB3's
NatureCNN). Reported: final and best evaluation success, env steps to first reach 0.95, wall time,
training steps/s and, for patch attention, the attention mass on the target's patch at the answer
step (the trained model replayed on ``--mass-episodes`` searches).

Results are appended to ``--results`` (JSON) after every run (``--reuse`` picks up where a sweep
stopped); the table and the PNG plot (success against set size, one line per method) are made from
the runs of this invocation.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from functools import partial
from pathlib import Path

from sweep import ROOT, best, reached, run_cases, save_plot, train

METHODS = ("patch-attention", "cnn")
ENV = "rlattn/VisualSearch-v0"
STYLES = {"patch-attention": {"marker": "o", "linewidth": 2.5}, "cnn": {"marker": "s", "linestyle": "--"}}


def target_mass(folder: str, episodes: int, seed: int) -> float | None:
    """The replayed model's mean attention mass on the target at the answer step."""
    gif = Path(folder) / "replay.gif"
    command = [sys.executable, str(ROOT / "train.py"), "--replay", folder, "--episodes", str(episodes)]
    done = subprocess.run([*command, "--seed", str(seed), "--video", str(gif)], capture_output=True, text=True)
    if done.returncode:
        return None
    return json.loads(gif.with_suffix(".json").read_text())["target_mass"]


def run_one(set_size: int, method: str, args: argparse.Namespace, log_folder: Path) -> dict:
    """One training run's measurements, and the replayed target mass for patch attention."""
    arguments = [
        *("--algo", "ppo", "--extractor", method, "--env", ENV),
        *("--env-kwargs", f"set_size:{set_size}", f"search:'{args.search}'"),
        *("-n", str(args.budget), "--seed", str(args.seed)),
        *("--eval-freq", str(args.eval_freq), "--eval-episodes", str(args.eval_episodes)),
        *("--save-freq", "-1", "--verbose", "0"),
    ]
    record = train(arguments, log_folder)
    if method == "patch-attention" and "folder" in record:
        record["target_mass"] = target_mass(record["folder"], args.mass_episodes, args.seed + 20_000)
    return record


def print_table(records: list[dict], markdown: bool) -> None:
    columns = (
        "search",
        "set size",
        "method",
        "budget",
        "final success",
        "best",
        "steps to 0.95",
        "wall",
        "steps/s",
        "target mass",
    )
    rows = []
    for r in records:
        head = [r["search"], str(r["set_size"]), r["method"], f"{r['budget']:,}"]
        if "error" in r:
            rows.append([*head, f"failed: {r['error']}", "", "", "", "", ""])
            continue
        mass = f"{r['target_mass']:.3f}" if r.get("target_mass") is not None else "-"
        wall = f"{r['wall_s'] / 60:.1f} min"
        rows.append([*head, f"{r['success']:.2f}", f"{best(r):.2f}", reached(r), wall, f"{r['steps_per_s']:,}", mass])
    if markdown:
        print("| " + " | ".join(columns) + " |")
        print("|---|---:|---|" + "---:|" * (len(columns) - 3))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for method in METHODS:
        done = sorted((r["set_size"], r) for r in records if r["method"] == method and "success" in r)
        if done:
            sizes = [size for size, _ in done]
            left.plot(sizes, [r["success"] for _, r in done], label=method, **STYLES[method])
            reached = [(size, r["steps_to_095"]) for size, r in done if r["steps_to_095"] is not None]
            if reached:
                right.plot(*zip(*reached, strict=True), label=method, **STYLES[method])
    searches = "/".join(sorted({r["search"] for r in records}))
    left.set_ylim(-0.05, 1.05)
    left.set_ylabel("final eval success")
    right.set_yscale("log")
    right.set_ylabel("env steps to first reach 0.95 success")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("set size (items in the 8 x 8 grid)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # the right panel is empty when no run reached 0.95
            ax.legend()
    fig.suptitle(
        f"VisualSearch, {searches} search, {records[0]['budget']:,} env steps per run, seed {records[0]['seed']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set-sizes", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--search", choices=("feature", "conjunction"), default="feature")
    parser.add_argument("--budget", type=int, default=500_000, help="env steps per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-freq", type=int, default=25_000)
    parser.add_argument("--eval-episodes", type=int, default=100)
    parser.add_argument("--mass-episodes", type=int, default=100, help="searches replayed to measure target mass")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "set_size.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "results" / "set_size.png")
    parser.add_argument("--reuse", action="store_true", help="reuse runs already in --results with the same settings")
    parser.add_argument("--saved-only", action="store_true", help="run nothing: table and plot from --results")
    parser.add_argument("--log-folder", type=Path, default=None, help="keep the run folders here (default: deleted)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()
    for name in ("budget", "eval_freq", "eval_episodes", "mass_episodes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} is invalid: must be >= 1")
    if not all(1 <= n <= 64 for n in args.set_sizes):
        parser.error(f"--set-sizes {args.set_sizes} is invalid: each must be 1 .. 64 (the 8 x 8 grid)")

    cases = [
        (
            {"search": args.search, "set_size": set_size, "method": method, "budget": args.budget, "seed": args.seed},
            f"set size {set_size} {method}, {args.budget:,} steps",
            partial(run_one, set_size, method, args),
        )
        for set_size in args.set_sizes
        for method in args.methods
    ]
    records = run_cases(cases, args)
    print_table(records, args.markdown)
    save_plot(records, args.plot, plot)


if __name__ == "__main__":
    main()
