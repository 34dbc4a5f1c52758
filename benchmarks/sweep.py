"""Shared by the sweep benchmarks: each case (settings and seed) is one Ray Tune trial training through the
package, in a run folder whose path is a pure function of the case's settings; a results file.

A trial's record is read from its run's ``result.json`` (and the curve from ``evaluations.npz``): the
final success rate, the evaluation curve, the env steps at which evaluation first reached 0.95, wall
time and training steps per second. A case whose run folder already holds a finished ``result.json``
is read, not rerun, so an interrupted sweep rerun with the same command redoes no finished trial.
Trials run on a local Ray (one per core, one torch thread each) or, with ``--address``, on a Ray
cluster whose nodes hold this repository at the same path. Records are also appended to a JSON file
as trials finish (``--reuse`` and ``--saved-only`` read it).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import functools
import hashlib
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import tune
from stats import Interval, iqm_interval, per_seed, steps_interval

from agents.checks import first_line
from agents.cli import OneLineParser, config_from_args
from agents.cluster import cores, start_ray
from agents.config import ConfigError
from agents.plan import SEED_MAX
from agents.resume import CHECKPOINT_S, resume_point, train_resumable
from agents.runfolder import RESULT, write_atomic
from agents.trial_log import same_search

ROOT = Path(__file__).resolve().parent.parent
CASE_FILE = "case.json"
"""in each case's folder: its settings, arguments and wall time (set-up and evaluations included)"""


@dataclass(frozen=True)
class Case:
    key: dict[str, Any]
    """the settings that identify the run, seed included"""
    label: str
    arguments: tuple[str, ...]
    """``train.py`` arguments (the log folder is the case's own)"""
    after: Callable[[dict], dict] | None = None
    """further measurements of the finished run, from its record (must reuse what it wrote before)"""
    current: Callable[[dict], bool] | None = None
    """whether a record saved in ``--results`` still holds today's measurements (``--reuse``); else the
    run is read from its folder again and ``after`` measures it anew"""


def settings_text(values: Any) -> str:
    """Settings as one canonical string, to group or match them (key order does not count)."""
    return json.dumps(values, sort_keys=True, default=str)


def case_digest(case: Case) -> str:
    """A short hash of the case's key, its ``train.py`` arguments and what ``train.py`` resolves them to
    (every preset and default filled in): a preset change gives the same key a new digest, whether it
    alters the arguments (a new training-env keyword, say) or only the values behind them (another
    ``n_heads`` in a preset), so ``--reuse`` and a run folder of the old settings are not taken for it."""
    text = settings_text([case.key, list(case.arguments), resolved_text(tuple(case.arguments))])
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def settings_digest(case: Case) -> str:
    """:func:`case_digest` without the seed: the same for every seed of a cell run with the same settings,
    so a plot can tell a cell's earlier seeds of other settings (a preset changed since) from its own."""
    key = {k: v for k, v in case.key.items() if k != "seed"}
    arguments = with_seed(case.arguments, 0)
    text = settings_text([key, arguments, resolved_text(tuple(arguments))])
    return hashlib.sha1(text.encode()).hexdigest()[:10]


@functools.cache
def resolved_text(arguments: tuple[str, ...]) -> str:
    """The run ``train.py`` would make of ``arguments`` (:func:`agents.plan.resolve`: algorithm, extractor,
    policy and env keywords, history, envs, budget) as canonical text; empty where they do not resolve
    (such a case fails when it runs, with its own message)."""
    from agents.plan import resolve

    try:
        plan = resolve(config_from_args(list(arguments)))
    except (ConfigError, SystemExit):
        return ""
    return settings_text({f.name: getattr(plan, f.name) for f in dataclasses.fields(plan) if f.name != "config"})


def readable(settings: dict[str, Any]) -> str:
    """Settings as a file name: their values joined by ``_``, each reduced to letters, digits and ``.+-``."""
    return "_".join(re.sub(r"[^A-Za-z0-9.+-]+", "-", str(value)) for value in settings.values())


def cell_of(case: Case) -> dict[str, Any]:
    """The settings of a case's table cell: its key without the seed."""
    return {k: v for k, v in case.key.items() if k != "seed"}


def case_folder(log_folder: Path, case: Case) -> Path:
    """The case's folder under ``log_folder``: a pure function of its key and arguments."""
    return log_folder / f"{readable(case.key)}_{case_digest(case)}"


def record_digest(record: dict) -> str | None:
    """The digest of the case a saved record came from: its own field, else the end of its case folder's
    name (records saved before the field existed); None when neither is there."""
    if "digest" in record:
        return str(record["digest"])
    if "folder" in record:
        return Path(record["folder"]).parent.parent.name.rsplit("_", 1)[-1]
    return None


def finished_run(folder: Path) -> Path | None:
    """The run folder under a case's folder whose ``result.json`` says it finished (not interrupted)."""
    for result in sorted(folder.glob(f"*/*/{RESULT}")):
        record = json.loads(result.read_text())
        if record.get("interrupted_by") is None and record.get("evaluation") is not None:
            return result.parent
    return None


