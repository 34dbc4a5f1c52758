"""Shared by the sweep benchmarks: one ``train.py`` run per case, in its own process, and a results file.

Each run trains at a fixed budget and seed, evaluating every ``--eval-freq`` steps; a record holds the
final success rate, the evaluation curve, the env steps at which evaluation first reached 0.95, wall
time and training steps per second. Results are appended to a JSON file after every run, so an
interrupted sweep keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def train(arguments: list[str], log_folder: Path) -> dict:
    """Run ``train.py ARGUMENTS`` in a new folder under ``log_folder``; the record of how it went, read
    from the run's ``result.json`` and ``evaluations.npz``, or ``{"error": ...}`` with stderr's last line."""
    log_folder.mkdir(parents=True, exist_ok=True)
    own = Path(tempfile.mkdtemp(prefix="run_", dir=log_folder))
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *arguments, "-f", str(own)], capture_output=True, text=True, cwd=ROOT
    )
    record: dict = {"wall_s": time.perf_counter() - start}
    results = sorted(own.glob("*/*/result.json"))
    if done.returncode or len(results) != 1:
        return {**record, "error": last_line(done.stderr) or f"exit {done.returncode}"}
    folder = results[0].parent
    result = json.loads(results[0].read_text())
    evaluations = np.load(folder / "evaluations.npz")
    rates = evaluations["successes"].mean(axis=1) if "successes" in evaluations else np.zeros(0)
    curve = [[int(t), float(r)] for t, r in zip(evaluations["timesteps"], rates, strict=True)]
    reached = [t for t, rate in curve if rate >= 0.95]
    final = result["evaluation"] or {}
    return {
        **record,
        "success": final.get("success_rate"),
        "mean_return": final.get("mean_return"),
        "steps_to_095": reached[0] if reached else None,
        "steps_per_s": int(result["steps_per_second"]),
        "curve": curve,
        "folder": str(folder),
    }


def best(record: dict) -> float:
    return max((rate for _, rate in record.get("curve", [])), default=float("nan"))


def reached(record: dict) -> str:
    return f"{record['steps_to_095']:,}" if record.get("steps_to_095") is not None else "never"


class Results:
    """The JSON list of records at ``path``: earlier runs can be reused, new ones are saved at once."""

    def __init__(self, path: Path):
        self.path = path
        self.records: list[dict] = json.loads(path.read_text()) if path.is_file() else []

    def find(self, key: dict) -> dict | None:
        found = [r for r in self.records if all(r.get(k) == v for k, v in key.items()) and "error" not in r]
        return found[-1] if found else None

    def add(self, record: dict) -> None:
        self.records.append(record)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.records, indent=1) + "\n")


Case = tuple[dict, str, Callable[[Path], dict]]
"""(the settings that identify a run, a label to print, a function that runs it in a log folder)"""


def run_cases(cases: Iterable[Case], args: argparse.Namespace) -> list[dict]:
    """Run each case, or reuse its saved record (``args.reuse``, ``args.saved_only``); save each new one.

    Run folders go to ``args.log_folder``, or to a temporary folder deleted at the end.
    """
    saved = Results(args.results)
    keep = tempfile.TemporaryDirectory() if args.log_folder is None else None
    log_folder = args.log_folder or Path(keep.name)  # type: ignore[union-attr]
    records = []
    try:
        for key, label, run in cases:
            old = saved.find(key)
            if (args.reuse or args.saved_only) and old:
                records.append(old)
                continue
            if args.saved_only:
                continue
            print(f"running {label} ...", flush=True)
            record = {**key, **run(log_folder)}
            records.append(record)
            saved.add(record)
    finally:
        if keep is not None:
            keep.cleanup()
    return records


def save_plot(records: list[dict], path: Path, plot: Callable[[list[dict], Path], None]) -> None:
    if any("success" in r for r in records):
        path.parent.mkdir(parents=True, exist_ok=True)
        plot(records, path)
        print(f"plot: {path}")
