"""What running trials side by side buys: the same small sweep with ``--workers 1`` and ``--workers 2``.

    python benchmarks/sweep_speed.py                 # 4 cases of ~30 s each, each way: ~4 min
    python benchmarks/sweep_speed.py --budget 5000   # a quick look

Both sweeps run in this process on one local Ray session (its start-up is in neither time), each in
its own temporary folder, so the second reads nothing the first wrote. Each case is ``train.py``'s
PPO with the attention extractor on the T-Maze, one seed per case, one torch thread per trial.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from sweep import Case, run_cases, start

from agents.cli import OneLineParser


def cases(n: int, budget: int, length: int) -> list[Case]:
    """``n`` runs that differ only in their seed."""
    arguments = (
        *("--algo", "ppo", "--extractor", "attention", "--env", "rlattn/TMaze-v0"),
        *("--env-kwargs", f"corridor_length:{length}", "-n", str(budget)),
        *("--eval-freq", str(max(budget // 2, 1)), "--eval-episodes", "20", "--save-freq", "-1", "--verbose", "0"),
    )
    return [Case({"seed": seed}, f"seed {seed}", (*arguments, "--seed", str(seed))) for seed in range(n)]


def timed_sweep(todo: list[Case], workers: int) -> float:
    """Wall seconds of one sweep of ``todo`` with ``workers`` trials at a time, in a fresh folder."""
    with tempfile.TemporaryDirectory() as folder:
        args = argparse.Namespace(
            results=Path(folder) / "results.json",
            log_folder=Path(folder) / "runs",
            reuse=False,
            saved_only=False,
            address=None,
            workers=workers,
        )
        start_time = time.perf_counter()
        records = run_cases(todo, args)
        elapsed = time.perf_counter() - start_time
    failed = [r["error"] for r in records if "error" in r]
    if failed:
        raise SystemExit(f"sweep_speed.py: error: a trial failed: {failed[0]}")
    return elapsed


def main() -> int:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=4, help="cases per sweep (seeds 0 .. N-1)")
    parser.add_argument("--budget", type=int, default=30_000, help="env steps per case")
    parser.add_argument("--length", type=int, default=10, help="T-Maze corridor length")
    args = parser.parse_args()
    for flag, value in (("--cases", args.cases), ("--budget", args.budget), ("--length", args.length)):
        if value < 1:
            parser.error(f"{flag} {value} is invalid: must be >= 1")
    start(None, 2)
    todo = cases(args.cases, args.budget, args.length)
    one = timed_sweep(todo, workers=1)
    two = timed_sweep(todo, workers=2)
    print(f"{args.cases} cases of {args.budget:,} env steps (attention, T-Maze L={args.length}):")
    print(f"--workers 1: {one:.1f} s ({one / args.cases:.1f} s per case)")
    print(f"--workers 2: {two:.1f} s")
    print(f"ratio 2 workers / 1 worker: {two / one:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