def read_record(run: Path) -> dict:
    """A finished run's measurements, from its ``result.json`` and ``evaluations.npz``."""
    result = json.loads((run / RESULT).read_text())
    curve: list[list] = []
    return_curve: list[list] = []
    if (run / "evaluations.npz").is_file():  # none when the budget ended before the first evaluation
        evaluations = np.load(run / "evaluations.npz")
        successes = evaluations["successes"] if "successes" in evaluations else np.zeros(0)
        rates = successes.mean(axis=1) if successes.size else []  # envs without is_success: returns only
        if len(rates) and len(rates) < len(evaluations["timesteps"]):  # rows missing ahead of the first report
            rates = np.concatenate([np.zeros(len(evaluations["timesteps"]) - len(rates)), rates])
        curve = [[int(t), float(r)] for t, r in zip(evaluations["timesteps"], rates, strict=False)]
        returns = evaluations["results"].mean(axis=1)
        return_curve = [[int(t), float(r)] for t, r in zip(evaluations["timesteps"], returns, strict=True)]
    reached = [t for t, rate in curve if rate >= 0.95]
    final = result["evaluation"]
    case = json.loads((run.parent.parent / CASE_FILE).read_text()) if (run.parent.parent / CASE_FILE).is_file() else {}
    return {
        "wall_s": case.get("wall_s", result["wall_seconds"]),
        "success": final.get("success_rate"),
        "mean_return": final.get("mean_return"),
        "steps_to_095": reached[0] if reached else None,
        "steps_per_s": int(result["steps_per_second"]),
        # present where steps_per_s is training alone (results written before 2026-12-07 counted evaluations)
        **(
            {"outside_training_s": round(result["outside_training_seconds"], 1)}
            if result.get("outside_training_seconds") is not None
            else {}
        ),
        "curve": curve,
        "return_curve": return_curve,
        "folder": str(run),
        **({"resumed_at": case["resumed_at"]} if case.get("resumed_at") else {}),
    }


def _train_case(case: Case, folder: Path, checkpoint_s: float = CHECKPOINT_S) -> str | None:
    """Train the case in ``folder``, from its resume point if an earlier attempt left one, else afresh;
    None, or the one-line error that stopped it. ``checkpoint_s`` < 0 saves no resume point."""
    arguments = [*case.arguments, "-f", str(folder)]
    try:
        attempt = train_resumable(config_from_args(arguments), folder, case.label, checkpoint_s=checkpoint_s)
    except ConfigError as error:
        return str(error)
    except SystemExit:
        return f"train.py rejected the arguments {' '.join(arguments)}"
    result = attempt.result
    if result.interrupted_by:
        return f"interrupted ({result.interrupted_by}) at {result.timesteps:,} env steps; the same command resumes it"
    info = {"key": case.key, "arguments": list(case.arguments), "wall_s": attempt.wall_s}
    if attempt.resumed_at:
        info["resumed_at"] = attempt.resumed_at
    (folder / CASE_FILE).write_text(json.dumps(info, indent=1, default=str) + "\n")
    return None


def run_case(case: Case, log_folder: Path, checkpoint_s: float = CHECKPOINT_S) -> dict:
    """The case's record: read from its run folder if that finished, else trained there first (or resumed)."""
    folder = case_folder(log_folder, case)
    run = finished_run(folder)
    if run is None:
        error = _train_case(case, folder, checkpoint_s)
        run = finished_run(folder)
        if run is None:
            return {**case.key, "error": error or "the run did not finish"}
    record = read_record(run)
    if case.after is not None:
        record.update(case.after(record))
    return {**case.key, **record, "digest": case_digest(case), "settings_digest": settings_digest(case)}


class CaseTrial(tune.Trainable):
    """One case as a Ray Tune trial: the whole run in one step (the actor's main thread, where signals work)."""

    def setup(self, config: dict, cases: list[Case], log_folder: Path, checkpoint_s: float) -> None:  # type: ignore[override]
        torch.set_num_threads(1)  # one trial per core
        self.case, self.log_folder, self.checkpoint_s = cases[config["index"]], log_folder, checkpoint_s

    def step(self) -> dict:
        return {"record": json.dumps(run_case(self.case, self.log_folder, self.checkpoint_s), default=str)}


class Results:
    """The JSON list of records at ``path``: earlier runs can be reused, new ones are saved at once."""

    def __init__(self, path: Path):
        self.path = path
        self.records: list[dict] = self._read()

    def _read(self) -> list[dict]:
        """The list on disk (empty if there is none); one line if it is not a JSON list of records."""
        if not self.path.is_file():
            return []
        try:
            records = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise ConfigError(
                f"--results {self.path} cannot be read ({first_line(error)}): move it aside or pass another --results"
            ) from None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise ConfigError(
                f"--results {self.path} is not a JSON list of records: move it aside or pass another --results"
            )
        return records

    def find(self, key: dict, digest: str | None = None) -> dict | None:
        """The latest record with these settings (and, given ``digest``, made with the same arguments)."""
        found = [
            r
            for r in self.records
            if all(r.get(k) == v for k, v in key.items())
            and r.get("tuned") == key.get("tuned")  # an untuned case's key has no "tuned": not a tuned run's record
            and "error" not in r
            and (digest is None or record_digest(r) == digest)
        ]
        return found[-1] if found else None

    def add(self, record: dict) -> None:
        """Append ``record`` to the file as it is now (another sweep may have added to it since this one
        read it), under a lock, written beside it and renamed into place: no record is lost to a
        concurrent sweep and an interrupted write never leaves a broken file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self.records = [*self._read(), record]
                text = json.dumps(self.records, indent=1) + "\n"
                write_atomic(self.path, lambda target: target.write_text(text))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


class _Collect(tune.Callback):
    """Each trial's record as it finishes: kept by case index and saved to the results file at once."""

    def __init__(self, saved: Results):
        self.saved = saved
        self.records: dict[int, dict] = {}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        record = json.loads(result["record"])
        self.records[trial.config["index"]] = record
        if "error" not in record:
            self.saved.add(record)


def start(address: str | None, workers: int) -> None:
    """Ray for the sweep: ``workers`` CPUs locally (at least the cores), or the cluster at ``address``."""
    start_ray(address, max(cores(), workers), paths=[Path(__file__).resolve().parent])


def run_on_ray(
    cases: list[Case], log_folder: Path, workers: int, saved: Results, checkpoint_s: float = CHECKPOINT_S
) -> list[dict]:
    """Every case as a Ray Tune trial, ``workers`` at a time; their records in case order."""
    collect = _Collect(saved)
    trainable = tune.with_parameters(CaseTrial, cases=cases, log_folder=log_folder.resolve(), checkpoint_s=checkpoint_s)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"index": tune.grid_search(list(range(len(cases))))},
        tune_config=tune.TuneConfig(max_concurrent_trials=workers, reuse_actors=False),
        run_config=tune.RunConfig(
            storage_path=str(log_folder.resolve() / "tune"),
            stop={"training_iteration": 1},
            verbose=0,
            callbacks=[collect],
            checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
        ),
    )
    grid = tuner.fit()
    failed = {r.config["index"]: first_line(r.error) for r in grid if r.error is not None}
    # a trial with neither a record nor an error was stopped with its sweep (Ctrl-C): Ray Tune's own
    # "Tuner.restore" advice does not apply, the same sweep command goes on with it
    return [collect.records.get(i) or {**case.key, "error": failed.get(i, INTERRUPTED)} for i, case in enumerate(cases)]


INTERRUPTED = "interrupted"
"""the error of a trial stopped with its sweep"""


def not_done_text(run: dict) -> str:
    """A table's text for a run without a result: failed (its one-line error), or interrupted."""
    error = run.get("error", "?")
    return "interrupted: the same command goes on with it" if error == INTERRUPTED else f"failed: {error}"


def pending_label(case: Case, log_folder: Path, checkpoint_s: float) -> str:
    """The case as the sweep's "running" line names it, with the env steps it resumes at if it does."""
    found = resume_point(case_folder(log_folder, case)) if checkpoint_s >= 0 else None
    return case.label if found is None else f"{case.label} (resumes at {found[1]['env_steps']:,} env steps)"


def run_cases(cases: Iterable[Case], args: argparse.Namespace) -> list[dict]:
    """Each case's record: from ``--results`` (``--reuse``, ``--saved-only``), from its finished run folder,
    or from a new Ray Tune trial; prints the sweep's wall time."""
    start_time, saved, cases = time.perf_counter(), Results(args.results), list(cases)
    records: dict[int, dict] = {}
    pending: list[int] = []
    for i, case in enumerate(cases):
        old = None
        if args.saved_only:  # shows what was saved: of the settings this command names, else the latest
            old = saved.find(case.key, case_digest(case)) or saved.find(case.key)
        elif args.reuse:  # stands in for a run made now: the arguments must match too
            old = saved.find(case.key, case_digest(case))
            if old is not None and case.current is not None and not case.current(old):
                old = None
        if old is not None:
            records[i] = old
        elif not args.saved_only and finished_run(case_folder(args.log_folder, case)) is not None:
            records[i] = run_case(case, args.log_folder)  # finished before: read, not rerun
            if "error" not in records[i] and saved.find(case.key, case_digest(case)) is None:
                saved.add(records[i])  # its trial ended before its record was saved (or into other --results)
        elif not args.saved_only:
            pending.append(i)
    if pending:
        start(args.address, args.workers)
        checkpoint_s = getattr(args, "checkpoint_every", CHECKPOINT_S)
        labels = [pending_label(cases[i], args.log_folder, checkpoint_s) for i in pending]
        print(f"running {len(pending)} trials, {args.workers} at a time: " + "; ".join(labels))
        new = run_on_ray([cases[i] for i in pending], args.log_folder, args.workers, saved, checkpoint_s)
        records.update(zip(pending, new, strict=True))
        stopped = sum(r.get("error") == INTERRUPTED for r in new)
        if stopped:
            print(
                f"{stopped} trials were interrupted: run the same command to go on (finished trials are read from "
                "their run folders, unfinished ones resume from their last saved point)"
            )
    if args.saved_only:
        one_settings_per_cell(cases, records, saved)
    elapsed = time.perf_counter() - start_time
    print(
        f"sweep wall time {elapsed:.1f} s: {len(pending)} trials run ({args.workers} workers), "
        f"{len(records) - len(pending)} read from run folders or --results"
    )
    return [records[i] for i in sorted(records)]


def one_settings_per_cell(cases: list[Case], records: dict[int, dict], saved: Results) -> None:
    """Drop from ``records`` the seeds of a cell saved with other settings than the cell's others (a preset
    changed between seeds): one cell, one set of settings. A cell keeps the settings this command would run
    where any seed has them, else those of its latest saved record."""
    order = {id(r): n for n, r in enumerate(saved.records)}
    cells: dict[str, list[int]] = {}
    for i in records:
        cells.setdefault(settings_text({k: v for k, v in cases[i].key.items() if k != "seed"}), []).append(i)
    dropped = 0
    for members in cells.values():
        # records saved before the field existed have no settings digest: unknown, so kept (as the plot does)
        made_with = {i: d for i in members if (d := records[i].get("settings_digest")) is not None}
        if len(set(made_with.values())) < 2:
            continue
        own = settings_digest(cases[members[0]])
        latest = max(made_with, key=lambda i: order.get(id(records[i]), -1))
        keep = own if own in made_with.values() else made_with[latest]
        for i in made_with:
            if made_with[i] != keep:
                del records[i]
                dropped += 1
    if dropped:
        print(
            f"{dropped} saved runs were made with other settings than the rest of their cell (a preset changed "
            "since): they leave the table; run them again to fill the cell"
        )


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """The flags every sweep shares: seeds, workers, cluster address, where runs and results go, tuned settings."""
    parser.add_argument("--seeds", type=int, default=1, help="seeds per case: SEED .. SEED+N-1")
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument("--workers", type=int, default=cores(), help="trials at once (default: the cores)")
    parser.add_argument(
        "--address", default=None, help="join this Ray cluster (HOST:PORT or auto) instead of a local Ray"
    )
    parser.add_argument(
        "--checkpoint-every",
        type=float,
        default=CHECKPOINT_S,
        metavar="SECONDS",
        help="each trial saves where to resume from this often: a trial killed with its sweep goes on from there "
        "when the same command runs again (-1: it starts over)",
    )
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / f"{name}.json")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse runs already in --results with the same settings, train.py arguments and resolved presets (after a preset change they train again)",
    )
    parser.add_argument("--saved-only", action="store_true", help="run nothing: table and plot from --results")
    parser.add_argument(
        "--new-plot",
        action="store_true",
        help="the plot draws this command's runs only (by default it adds them to the runs it drew before, "
        "listed beside it in .runs.json)",
    )
    parser.add_argument(
        "--tuned",
        nargs="+",
        default=[],
        metavar="METHOD=FILE",
        help="train METHOD with the settings of FILE, a best_params.json of train.py --optimize (its -params); "
        "the table names it 'METHOD, tuned'",
    )
    parser.add_argument(
        "--tune",
        type=int,
        default=None,
        metavar="N",
        help="first tune every method that --tuned does not name with train.py --optimize, N trials each on "
        "--tune-seed, for each of its cells; the cells then train with the settings found ('METHOD, tuned')",
    )
    parser.add_argument("--tune-seed", type=int, default=0, help="the seed the --tune searches train on")
    parser.add_argument(
        "--tuned-folder",
        type=Path,
        default=ROOT / "benchmarks" / "tuned" / name,
        help="where --tune keeps each cell's best settings (a later run with the same arguments reuses them)",
    )
    parser.add_argument(
        "--log-folder",
        type=Path,
        default=ROOT / "logs" / "sweeps" / name,
        help="one folder per case, named by its settings: a rerun reads finished cases instead of training them",
    )


def check_arguments(parser: OneLineParser, args: argparse.Namespace) -> None:
    """``--seeds``, ``--workers`` and ``--seed`` in range, ``--tuned`` files read (one line, exit 2)."""
    bounds = [("--seeds", args.seeds, 1), ("--workers", args.workers, 1), ("--seed", args.seed, 0)]
    bounds += [("--tune", args.tune, 1)] if args.tune is not None else []
    bounds += [("--tune-seed", args.tune_seed, 0)]
    for flag, value, low in bounds:
        if value < low:
            parser.error(f"{flag} {value} is invalid: must be >= {low}")
    if args.tune_seed > SEED_MAX:
        parser.error(f"--tune-seed {args.tune_seed} is invalid: must be <= {SEED_MAX}")
    if args.seed + args.seeds - 1 > SEED_MAX:
        parser.error(f"--seed {args.seed} is invalid with --seeds {args.seeds}: the last seed must be <= {SEED_MAX}")
    if args.tune is not None and args.seed <= args.tune_seed < args.seed + args.seeds:
        parser.error(
            f"--tune-seed {args.tune_seed} is invalid with --seed {args.seed} --seeds {args.seeds}: the tuned cells "
            f"would be scored on the seed their settings were picked on; use --seed {args.tune_seed + 1} or another --tune-seed"
        )
    if args.checkpoint_every < 0 and args.checkpoint_every != -1:
        parser.error(f"--checkpoint-every {args.checkpoint_every:g} is invalid: must be >= 0 seconds, or -1 for none")
    try:
        args.tuned = read_tuned(args.tuned, args.methods)
    except ConfigError as error:
        parser.error(str(error))


@dataclass(frozen=True)
class Tuned:
    """A method's tuned settings: where they came from and the ``-params`` values that set them."""

    source: str
    """the file, relative to the repository where it lies in it (what the table and the case key name)"""
    params: tuple[str, ...]


TUNED_USAGE = "expected METHOD=FILE, FILE a best_params.json written by train.py --optimize"


def read_tuned(items: Sequence[str], methods: Sequence[str]) -> dict[str, Tuned]:
    """``--tuned METHOD=FILE ...``: each method's settings from the ``params`` of its ``best_params.json``."""
    tuned: dict[str, Tuned] = {}
    for item in items:
        method, sep, name = item.partition("=")
        if not sep or not method or not name:
            raise ConfigError(f"--tuned {item!r} is invalid: {TUNED_USAGE}")
        if method not in methods:
            raise ConfigError(
                f"--tuned {item!r} is invalid: {method!r} is not among this sweep's --methods ({', '.join(methods)})"
            )
        if method in tuned:
            raise ConfigError(f"--tuned {item!r} is invalid: {method!r} is tuned twice")
        path = Path(name)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(f"--tuned {item!r}: {name} cannot be read ({first_line(error)}); {TUNED_USAGE}") from None
        params = record.get("params") if isinstance(record, dict) else None
        if not isinstance(params, list) or not all(isinstance(p, str) and ":" in p for p in params):
            raise ConfigError(f"--tuned {item!r}: {name} has no 'params' list of KEY:VALUE strings; {TUNED_USAGE}")
        resolved = path.resolve()
        source = str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(resolved)
        tuned[method] = Tuned(source, tuple(params))
    return tuned


def with_tuned(key: dict, arguments: tuple[str, ...], method: str, args: argparse.Namespace) -> tuple[dict, tuple]:
    """The case's key and ``train.py`` arguments with the method's tuned settings, if ``--tuned`` gave them
    (an untuned case is left as it was, so its folder and saved records still match)."""
    tuned = getattr(args, "tuned", {}).get(method)
    if tuned is None:
        return key, arguments
    return {**key, "tuned": tuned.source}, add_params(arguments, tuned.params)


def add_params(arguments: tuple[str, ...], params: Sequence[str]) -> tuple[str, ...]:
    """``arguments`` with ``params`` after its ``-params`` values (a later key wins), or as a new ``-params``:
    one list, so the printed command reads as ``train.py`` takes it."""
    if "-params" not in arguments:
        return (*arguments, "-params", *params)
    start = arguments.index("-params") + 1
    end = next((i for i in range(start, len(arguments)) if arguments[i].startswith("-")), len(arguments))
    return (*arguments[:end], *params, *arguments[end:])


def tune_cases(cases: list[Case], args: argparse.Namespace) -> list[Case]:
    """``--tune N``: each cell of an untuned method searched with ``train.py --optimize`` (N trials of the
    cell's own run on ``--tune-seed``, the first trial its own settings), then its cases with the settings
    found. A cell whose search already ran with the same arguments (its file in ``--tuned-folder``) is
    not searched again."""
    groups: dict[str, list[int]] = {}
    for i, case in enumerate(cases):
        if case.key.get("tuned") is None:  # --tuned gave this method its settings
            groups.setdefault(settings_text(cell_of(case)), []).append(i)
    out = list(cases)
    for indices in groups.values():
        first = cases[indices[0]]
        tuned = tuned_cell(first, args)
        for i in indices:
            case = cases[i]
            key = {**case.key, "tuned": tuned.source}
            out[i] = replace(
                case, key=key, label=f"{case.label}, tuned", arguments=add_params(case.arguments, tuned.params)
            )
    return out


def with_seed(arguments: Sequence[str], seed: int) -> list[str]:
    """``train.py`` arguments with ``--seed`` set to ``seed``."""
    out = list(arguments)
    if "--seed" in out:
        out[out.index("--seed") + 1] = str(seed)
        return out
    return [*out, "--seed", str(seed)]


def tuned_cell(case: Case, args: argparse.Namespace) -> Tuned:
    """The tuned settings of ``case``'s cell: read from ``--tuned-folder`` if a search with the same
    arguments wrote them, else searched now (``train.py --optimize`` on Ray, ``--workers`` trials at once).

    Every method searches its algorithm's settings only (:func:`tuned_keys`), so each gets the same kind
    of search and keeps its own architecture and whatever the sweep fixes."""
    from agents.tune import StoppedSearch, optimize

    cell = readable(cell_of(case))
    path = Path(args.tuned_folder) / f"{cell}_tune{args.tune}.json"
    arguments = with_seed(case.arguments, args.tune_seed)
    keys = tuned_keys(arguments)
    # what the arguments resolve to: a preset changed since, behind the same arguments, is another search
    resolved = hashlib.sha1(resolved_text(tuple(arguments)).encode()).hexdigest()[:10]
    searched = {"arguments": arguments, "n_trials": args.tune, "space": keys, "resolved": resolved}
    record = json.loads(path.read_text()) if path.is_file() else None
    name = case.label.rsplit(" seed ", 1)[0]
    if record is None or not same_search(record.get("searched"), searched):
        if args.saved_only:
            raise ConfigError(f"--tune {args.tune}: no search of {name} with these arguments in {path.parent}")
        start(args.address, args.workers)  # before optimize's own start: the sweep's workers import its modules
        print(f"tuning {name}: {args.tune} trials on seed {args.tune_seed}, searching {' '.join(keys)}")
        log_folder = Path(args.log_folder) / "searches" / f"{cell}_{case_digest(case)}"
        flags = ["--optimize", "--n-trials", str(args.tune), "-f", str(log_folder), "--search-space", *keys]
        began = time.perf_counter()
        try:  # an interrupted search of this cell goes on where it stopped (here, or from its trial log)
            result = optimize(
                config_from_args([*arguments, *flags]), workers=args.workers, trial_log=trial_log_of(path)
            )
        except ConfigError as error:
            raise ConfigError(f"tuning {name}: {error}") from None
        if isinstance(result, StoppedSearch):
            log = trial_log_of(path)
            where = f"; its ended trials are in {log}, from which the search goes on elsewhere" if log.is_file() else ""
            print(f"tuning {name}: {result.summary()}{where}", flush=True)
            raise SystemExit(result.exit_code)
        wall = time.perf_counter() - began
        record = {**json.loads((result.folder / "best_params.json").read_text()), "searched": searched, "wall_s": wall}
        when = ""
        if result.resumed is not None:  # the wall time is this attempt's only
            record["resumed_after_trials"] = result.resumed
            when = f" (resumed after {result.resumed} finished trials)"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"{name}: {result.best_line()}; search wall time {wall:.1f} s{when}; its cases train with them ({path})")
    resolved = path.resolve()
    source = str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(resolved)
    return Tuned(source, tuple(record["params"]))


def trial_log_of(tuned: Path) -> Path:
    """The trial log (:mod:`agents.trial_log`) beside a cell's tuned settings: ``CELL_tuneN.trials.jsonl``.
    Committed with them, it lets a search that a machine did not finish go on elsewhere."""
    return tuned.with_name(f"{tuned.stem}.trials.jsonl")


def tuned_keys(arguments: Sequence[str]) -> list[str]:
    """What ``--tune`` searches for a run: its algorithm's keys of the default space, not the attention
    architecture (``embed_dim``, ``n_layers``, ``n_heads``: the baselines have none to search) and not
    what the run's own ``-params`` fix."""
    from agents.plan import resolve
    from agents.search_space import EXTRACTOR_KEYS, default_space

    cfg = config_from_args(list(arguments))
    return [k for k in default_space(resolve(cfg)) if k not in EXTRACTOR_KEYS and k not in cfg.hyperparams]


def variants(table: list[Cell], methods: Sequence[str]) -> list[tuple[str, bool]]:
    """The (method, tuned) pairs the table holds, in ``methods`` order, each method's untuned one first."""
    present = {(c.settings["method"], bool(c.settings.get("tuned"))) for c in table}
    return [(m, tuned) for m in methods for tuned in (False, True) if (m, tuned) in present]


def is_variant(cell: Cell, method: str, tuned: bool) -> bool:
    return cell.settings["method"] == method and bool(cell.settings.get("tuned")) == tuned


def method_text(settings: dict) -> str:
    """The method as a table names it: ``ppo_lstm``, or ``ppo_lstm, tuned`` for a run with ``--tuned`` settings."""
    return f"{settings['method']}, tuned" if settings.get("tuned") else str(settings["method"])


def seeds(args: argparse.Namespace) -> range:
    return range(args.seed, args.seed + args.seeds)


@dataclass(frozen=True)
class Cell:
    """One cell of a table: the runs of the same settings over seeds, and their statistics."""

    settings: dict
    runs: list[dict]
    """by seed; a failed run holds ``error``"""
    success: Interval | None
    """IQM and 95% CI of the final success over the seeds that ran"""
    steps: Interval | None
    """IQM and 95% CI of env steps to 0.95, where every seed reached it"""

    @property
    def done(self) -> list[dict]:
        return [r for r in self.runs if "success" in r]

    def mean(self, name: str) -> float:
        return float(np.mean([r[name] for r in self.done])) if self.done else float("nan")

    def speed(self) -> float:
        """Training env steps/s over the seeds that ran: their steps over their seconds (the harmonic mean
        of their rates, the seeds of a cell training equal steps), not the mean of the rates."""
        rates = [r["steps_per_s"] for r in self.done]
        return len(rates) / sum(1 / max(rate, 1e-9) for rate in rates) if rates else float("nan")

    def speed_text(self) -> str:
        """:meth:`speed` for a table, marked ``*`` where a seed's rate counted its evaluations' time too
        (records made before 2026-12-07): see :data:`SPEED_NOTE`."""
        return f"{self.speed():,.0f}" + ("*" if any("outside_training_s" not in r for r in self.done) else "")


SPEED_NOTE = (
    "steps/s (and ratios) marked * count the time of the runs' evaluations too (records made before 2026-12-07); "
    "the others count training alone"
)


def cells(records: list[dict], fields: Sequence[str]) -> list[Cell]:
    """Records grouped by ``fields`` (the settings but the seed), in first-seen order, with their statistics."""
    groups: dict[str, tuple[dict, list[dict]]] = {}
    for record in records:
        settings = {k: record.get(k) for k in fields}
        groups.setdefault(settings_text(settings), (settings, []))[1].append(record)
    out = []
    for settings, group in groups.values():
        runs = sorted(group, key=lambda r: r.get("seed", 0))
        done = [r for r in runs if r.get("success") is not None]  # envs without is_success report returns only
        success = iqm_interval([r["success"] for r in done]) if done else None
        # a seed that failed or is unfinished may never have reached it: no interval claims every seed did
        ended = all("error" not in r for r in runs)
        steps = steps_interval([r["steps_to_095"] for r in done]) if ended else None
        out.append(Cell(settings, runs, success, steps))
    return out


def seeds_text(cell: Cell) -> str:
    """The table's seeds column: ``3``, or ``2/3`` where a seed failed or is unfinished (the IQM is over the 2)."""
    ran, listed = len(cell.done), len(cell.runs)
    return str(listed) if ran == listed else f"{ran}/{listed}"


def success_text(cell: Cell) -> tuple[str, str]:
    """(IQM [CI] of final success, per-seed values) for a table."""
    if cell.success is None:
        return not_done_text(cell.runs[0]), ""
    return str(cell.success), per_seed([r.get("success") for r in cell.runs])


def steps_text(cell: Cell) -> tuple[str, str]:
    """(IQM [CI] of env steps to 0.95, or how many seeds never reached it; per-seed values)."""
    values = [r.get("steps_to_095") for r in cell.done]
    never = sum(v is None for v in values)
    if cell.steps:
        summary = cell.steps.steps()
    elif never:
        summary = f"never in {never}/{len(values)}"
    else:  # every seed that ran reached it, but not every seed ran: no interval over the seeds that did
        summary = f"- ({len(values)}/{len(cell.runs)} seeds ran)" if values else "-"
    # in seed order like the success column: "-" for a seed that failed or is unfinished
    by_seed = [per_seed([r.get("steps_to_095")], steps=True) if "success" in r else "-" for r in cell.runs]
    return summary, " ".join(by_seed)


def best(record: dict) -> float:
    return max((rate for _, rate in record.get("curve", [])), default=float("nan"))


def plotted_runs_path(plot_path: Path) -> Path:
    """Where the runs a plot draws are listed: beside it (``memory_length.png``: ``memory_length.runs.json``)."""
    return plot_path.with_suffix(".runs.json")


def run_identity(record: dict, fields: Sequence[str]) -> dict:
    """What names one run of a table: its cell's settings and its seed."""
    return {**{k: record.get(k) for k in fields}, "seed": record.get("seed")}


def plotted_records(
    records: list[dict], path: Path, fields: Sequence[str], results: Path, slot: Sequence[str] | None = None
) -> list[dict]:
    """The runs a sweep draws: those its plot at ``path`` drew before, each replaced by this command's run
    where it has one and otherwise read again from ``results`` (the latest record), then this command's
    other runs. A sweep of part of a table so adds to its plot; ``--new-plot`` draws this command's runs
    only. ``slot`` (fields among ``fields``) says where the plot draws a cell: a listed run whose slot this
    command filled with another cell (another budget, another search) leaves the plot."""
    listed = plotted_runs_path(path)
    if not listed.is_file():
        return records
    try:
        identities = [run_identity(i, fields) for i in json.loads(listed.read_text())]
    except (ValueError, TypeError, AttributeError) as error:
        print(f"plot: {listed} is unreadable ({error}): the plot draws this command's runs only")
        return records

    def place(identity: dict) -> str:
        return settings_text({k: identity.get(k) for k in slot}) if slot is not None else ""

    # a run that failed or was interrupted now does not hide its earlier record
    now = {settings_text(run_identity(r, fields)): r for r in records if "error" not in r}
    cells_now = {settings_text({k: r.get(k) for k in fields}) for r in now.values()}
    settings_now = {settings_text({k: r.get(k) for k in fields}): r.get("settings_digest") for r in now.values()}
    filled = {place(r) for r in now.values()} if slot is not None else set()
    saved, missing, other_settings = Results(results), 0, 0
    out: list[dict] = []
    seen: set[str] = set()
    for identity in identities:
        name = settings_text(identity)
        if name in seen:
            continue
        cell = settings_text({k: identity[k] for k in fields})
        if place(identity) in filled and cell not in cells_now:
            continue  # this command drew another cell there
        record = now.get(name) or saved.find(identity)
        if record is None:
            missing += 1
            continue
        made_with, current = record.get("settings_digest"), settings_now.get(cell)
        if name not in now and made_with is not None and current is not None and made_with != current:
            other_settings += 1  # this command ran the cell with other settings: one cell, one set of settings
            continue
        out.append(record)
        seen.add(name)
    if missing:
        print(f"plot: {missing} of the {len(identities)} runs it drew before are not in {results}: they leave it")
    if other_settings:
        print(
            f"plot: {other_settings} of the runs it drew before belong to cells this command ran with other "
            "settings (a preset changed since): they leave it"
        )
    return out + [r for name, r in now.items() if name not in seen]


def save_plot(table: list[Cell], path: Path, plot: Callable[[list[Cell], Path], None], fields: Sequence[str]) -> None:
    """Draw ``table`` at ``path`` and list the runs it drew beside it (see :func:`plotted_records`)."""
    if any(cell.done for cell in table):
        path.parent.mkdir(parents=True, exist_ok=True)
        plot(table, path)
        drawn = [run_identity(r, fields) for cell in table for r in cell.done]
        plotted_runs_path(path).write_text(json.dumps(drawn, indent=1, default=str) + "\n")
        print(f"plot: {path} ({len(drawn)} runs, listed in {plotted_runs_path(path).name})")


def print_rows(columns: Sequence[str], rows: list[list[str]], align: str, markdown: bool = False) -> None:
    """A table of strings: right-aligned plain text, or Markdown with the separator row ``align``."""
    if markdown:
        print("| " + " | ".join(columns) + " |")
        print(align)
        for values in rows:
            print("| " + " | ".join(values) + " |")
        return
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for values in rows:
        print("  ".join(v.rjust(w) for v, w in zip(values, widths, strict=True)))


@dataclass(frozen=True)
class Table:
    """How a sweep reports: cells grouped by ``fields``, one row of ``columns`` per cell, an optional plot."""

    fields: Sequence[str]
    columns: Sequence[str]
    align: str
    """the Markdown separator row"""
    row: Callable[[Cell], list[str]]
    plot: Callable[[list[Cell], Path], None] | None = None
    compare: Callable[[Cell, list[Cell]], list[str]] | None = None
    """the last columns of a row, from its cell and every cell of the table (a ratio to another method's row)"""
    plot_slot: Sequence[str] | None = None
    """the fields that say where the plot draws a cell, where it draws one cell only (see :func:`plotted_records`)"""

    def rows(self, grouped: list[Cell]) -> list[list[str]]:
        return [self.row(cell) + (self.compare(cell, grouped) if self.compare else []) for cell in grouped]


def sweep_main(name: str, cases: list[Case], args: argparse.Namespace, table: Table) -> int:
    """Run the cases, print the table (and its Markdown with ``--markdown``), save the plot; exit code 2 on a config error."""
    try:
        if getattr(args, "tune", None):
            cases = tune_cases(cases, args)
        records = run_cases(cases, args)
    except ConfigError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return 2
    grouped = cells(records, table.fields)
    rows = table.rows(grouped)
    print_rows(table.columns, rows, table.align)
    if args.markdown:
        print_rows(table.columns, rows, table.align, markdown=True)
    if any(value.endswith("*") for row in rows for value in row):
        print(SPEED_NOTE)
    if table.plot is not None:  # beside the results unless told: a scratch sweep leaves the committed plot alone
        path = getattr(args, "plot", None) or args.results.with_suffix(".png")
        if not getattr(args, "new_plot", False):  # the plot keeps the runs it drew that this command did not make
            drawn = plotted_records(records, path, table.fields, args.results, table.plot_slot)
            grouped = cells(drawn, table.fields)
        save_plot(grouped, path, table.plot, table.fields)
    return 0
