"""Sweeps as Ray Tune trials read back from result.json, reruns that train nothing twice, tuning with Optuna
(on Ray Tune and in a shared study), and the statistics over seeds checked by hand."""

import argparse
import dataclasses
import json
import multiprocessing
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from stable_baselines3.common.callbacks import BaseCallback

from agents import resume
from agents.cli import config_from_args, main
from agents.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import stats  # noqa: E402
import sweep  # noqa: E402

TRAIN = ["--env-kwargs", "corridor_length:3", "-n", "256", "--n-envs", "2", "--eval-freq", "128"]
TINY = (*TRAIN, "--extractor", "mlp", "--eval-episodes", "4", "--save-freq", "-1", "--verbose", "0")
TINY_PARAMS = ("-params", "n_steps:64", "batch_size:64")


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for every test here (its start-up is most of their time)."""
    import ray

    sweep.start(None, 2)
    yield
    ray.shutdown()


def tiny_cases(seeds=(0, 1)) -> list[sweep.Case]:
    return [
        sweep.Case({"method": "mlp", "seed": s}, f"mlp seed {s}", (*TINY, "--seed", str(s), *TINY_PARAMS))
        for s in seeds
    ]


def sweep_args(tmp_path: Path) -> argparse.Namespace:
    return argparse.Namespace(
        results=tmp_path / "results.json",
        log_folder=tmp_path / "runs",
        reuse=False,
        saved_only=False,
        address=None,
        workers=2,
    )


def result_stamps(folder: Path) -> dict[Path, int]:
    """The runs' result files (Tune keeps its own result.json per trial under tune/)."""
    return {p: p.stat().st_mtime_ns for p in folder.glob("*/ppo/*/result.json")}


def test_sweep_runs_each_case_as_a_ray_trial_and_reads_its_result_json(ray_session, tmp_path):
    args, cases = sweep_args(tmp_path), tiny_cases()
    records = sweep.run_cases(cases, args)
    assert [r["seed"] for r in records] == [0, 1] and all("error" not in r for r in records), records
    for case, record in zip(cases, records, strict=True):
        run = Path(record["folder"])
        assert run.parent.parent == sweep.case_folder(args.log_folder, case)  # ppo/ENV_1 in the case's folder
        result = json.loads((run / "result.json").read_text())
        assert record["success"] == result["evaluation"]["success_rate"]
        assert [t for t, _ in record["curve"]] == [128, 256]
    assert len(json.loads(args.results.read_text())) == 2  # saved as the trials finished
    (cell,) = sweep.cells(records, ["method"])
    assert cell.success is not None and cell.success.values == tuple(r["success"] for r in records)


def test_the_plot_goes_beside_the_results_unless_told(tmp_path, capsys):
    """A sweep with its own --results (a scratch run) draws its plot there, not over the committed one."""
    cases = tiny_cases()
    saved = sweep.Results(tmp_path / "scratch.json")
    for case in cases:
        saved.add({**case.key, "success": 1.0, "steps_to_095": 256, "curve": [[256, 1.0]]})
    drawn: list[Path] = []
    table = sweep.Table(["method"], ["method"], "|---|", lambda c: [c.settings["method"]], lambda t, p: drawn.append(p))
    args = argparse.Namespace(**{**vars(sweep_args(tmp_path)), "results": tmp_path / "scratch.json"})
    args.saved_only, args.markdown, args.plot = True, False, None
    assert sweep.sweep_main("test", cases, args, table) == 0
    args.plot = tmp_path / "elsewhere.png"
    assert sweep.sweep_main("test", cases, args, table) == 0
    assert drawn == [tmp_path / "scratch.png", tmp_path / "elsewhere.png"]
    assert f"plot: {tmp_path / 'scratch.png'}" in capsys.readouterr().out


def test_a_sweep_of_part_of_a_table_adds_to_its_plot_and_new_plot_starts_it_over(tmp_path, monkeypatch, capsys):
    """The committed plot keeps the runs a sweep of other cells did not make; a rerun cell replaces its old
    runs there; ``--new-plot`` draws the command's own runs only."""

    def case(method: str, seed: int) -> sweep.Case:
        return sweep.Case({"method": method, "seed": seed}, f"{method} seed {seed}", ())

    def record(method: str, seed: int, success: float) -> dict:
        return {"method": method, "seed": seed, "success": success, "steps_to_095": None, "curve": [[256, success]]}

    saved = sweep.Results(tmp_path / "results.json")
    for method, seed in [("a", 0), ("a", 1), ("b", 0), ("b", 1)]:
        saved.add(record(method, seed, 0.25))
    drawn: list[list[tuple[str, list[float]]]] = []

    def plot(table: list[sweep.Cell], path: Path) -> None:
        drawn.append([(c.settings["method"], [r["success"] for r in c.done]) for c in table])

    table = sweep.Table(["method"], ["method"], "|---|", lambda c: [c.settings["method"]], plot)
    args = sweep_args(tmp_path)
    args.markdown, args.plot, args.saved_only, args.new_plot = False, None, True, False
    grid = [case(m, s) for m in "ab" for s in (0, 1)]
    assert sweep.sweep_main("test", grid, args, table) == 0
    assert drawn[-1] == [("a", [0.25, 0.25]), ("b", [0.25, 0.25])]
    listed = json.loads((tmp_path / "results.runs.json").read_text())
    assert listed == [{"method": m, "seed": s} for m in "ab" for s in (0, 1)]

    # a sweep trains b's seed 1 again and a new method c: a's runs and b's seed 0 stay in the plot
    made = [record("b", 1, 1.0), record("c", 0, 0.5)]
    for r in made:
        saved.add(r)
    monkeypatch.setattr(sweep, "run_cases", lambda cases, args: made)
    args.saved_only = False
    assert sweep.sweep_main("test", [case("b", 1), case("c", 0)], args, table) == 0
    assert drawn[-1] == [("a", [0.25, 0.25]), ("b", [0.25, 1.0]), ("c", [0.5])]
    out = capsys.readouterr().out
    assert f"plot: {tmp_path / 'results.png'} (5 runs" in out, out
    assert len(json.loads((tmp_path / "results.runs.json").read_text())) == 5

    # a saved record dropped from the results file (its run removed) leaves the plot, nothing fails
    kept = [r for r in saved.records if r["method"] != "a" or r["seed"] != 0]
    saved.path.write_text(json.dumps(kept))
    saved.add(record("b", 0, 0.75))  # a later record of a listed run is read again
    monkeypatch.setattr(sweep, "run_cases", lambda cases, args: [record("c", 0, 0.5)])
    assert sweep.sweep_main("test", [case("c", 0)], args, table) == 0
    assert drawn[-1] == [("a", [0.25]), ("b", [0.75, 1.0]), ("c", [0.5])]
    assert "1 of the 5 runs it drew before are not in" in capsys.readouterr().out

    # --saved-only of one cell adds nothing new and keeps the rest; --new-plot draws only its grid
    monkeypatch.undo()
    args.saved_only = True
    assert sweep.sweep_main("test", [case("c", 0)], args, table) == 0
    assert drawn[-1] == [("a", [0.25]), ("b", [0.75, 1.0]), ("c", [0.5])]
    args.new_plot = True
    assert sweep.sweep_main("test", [case("c", 0)], args, table) == 0
    assert drawn[-1] == [("c", [0.5])]
    assert json.loads((tmp_path / "results.runs.json").read_text()) == [{"method": "c", "seed": 0}]


def test_a_plots_earlier_runs_survive_a_failed_rerun_and_leave_for_another_budget_in_their_place(tmp_path, capsys):
    """With the third-party table's fields: a rerun that failed keeps the earlier record in the plot; a run
    of another budget at the same task, method and variant takes the bar's place; an unreadable list of
    drawn runs gives way to this command's runs with a message."""
    fields, slot = ("task", "method", "budget", "tuned"), ("task", "method", "tuned")

    def record(task: str, budget: int, seed: int, success: float | None = 0.5, **extra: object) -> dict:
        return {"task": task, "method": "ppo_attention", "budget": budget, "tuned": None, "seed": seed} | (
            {"success": success, **extra} if "error" not in extra else extra
        )

    results = sweep.Results(tmp_path / "third_party.json")
    earlier = [record("S7", 1_000_000, s) for s in (0, 1)] + [record("S11", 500_000, s, 0.6) for s in (0, 1)]
    for r in earlier:
        results.add(r)
    plot = tmp_path / "third_party.png"
    sweep.plotted_runs_path(plot).write_text(json.dumps([sweep.run_identity(r, fields) for r in earlier]))

    def drawn(records: list[dict]) -> list[tuple[str, int, int, float]]:
        got = sweep.plotted_records(records, plot, fields, results.path, slot)
        return [(r["task"], r["budget"], r["seed"], r["success"]) for r in got]

    failed = [record("S7", 1_000_000, 1, error="interrupted")]
    assert drawn(failed) == [
        ("S7", 1_000_000, 0, 0.5),
        ("S7", 1_000_000, 1, 0.5),
        ("S11", 500_000, 0, 0.6),
        ("S11", 500_000, 1, 0.6),
    ]
    longer = [record("S11", 2_000_000, 0, 0.9)]
    assert drawn(longer) == [("S7", 1_000_000, 0, 0.5), ("S7", 1_000_000, 1, 0.5), ("S11", 2_000_000, 0, 0.9)]
    same_cell = [record("S11", 500_000, 1, 0.7)]  # one seed of a listed cell again: the other seed stays
    assert drawn(same_cell)[2:] == [("S11", 500_000, 0, 0.6), ("S11", 500_000, 1, 0.7)]

    # seeds of a cell made under other settings (a preset changed since) leave it when this command runs
    # the cell with its current ones; records saved before settings digests existed stay
    for r in (record("S7", 1_000_000, s, 0.1, settings_digest="old") for s in (0, 1)):
        results.add(r)
    capsys.readouterr()
    rerun = [record("S7", 1_000_000, 0, 0.9, settings_digest="new")]
    assert drawn(rerun)[:1] == [("S7", 1_000_000, 0, 0.9)] and ("S7", 1_000_000, 1, 0.1) not in drawn(rerun)
    assert (
        "1 of the runs it drew before belong to cells this command ran with other settings" in capsys.readouterr().out
    )
    assert ("S7", 1_000_000, 1, 0.1) in drawn([record("S7", 1_000_000, 0, 0.9, settings_digest="old")])
    assert ("S11", 500_000, 1, 0.6) in drawn([record("S11", 500_000, 0, 0.9, settings_digest="new")])

    sweep.plotted_runs_path(plot).write_text("[{")
    assert drawn(longer) == [("S11", 2_000_000, 0, 0.9)]
    assert "is unreadable" in capsys.readouterr().out


def test_an_interrupted_sweep_rerun_trains_no_finished_trial(ray_session, tmp_path, monkeypatch):
    args, cases = sweep_args(tmp_path), tiny_cases()
    trained: list[int] = []
    real = sweep.run_on_ray
    monkeypatch.setattr(
        sweep, "run_on_ray", lambda pending, *rest: trained.append(len(pending)) or real(pending, *rest)
    )

    sweep.run_cases(cases[:1], args)  # the sweep stopped after its first trial
    first = result_stamps(args.log_folder)
    records = sweep.run_cases(cases, args)  # the same command again: only the second case trains
    assert trained == [1, 1] and len(records) == 2
    assert all(result_stamps(args.log_folder)[p] == stamp for p, stamp in first.items())

    stamps = result_stamps(args.log_folder)
    again = sweep.run_cases(cases, args)
    assert trained == [1, 1]  # no Ray trial at all
    assert result_stamps(args.log_folder) == stamps and len(stamps) == 2
    assert [r["success"] for r in again] == [r["success"] for r in records]
    assert sorted(p.name for p in args.log_folder.glob("*/ppo/*")) == ["rlattn-TMaze-v0_1"] * 2
    # runs read back from their folders whose records never reached --results (the driver died before it
    # saved them, or they were saved to another file) are saved there, once
    args.results.unlink()
    sweep.run_cases(cases, args)
    sweep.run_cases(cases, args)
    assert sorted(r["seed"] for r in json.loads(args.results.read_text())) == [0, 1]
    assert trained == [1, 1]


def test_the_results_file_keeps_every_sweeps_records_and_refuses_a_broken_one(tmp_path):
    path = tmp_path / "results.json"
    first, second = sweep.Results(path), sweep.Results(path)  # two sweeps writing one file at once
    first.add({"method": "mlp", "seed": 0})
    second.add({"method": "mlp", "seed": 1})
    assert [r["seed"] for r in sweep.Results(path).records] == [0, 1]
    assert not list(tmp_path.glob(".*partial*"))
    path.write_text('[{"method": "mlp", "se')  # a write cut short by a kill
    with pytest.raises(ConfigError, match=r"^--results .*results.json cannot be read \(.*\): move it aside"):
        sweep.Results(path)
    path.write_text('{"method": "mlp"}')
    with pytest.raises(ConfigError, match="is not a JSON list of records: move it aside or pass another --results"):
        sweep.Results(path)


def _add_records(path: Path, first: int) -> None:
    for seed in range(first, first + 40):
        sweep.Results(path).add({"method": "mlp", "seed": seed})


def test_two_processes_adding_to_one_results_file_lose_no_record(tmp_path):
    path = tmp_path / "results.json"
    workers = [multiprocessing.get_context("fork").Process(target=_add_records, args=(path, s)) for s in (0, 100)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert all(worker.exitcode == 0 for worker in workers)
    assert sorted(r["seed"] for r in sweep.Results(path).records) == [*range(40), *range(100, 140)]


def test_a_cell_with_a_failed_seed_says_so_in_its_seeds_column_and_claims_no_steps():
    import third_party

    key = dict(task="MemoryS7", method="mlp", budget=1000, tuned=False)
    done = {"success": 1.0, "score": 1.0, "best_score": 1.0, "steps_per_s": 100.0, "steps_to_095": 500}
    runs = [{**key, "seed": 0, **done}, {**key, "seed": 1, "error": "crashed"}, {**key, "seed": 2, **done}]
    (cell,) = sweep.cells(runs, third_party.KEY_FIELDS)
    assert sweep.seeds_text(cell) == "2/3" and cell.success is not None and cell.steps is None
    assert third_party.row(cell)[3] == "2/3" and third_party.row(cell)[5] == "1.00 - 1.00"
    (whole,) = sweep.cells([runs[0], runs[2]], third_party.KEY_FIELDS)
    assert sweep.seeds_text(whole) == "2" and whole.steps is not None
    assert sweep.steps_text(cell) == ("- (2/3 seeds ran)", "500 - 500")  # in seed order, as success
    assert sweep.steps_text(whole)[0].startswith("500 [500, 500]")


class StopAt(BaseCallback):
    """At ``steps`` env steps: the process ends on the spot as a kill -9 would (``hard``: no save, no result
    file), or Ctrl-C arrives (train.py saves the model and writes an interrupted result)."""

    def __init__(self, steps: int, hard: bool):
        super().__init__()
        self.steps, self.hard = steps, hard

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.steps:
            if self.hard:
                os._exit(3)
            raise KeyboardInterrupt
        return True


def exit_code_in_child(target: Callable[..., object], *args: object) -> int | None:
    """``target(*args)`` in a spawned process (killed after 300 s): its exit code."""
    child = multiprocessing.get_context("spawn").Process(target=target, args=args)
    child.start()
    child.join(timeout=300)
    if child.is_alive():
        child.kill()
        child.join()
    return child.exitcode


def train_case_stopped_at(case: sweep.Case, folder: Path, steps: int, hard: bool) -> str | None:
    """One attempt at the case, as its Ray trial makes it (a resume point at every rollout), stopped at ``steps``."""
    real = resume.train
    resume.train = lambda cfg, extra_callbacks=(): real(cfg, [*extra_callbacks, StopAt(steps, hard)])
    try:
        return sweep._train_case(case, folder, checkpoint_s=0)
    finally:
        resume.train = real


RESUMABLE = ("--env-kwargs", "corridor_length:3", "-n", "1024", "--n-envs", "2", "--eval-freq", "384")
RESUMABLE += ("--extractor", "mlp", "--eval-episodes", "4", "--save-freq", "-1", "--verbose", "0", *TINY_PARAMS)


def test_a_trial_killed_with_its_sweep_resumes_from_its_last_rollout(tmp_path):
    """Rollouts of 128 env steps, evaluations every 384. The first attempt dies without a word at 640 (its last
    resume point: 512), the second gets Ctrl-C at 896 (train.py saves what it learned: 768), the third
    finishes: the rerun sweep goes on from each instead of starting over, on the first run's schedule."""
    case = sweep.Case({"method": "mlp", "seed": 0}, "mlp seed 0", RESUMABLE)
    folder = sweep.case_folder(tmp_path, case)
    assert exit_code_in_child(train_case_stopped_at, case, folder, 640, True) == 3
    run = folder / "ppo" / "rlattn-TMaze-v0_1"
    assert not (run / "result.json").exists() and sweep.finished_run(folder) is None
    assert json.loads((run / "resume.json").read_text())["env_steps"] == 512
    assert sweep.pending_label(case, tmp_path, 0) == "mlp seed 0 (resumes at 512 env steps)"
    assert sweep.pending_label(case, tmp_path, -1) == "mlp seed 0"  # --checkpoint-every -1: starts over
    first_wall = json.loads((run / "resume.json").read_text())["wall_s"]

    error = train_case_stopped_at(case, folder, 896, hard=False)
    assert error == "interrupted (SIGINT) at 768 env steps; the same command resumes it"
    point = json.loads((run / "resume.json").read_text())
    assert (point["model"], point["env_steps"], point["resumed_at"]) == ("rlattn-TMaze-v0.zip", 768, [512])
    assert point["wall_s"] > first_wall

    record = sweep.run_case(case, tmp_path, checkpoint_s=0)
    assert "error" not in record and record["resumed_at"] == [512, 768]
    assert [t for t, _ in record["curve"]] == [384, 768]  # not 896: the schedule of a run never stopped
    result = json.loads((run / "result.json").read_text())
    assert result["env_steps"] == 1024 and result["interrupted_by"] is None
    assert record["wall_s"] > point["wall_s"]  # every attempt's time counted
    assert not [p.name for p in run.iterdir() if p.name.startswith(("resume", ".resume"))]
    assert [p.name for p in (folder / "ppo").iterdir()] == [run.name]  # one run, continued each time


def stop_trial_at(folder: Path, steps: int) -> None:
    """One attempt at a search trial (a resume point at every rollout) that dies without a word at ``steps``."""
    from agents.trials import run_trial

    real = resume.train
    resume.train = lambda cfg, extra_callbacks=(): real(cfg, [*extra_callbacks, StopAt(steps, hard=True)])
    run_trial(config_from_args(list(RESUMABLE)), {}, folder, lambda step, value: False, checkpoint_s=0)


@pytest.mark.parametrize("prune_at", [None, 384])
def test_a_search_trial_killed_with_its_search_goes_on_from_its_last_rollout(tmp_path, prune_at):
    """Rollouts of 128 env steps, evaluations every 384; the trial's process dies at 640 (its last resume point:
    512), as Ray kills a trial when its search is interrupted. Run again, the trial goes on from 512 in the same
    run folder, reports its evaluation at 384 again first (a restored search's median rule has not seen it) and
    is scored on its whole curve; pruned on that evaluation, it stops at once."""
    from agents.trials import run_trial

    folder = tmp_path / "trial_x"
    assert exit_code_in_child(stop_trial_at, folder, 640) == 3
    run = folder / "ppo" / "rlattn-TMaze-v0_1"
    assert json.loads((run / "resume.json").read_text())["env_steps"] == 512

    reported: list[tuple[int, float]] = []

    def report(step: int, value: float) -> bool:
        reported.append((step, value))
        return step == prune_at

    outcome = run_trial(config_from_args(list(RESUMABLE)), {}, folder, report, checkpoint_s=0)
    result = json.loads((run / "result.json").read_text())
    assert outcome["folder"] == str(run) and result["interrupted_by"] is None
    if prune_at is None:
        assert [step for step, _ in reported] == [384, 768] and not outcome["pruned"]
        assert result["env_steps"] == 1024
        final = result["evaluation"]["success_rate"]
        assert outcome["score"] == pytest.approx(np.mean([*(value for _, value in reported), final]))
    else:
        assert [step for step, _ in reported] == [384] and outcome["pruned"]
        assert result["env_steps"] == 512 + 2  # one step of the 2 envs, then stopped
    assert not [p.name for p in run.iterdir() if p.name.startswith(("resume", ".resume"))]
    assert [p.name for p in (folder / "ppo").iterdir()] == [run.name]  # one run, continued


def check_best_params(folder: Path, trials: int, capsys) -> dict:
    """best_params.json is there, and the printed command parses back to its settings."""
    best = json.loads((folder / "best_params.json").read_text())
    command = capsys.readouterr().out.strip().splitlines()[-1].removeprefix("reuse with: ")
    assert command == best["command"] and best["trials"] == trials
    reused = config_from_args(shlex.split(command)[2:])
    assert reused.hyperparams == best["hyperparams"] and reused.extractor == "mlp"
    assert [f"{k}:{v!r}" for k, v in reused.hyperparams.items()] == best["params"]
    return best


def trial_runs(study: Path) -> list[Path]:
    return sorted(study.glob("trials/trial_*/ppo/rlattn-TMaze-v0_1"))


def curve_score(run: Path) -> float:
    """The mean of a run's evaluations during training and its final one, read from its files."""
    during = np.load(run / "evaluations.npz")["successes"].mean(axis=1)
    final = json.loads((run / "result.json").read_text())["evaluation"]["success_rate"]
    return float(np.mean([*during, final]))


def test_optimize_on_ray_tune_writes_the_best_settings_and_the_command(ray_session, tmp_path, capsys):
    space = ["--search-space", "learning_rate", "n_epochs:1:3"]
    code = main(["--optimize", "--n-trials", "2", *TINY, *TINY_PARAMS, *space, "-f", str(tmp_path)])
    assert code == 0
    # the first trial runs the run's own settings: the preset's learning rate, its 4 epochs moved into 1..3
    first = (
        "first trial: the run's own settings, learning_rate:0.0003 n_epochs:3; moved into the space: n_epochs 4 -> 3"
    )
    out = capsys.readouterr().out
    assert first in out
    print(out.strip().splitlines()[-1])  # the command, for check_best_params
    study = tmp_path / "ppo" / "optimize" / "rlattn-TMaze-v0_1"
    best = check_best_params(study, 2, capsys)
    assert set(best["hyperparams"]) == {"n_steps", "batch_size", "learning_rate", "n_epochs"}
    assert 1 <= best["hyperparams"]["n_epochs"] <= 3
    assert best["first_trial"]["params"] == {"learning_rate": 3e-4, "n_epochs": 3}
    runs = trial_runs(study)
    assert len(runs) == 2
    settings = [json.loads((run / "rlattn-TMaze-v0" / "args.json").read_text())["hyperparams"] for run in runs]
    assert sum(h["learning_rate"] == 3e-4 and h["n_epochs"] == 3 for h in settings) == 1
    # the default objective: the mean of the evaluations at 128 and 256 steps and the final one
    assert best["objective"] == "curve" and best["metric"] == "eval success, mean of 3 evaluations"
    assert best["best_score"] == pytest.approx(max(curve_score(run) for run in runs))
    (own_run,) = [
        run for run, h in zip(runs, settings, strict=True) if h["learning_rate"] == 3e-4 and h["n_epochs"] == 3
    ]
    assert best["first_trial"]["score"] == pytest.approx(curve_score(own_run))


def finished_runs(study: Path) -> dict[Path, int]:
    """Each trial's finished run (an interrupted trial leaves a run without a result), with its result's mtime."""
    return {p: p.stat().st_mtime_ns for p in study.glob("trials/trial_*/ppo/*/result.json")}


def test_an_interrupted_search_is_gone_on_with_by_the_same_command(tmp_path):
    """Ctrl-C during the second of three trials (one at a time): nothing is written and the exit code is 130;
    the same command restores the search, keeps the trials that finished and runs only the others."""
    command = [sys.executable, str(ROOT / "train.py"), "--optimize", "--n-trials", "3", *TINY, *TINY_PARAMS]
    command += ["--search-space", "learning_rate", "-n", "2048", "--eval-freq", "512", "-f", "logs"]
    one_core = {"preexec_fn": lambda: os.sched_setaffinity(0, {0})}  # Ray gets 1 CPU: one trial at a time
    study = tmp_path / "logs" / "ppo" / "optimize" / "rlattn-TMaze-v0_1"
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **one_core
    )
    deadline = time.monotonic() + 300
    # one trial at a time: the second trial's folder appears once Ray Tune has taken the first one's result
    while len(list(study.glob("trials/trial_*"))) < 2:
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    before = finished_runs(study)
    # Ray Tune counts a trial once it has taken its result; a run may finish just before the interrupt
    # without that (then it is read back from its files when the search goes on, not trained again)
    last = out.strip().splitlines()[-1]
    taken = int(last.removeprefix("search interrupted after ").split(" ")[0])
    assert last == (
        f"search interrupted after {taken} of 3 trials, no best settings written (logs/ppo/optimize/"
        "rlattn-TMaze-v0_1): run the same command to go on with it"
    )
    assert 1 <= taken <= len(before) < 3 and not (study / "best_params.json").exists()

    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, **one_core)
    assert again.returncode == 0, again.stderr
    assert f"resumed: {taken} of 3 trials had finished; the others run now" in again.stdout
    after = finished_runs(study)
    assert len(after) == 3 and all(after[p] == stamp for p, stamp in before.items())  # none trained twice
    best = json.loads((study / "best_params.json").read_text())
    assert best["trials"] == 3 and [p.name for p in (tmp_path / "logs" / "ppo" / "optimize").iterdir()] == [study.name]


def test_tune_searches_each_cell_once_and_its_cases_train_with_what_it_found(
    ray_session, tmp_path, monkeypatch, capsys
):
    args = sweep_args(tmp_path)
    args.tune, args.tune_seed, args.tuned_folder = 2, 0, tmp_path / "tuned"
    cases = tiny_cases(seeds=(1, 2))
    tuned = sweep.tune_cases(cases, args)
    (path,) = (tmp_path / "tuned").glob("*.json")
    record = json.loads(path.read_text())
    assert record["trials"] == 2 and record["searched"]["n_trials"] == 2 and path.name.endswith("_tune2.json")
    assert record["wall_s"] > 0 and f"search wall time {record['wall_s']:.1f} s" in capsys.readouterr().out
    # the algorithm's settings, but not those the cell's own -params fix (n_steps, batch_size)
    space = ["learning_rate", "ent_coef", "gamma", "gae_lambda", "n_epochs", "clip_range"]
    assert record["searched"]["space"] == space and set(record["first_trial"]["params"]) == set(space)
    searched = record["searched"]["arguments"]
    assert searched[searched.index("--seed") + 1] == "0"  # searched on --tune-seed, not on the cell's seeds
    # the search's trials trained on the sweep's own arguments (budget, env, evaluation)
    trial_args = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "searches").glob("**/trials/**/args.json")]
    assert len(trial_args) == 2 and {a["n_timesteps"] for a in trial_args} == {256}
    assert {a["seed"] for a in trial_args} == {0}
    for case, before in zip(tuned, cases, strict=True):
        assert case.key == {**before.key, "tuned": str(path.resolve())}
        assert case.label.endswith(", tuned")
        cfg = config_from_args(list(case.arguments))
        assert cfg.seed == before.key["seed"]
        found = dict(p.split(":", 1) for p in record["params"])
        assert {k: repr(v) for k, v in cfg.hyperparams.items() if k in found} == found

    # the same arguments again: the search is read, not run
    def no_search(cfg, **kwargs):
        raise AssertionError("searched again")

    monkeypatch.setattr("agents.tune.optimize", no_search)
    assert [c.arguments for c in sweep.tune_cases(cases, args)] == [c.arguments for c in tuned]
    # other arguments (more trials) are another search; with --saved-only that is an error, not a search
    args.tune, args.saved_only = 3, True
    with pytest.raises(ConfigError, match="--tune 3: no search of mlp with these arguments"):
        sweep.tune_cases(cases, args)
    args.saved_only = False
    with pytest.raises(AssertionError, match="searched again"):
        sweep.tune_cases(cases, args)
    # the same arguments under another preset (its target_kl) resolve to other settings: another search
    from agents import presets

    args.tune = 2
    preset = presets.PRESETS[("ppo", "TMaze")]
    changed = dataclasses.replace(preset, hyperparams={**preset.hyperparams, "target_kl": 0.05})
    monkeypatch.setitem(presets.PRESETS, ("ppo", "TMaze"), changed)
    sweep.resolved_text.cache_clear()
    with pytest.raises(AssertionError, match="searched again"):
        sweep.tune_cases(cases, args)
    # a tuned file written before searches named their resolved settings is taken as it is
    legacy = json.loads(path.read_text())
    del legacy["searched"]["resolved"]
    path.write_text(json.dumps(legacy))
    assert [c.arguments for c in sweep.tune_cases(cases, args)] == [c.arguments for c in tuned]
    sweep.resolved_text.cache_clear()


def test_a_search_written_down_before_resolved_settings_were_named_is_the_same_search(tmp_path):
    from agents.trial_log import add_trial, read_trials, same_search

    search = {"flags": ["-n", "256"], "space": {}, "resolved": "abc"}
    assert same_search(search, search) and same_search({"flags": ["-n", "256"], "space": {}}, search)
    assert not same_search({**search, "resolved": "def"}, search)
    assert not same_search({"flags": ["-n", "512"], "space": {}}, search) and not same_search(None, search)
    # a log written before: taken for the search, and named after it from its next trial on
    log = tmp_path / "cell_tune2.trials.jsonl"
    entry = {"params": {"gamma": 0.9}, "score": 0.5, "metric": "success", "pruned": False, "reports": []}
    add_trial(log, {"flags": ["-n", "256"], "space": {}}, "a_0", entry)
    assert read_trials(log, search) == {"a_0": entry}
    add_trial(log, search, "a_1", entry)
    assert list(read_trials(log, search)) == ["a_0", "a_1"]
    assert read_trials(log, {**search, "resolved": "def"}) == {}  # a preset changed since: another search


def test_evaluations_written_with_success_rows_missing_in_front_are_read_aligned(tmp_path):
    from agents.trials import reported_evaluations

    np.savez(
        tmp_path / "evaluations.npz",
        timesteps=np.array([100, 200, 300]),
        results=np.zeros((3, 2)),
        ep_lengths=np.ones((3, 2)),
        successes=np.array([[1.0, 0.0]]),
    )
    assert reported_evaluations(tmp_path) == ([100, 200, 300], [0.0, 0.0, 0.5])


def trial_lines(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()[1:]]


def test_a_search_goes_on_from_its_trial_log_where_its_log_folder_is_gone(ray_session, tmp_path, capsys):
    """Another machine: the committed trial log holds 2 of 3 ended trials, the log folder is not there.
    The search runs only the third (not the logged first trial's settings again) and picks the best of all
    three; with all three logged it runs none."""
    args = sweep_args(tmp_path)
    # one trial at a time: the log lists trials as they end, so the first line is the run's own settings
    args.tune, args.tune_seed, args.tuned_folder, args.workers = 3, 0, tmp_path / "tuned", 1
    cases = tiny_cases(seeds=(1,))
    sweep.tune_cases(cases, args)
    (path,) = (tmp_path / "tuned").glob("*_tune3.json")
    log = sweep.trial_log_of(path)
    assert log.name == path.name.replace(".json", ".trials.jsonl")
    whole = trial_lines(log)
    assert len(whole) == 3 and all({"params", "score", "metric", "pruned", "reports"} <= set(t) for t in whole)
    assert all(t["reports"] and len(t["reports"][0]) == 2 for t in whole)  # (env steps, score) per evaluation
    assert all(t["env_steps"] > 0 and t["steps_per_second"] > 0 for t in whole)  # what each trial cost
    own = json.loads(path.read_text())["first_trial"]["params"]
    assert whole[0]["params"] == own

    def elsewhere(trials: int) -> dict:
        """The search again where its log folder and settings file are gone, its log cut to ``trials``."""
        path.unlink()
        subprocess.run(["rm", "-r", str(tmp_path / "runs")], check=True)
        lines = log.read_text().splitlines()
        log.write_text("\n".join(lines[: 1 + trials]) + "\n")
        capsys.readouterr()
        sweep.tune_cases(cases, args)
        return json.loads(path.read_text())

    record = elsewhere(2)
    out = capsys.readouterr().out
    assert f"goes on from the trial log {log}: 2 of 3 trials had ended; the others run now" in out
    trained = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "searches").glob("**/trials/**/args.json")]
    assert len(trained) == 1 and trained[0]["hyperparams"] != {**trained[0]["hyperparams"], **own}
    again = trial_lines(log)
    assert again[:2] == whole[:2] and len(again) == 3 and again[2]["params"] != own
    assert record["trials"] == 3 and record["resumed_after_trials"] == 2
    completed = [t for t in again if not t["pruned"]]
    assert record["best_score"] == max(t["score"] for t in completed)

    record = elsewhere(3)
    assert "3 of 3 trials had ended; choosing the best of them" in capsys.readouterr().out
    assert not list((tmp_path / "runs" / "searches").glob("**/trials/**/args.json"))
    assert trial_lines(log) == again and record["best_score"] == max(t["score"] for t in completed)


TUNE_SCRIPT = """
import argparse, sys
from pathlib import Path
sys.path.insert(0, {benchmarks!r})
import sweep
args = argparse.Namespace(results=Path("results.json"), log_folder=Path("runs"), reuse=False, saved_only=False,
                          address=None, workers=1, tune=3, tune_seed=0, tuned_folder=Path("tuned"))
case = sweep.Case({{"method": "mlp", "seed": 1}}, "mlp seed 1", {arguments!r})
sweep.tune_cases([case], args)
"""


def test_a_search_begun_from_its_trial_log_and_interrupted_is_gone_on_with_counting_the_logged_trials(tmp_path):
    """Another machine takes 1 logged trial of 3, runs the second and is interrupted during the third; the
    same command there restores the search: it counts the logged trial, runs only the third and ends."""
    arguments = (*TINY, "--seed", "1", *TINY_PARAMS)
    script = TUNE_SCRIPT.format(benchmarks=str(ROOT / "benchmarks"), arguments=arguments)
    command = [sys.executable, "-c", script]
    one_core = {"preexec_fn": lambda: os.sched_setaffinity(0, {0})}  # Ray gets 1 CPU: one trial at a time
    first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, **one_core)
    assert first.returncode == 0, first.stderr
    (path,) = (tmp_path / "tuned").glob("*_tune3.json")
    log = sweep.trial_log_of(path)
    lines = log.read_text().splitlines()
    assert len(lines) == 4
    path.unlink()
    subprocess.run(["rm", "-r", str(tmp_path / "runs")], check=True)
    log.write_text("\n".join(lines[:2]) + "\n")  # this machine: 1 trial had ended on the other

    def trial_folders() -> list[Path]:
        return list((tmp_path / "runs" / "searches").glob("*/ppo/optimize/*/trials/trial_*"))

    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **one_core
    )
    deadline = time.monotonic() + 300
    while len(trial_folders()) < 2:  # the second trial of this machine has begun
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert "goes on from the trial log" in out and "1 of 3 trials had ended; the others run now" in out
    taken = int(out.split("search interrupted after ")[1].split(" ")[0])
    assert 2 <= taken <= 3 and f"its ended trials are in tuned/{log.name}, from which the search goes on" in out
    assert not path.exists()
    finished = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("**/trials/trial_*/ppo/*/result.json")}

    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, **one_core)
    assert again.returncode == 0, again.stderr
    assert f"resumed: {taken} of 3 trials had finished" in again.stdout  # the logged trial counted
    record = json.loads(path.read_text())
    assert record["trials"] == 3 and record["resumed_after_trials"] == taken
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("**/trials/trial_*/ppo/*/result.json")}
    assert len(after) == 2 and all(after[p] == stamp for p, stamp in finished.items())  # none trained twice
    ended = trial_lines(log)
    assert len(ended) == 3 and ended[0] == json.loads(lines[1])
    assert record["best_score"] == max(t["score"] for t in ended if not t["pruned"])


def test_a_trial_log_of_other_settings_is_not_used_and_is_started_over(tmp_path):
    from agents.trial_log import add_trial, read_trials

    log = tmp_path / "tuned" / "cell_tune2.trials.jsonl"
    entry = {"params": {"gamma": 0.9}, "score": 0.5, "metric": "success", "pruned": False, "reports": [[64, 0.5]]}
    add_trial(log, {"flags": ["-n", "256"]}, "a_00000", entry)
    add_trial(log, {"flags": ["-n", "256"]}, "a_00000", {**entry, "score": 0.7})  # logged once
    assert read_trials(log, {"flags": ["-n", "256"]}) == {"a_00000": entry}
    assert read_trials(log, {"flags": ["-n", "512"]}) == {}
    add_trial(log, {"flags": ["-n", "512"]}, "b_00000", {"params": {"gamma": 0.8}, "error": "bad settings"})
    assert read_trials(log, {"flags": ["-n", "256"]}) == {}
    assert read_trials(log, {"flags": ["-n", "512"]}) == {
        "b_00000": {"params": {"gamma": 0.8}, "error": "bad settings"}
    }


def test_the_reuse_command_is_the_search_command_as_written(tmp_path, monkeypatch):
    """ppo_attention resolves its per-step encoder to mlp; the command to reuse a search says what the user wrote."""
    from agents import tune

    found = tune.Best({"learning_rate": 1e-4}, 0.5, "eval success", 2)
    monkeypatch.setattr(
        tune, "search_on_ray", lambda base, *args, **kwargs: (found, None) if base.extractor == "mlp" else None
    )
    argv = ["--algo", "ppo_attention", *TRAIN, "-params", "n_steps:64", "--optimize", "-f", str(tmp_path)]
    result = tune.optimize(config_from_args(argv))  # the trials run the resolved encoder
    assert "--extractor" not in result.command and "--algo ppo_attention" in result.command
    assert config_from_args(shlex.split(result.command)[2:]).hyperparams == {"n_steps": 64, "learning_rate": 1e-4}
    assert result.best_line() == "best of 2 trials: eval success 0.500 with learning_rate:0.0001"
    found = tune.Best({"learning_rate": 1e-4}, 0.5, "eval success", 2, steps_per_second=1234.4)
    assert tune.optimize(config_from_args(argv)).best_line() == (
        "best of 2 trials: eval success 0.500 at 1,234 env steps/s with learning_rate:0.0001"
    )


def test_a_pruned_ray_trial_reaches_the_sampler_as_pruned_not_as_a_finished_score():
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    from agents.tune import pruning_searcher

    searcher = pruning_searcher({"learning_rate": FloatDistribution(1e-5, 1e-3, log=True)}, 0, None)
    for name in ("pruned", "finished", "failed"):
        assert searcher.suggest(name) is not None
    # a pruned run reports the (high) score of its shortened run; TPE must not learn from it as finished
    searcher.on_trial_complete("pruned", {"score": 0.9, "pruned": True})
    searcher.on_trial_complete("finished", {"score": 0.4, "pruned": False})
    searcher.on_trial_complete("failed", None, error=True)
    states = [(t.state, t.value) for t in searcher._ot_study.trials]
    assert states == [(TrialState.PRUNED, None), (TrialState.COMPLETE, 0.4), (TrialState.FAIL, None)]


@pytest.mark.parametrize(
    ("algo", "n_steps", "env_steps", "updates"),
    [("ppo", 96, 256, 1), ("ppo", 64, 256, 2), ("ppo_lstm", 96, 256, 1), ("ppo_attention", 96, 256, 1)],
)
def test_a_trial_trains_its_budget_not_a_rollout_past_it(tmp_path, algo, n_steps, env_steps, updates):
    """256 steps on 2 envs: rollouts of 192 would train 384 steps in SB3's loop; a trial stops at 256 and
    leaves the second rollout untrained. Rollouts of 128 end at the budget: both trained."""
    from agents.registry import ALGOS
    from agents.trials import run_trial

    extractor = () if algo == "ppo_attention" else ("--extractor", "mlp")
    argv = [*TRAIN, *extractor, "--eval-episodes", "4", "--save-freq", "-1", "--verbose", "0", "--algo", algo]
    cfg = config_from_args([*argv, "-params", f"n_steps:{n_steps}", "batch_size:64", "n_epochs:1"])
    outcome = run_trial(cfg, {}, tmp_path / "trial_x", lambda step, value: False)
    result = json.loads((Path(outcome["folder"]) / "result.json").read_text())
    assert result["env_steps"] == env_steps
    assert result["evaluation"]["episodes"] == 4  # stopped at the budget, not interrupted: evaluated
    model = ALGOS[algo].cls.load(Path(outcome["folder"]) / "rlattn-TMaze-v0.zip")
    assert model._n_updates == updates  # one epoch per trained rollout


@pytest.mark.parametrize("prune_at", [None, 128])
def test_a_trial_that_finished_before_its_search_was_interrupted_is_read_back_as_it_ended(tmp_path, prune_at):
    """Ray Tune may not have taken a trial's result when the search stops: going on, the trial reads its
    finished run back (the same score, its evaluations reported again to the rule, pruned or not) instead
    of training it again."""
    from agents.trials import finished_trial, run_trial

    cfg = config_from_args([*TINY, *TINY_PARAMS])  # 256 steps, evaluations at 128 and 256
    outcome = run_trial(cfg, {}, tmp_path / "trial_x", lambda step, value: step == prune_at)
    reported: list[tuple[int, float]] = []
    again = finished_trial(tmp_path / "trial_x", cfg.objective, lambda step, value: reported.append((step, value)))
    assert again == outcome and again["pruned"] == (prune_at is not None)
    # what the trial cost is kept with its score: the env steps it trained and at what speed
    assert outcome["env_steps"] == (128 if prune_at else 256) and outcome["steps_per_second"] > 0
    assert [step for step, _ in reported] == ([128] if prune_at else [128, 256])
    assert finished_trial(tmp_path / "no_trial", cfg.objective, lambda step, value: False) is None


def test_a_tie_with_the_run_own_settings_keeps_them():
    """All eight trials of ppo_lstm's search at L = 100 scored 0.000: the best is then the run's own settings,
    not whichever trial came first; a higher score still wins, and without own settings the earliest best."""
    from agents.tune import best_index

    own, a, b = {"learning_rate": 3e-4}, {"learning_rate": 1e-4}, {"learning_rate": 5e-4}
    assert best_index([0.0, 0.0, 0.0], [a, own, b], own) == 1
    assert best_index([0.0, 0.0, 0.1], [a, own, b], own) == 2
    assert best_index([0.2, 0.2, 0.1], [a, b, own], own) == 0
    assert best_index([0.0, 0.3, 0.3], [a, b, own], None) == 1


def test_the_default_space_holds_rollouts_that_fit_the_budget():
    from agents.plan import resolve
    from agents.search_space import search_space

    def rollouts(*argv: str) -> list[int]:
        return list(search_space(resolve(config_from_args([*TINY, *argv])), [])["n_steps"].choices)

    assert rollouts() == [32, 64, 128]  # 256 steps on 2 envs
    assert rollouts("-n", "40000", "--n-envs", "8") == [32, 64, 128, 256, 512, 1024, 2048]
    assert rollouts("-n", "100", "--n-envs", "8") == [32]  # none fits: the shortest


def test_the_objective_scores_the_curve_or_the_final_evaluation():
    from agents.evaluate import EvalResult
    from agents.trials import objective

    lucky = EvalResult(20, 1.0, 0.0, success_rate=1.0)
    assert objective(lucky, [0.0, 0.25, 0.5], "curve") == (pytest.approx(0.4375), "eval success, mean of 4 evaluations")
    assert objective(lucky, [0.0, 0.25, 0.5], "final") == (1.0, "eval success")
    returns = EvalResult(20, -3.0, 1.0, success_rate=None)  # no successes reported: mean returns
    assert objective(returns, [-5.0], "curve") == (pytest.approx(-4.0), "mean return, mean of 2 evaluations")
    with pytest.raises(KeyboardInterrupt):
        objective(None, [1.0], "curve")  # an interrupted run is no score


def test_the_default_space_holds_what_each_algorithm_takes():
    from agents.plan import resolve
    from agents.search_space import search_space

    def keys(*argv: str) -> set[str]:
        return set(search_space(resolve(config_from_args([*TRAIN, *argv])), []))

    ppo = {"learning_rate", "n_steps", "batch_size", "ent_coef", "gamma", "gae_lambda", "n_epochs", "clip_range"}
    assert keys("--extractor", "mlp") == ppo
    assert keys("--extractor", "attention") == ppo | {"embed_dim", "n_layers", "n_heads"}
    # AttentionPPO hands PPO's keywords on through **kwargs; its memory's shape is searched too
    assert keys("--algo", "ppo_attention") == ppo | {"embed_dim", "n_layers", "n_heads"}
    assert keys("--algo", "ppo_lstm") == ppo
    # DQN's n_steps is its n-step return, not a rollout: not searched
    dqn = keys("--algo", "dqn", "--extractor", "mlp", "-params", "learning_starts:0")
    assert dqn == {"learning_rate", "batch_size", "gamma", "exploration_fraction", "target_update_interval"}


def test_the_first_trial_is_the_run_own_settings_moved_into_the_space():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from agents.plan import resolve
    from agents.search_space import own_settings

    plan = resolve(config_from_args([*TRAIN, "--extractor", "mlp", "-params", "learning_rate:lin_5e-4", "n_steps:100"]))
    space = {
        "learning_rate": FloatDistribution(1e-5, 1e-3, log=True),  # lin_5e-4 starts at 5e-4: inside
        "n_steps": CategoricalDistribution([64, 128, 256]),  # 100: the nearest choice is 128
        "gamma": FloatDistribution(0.9, 0.95),  # the preset's 0.99: the range's end
        "n_epochs": IntDistribution(3, 20),  # the preset's 4: inside
    }
    own, moved = own_settings(plan, space)
    assert own == {"learning_rate": 5e-4, "n_steps": 128, "gamma": 0.95, "n_epochs": 4}
    assert moved == [
        "learning_rate 'lin_5e-4' -> 0.0005 (constant: the search space has no schedules)",
        "n_steps 100 -> 128",
        "gamma 0.99 -> 0.95",
    ]
    # an equal choice is taken as the space holds it
    (own, _) = own_settings(plan, {"n_steps": CategoricalDistribution([100.0, 200.0])})
    assert own == {"n_steps": 100.0} and isinstance(own["n_steps"], float)
    # the class's own default where neither -params nor the preset sets it (PPO's clip_range 0.2)
    assert own_settings(plan, {"clip_range": FloatDistribution(0.1, 0.4)}) == ({"clip_range": 0.2}, [])
    # a value the space cannot hold: no first trial of its own
    own, moved = own_settings(plan, {"n_steps": CategoricalDistribution(["short", "long"])})
    assert own is None and moved[0].startswith("n_steps 100 is not a value of")


def test_optimize_with_storage_is_a_study_that_a_second_process_joins(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    flags = ["--optimize", "--storage", storage, "--study-name", "tiny", *TINY, *TINY_PARAMS, "-f", str(tmp_path)]
    assert main([*flags, "--n-trials", "2", "--search-space", "gamma"]) == 0
    check_best_params(tmp_path / "ppo" / "optimize" / "rlattn-TMaze-v0_1", 2, capsys)
    assert main([*flags, "--n-trials", "1", "--search-space", "gamma"]) == 0
    best = check_best_params(tmp_path / "ppo" / "optimize" / "rlattn-TMaze-v0_2", 3, capsys)
    assert 0.9 <= best["hyperparams"]["gamma"] <= 0.9999
    # the run's own gamma (the preset's 0.99) ran once, first, though two processes queued it
    import optuna

    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    assert trials[0].params == {"gamma": 0.99} and best["first_trial"]["params"] == {"gamma": 0.99}
    assert sum(t.params == {"gamma": 0.99} for t in trials) == 1
    assert best["first_trial"]["score"] == trials[0].value
    # the study scores by the curve (the default); a process scoring the final evaluation is refused
    assert main([*flags, "--n-trials", "1", "--search-space", "gamma", "--objective", "final"]) == 2
    assert "--objective final does not match study 'tiny', whose trials are scored by curve" in capsys.readouterr().err
    assert not (tmp_path / "ppo" / "optimize" / "rlattn-TMaze-v0_3").exists()  # refused before any folder


def test_a_failed_first_trial_is_queued_again_by_the_next_process(tmp_path, monkeypatch, capsys):
    import optuna

    import agents.tune as tune

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    flags = ["--optimize", "--storage", storage, "--study-name", "tiny", *TINY, *TINY_PARAMS, "-f", str(tmp_path)]
    real = tune.run_trial

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tune, "run_trial", interrupted)
    capsys.readouterr()
    assert main([*flags, "--n-trials", "1", "--search-space", "gamma"]) == 130  # Ctrl-C: one line, no traceback
    (line,) = capsys.readouterr().out.strip().splitlines()[-1:]
    assert line.startswith("search interrupted after 0 of 1 trials, no best settings written by this process")
    assert line.endswith("study 'tiny' keeps its finished trials: the same command adds trials to it")
    monkeypatch.setattr(tune, "run_trial", real)
    assert main([*flags, "--n-trials", "1", "--search-space", "gamma"]) == 0
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    assert [(t.state.name, t.params) for t in trials] == [("FAIL", {"gamma": 0.99}), ("COMPLETE", {"gamma": 0.99})]


def test_a_trial_whose_run_crashes_fails_alone_and_the_study_goes_on(tmp_path, monkeypatch, capsys):
    """A diverged run's ValueError (NaN logits) fails its trial; the other trials run and the best is written."""
    import optuna

    import agents.tune as tune

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    flags = ["--optimize", "--storage", storage, "--study-name", "tiny", *TINY, *TINY_PARAMS, "-f", str(tmp_path)]
    real = tune.run_trial

    def diverges_once(*args, **kwargs):
        monkeypatch.setattr(tune, "run_trial", real)
        raise ValueError("Expected parameter logits to satisfy the constraint, found nan")

    monkeypatch.setattr(tune, "run_trial", diverges_once)
    assert main([*flags, "--n-trials", "3", "--search-space", "gamma"]) == 0
    out = capsys.readouterr().out
    assert "trial 0 failed: ValueError: Expected parameter logits" in out
    assert "best of 3 trials (1 failed): " in out
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    best = json.loads((tmp_path / "ppo" / "optimize" / "rlattn-TMaze-v0_1" / "best_params.json").read_text())
    assert (best["trials"], best["failed"], best["pruned"]) == (3, 1, 0)


def test_a_trial_whose_process_died_is_failed_and_run_again_by_the_next_process(tmp_path, monkeypatch):
    import time

    import optuna
    from optuna.distributions import FloatDistribution

    import agents.tune as tune

    monkeypatch.setattr(tune, "HEARTBEAT_S", 1)
    monkeypatch.setattr(tune, "GRACE_S", 1)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    flags = ["--optimize", "--storage", url, "--study-name", "tiny", *TINY, *TINY_PARAMS, "-f", str(tmp_path)]
    # a process killed mid-trial (SIGKILL: no chance to tell the study): its trial RUNNING, its last heartbeat old
    storage = tune.open_storage(url)
    space = {"gamma": FloatDistribution(0.9, 0.9999)}
    study = tune.open_study(storage, "tiny", "curve", space)
    dead = study.ask(space)
    storage.record_heartbeat(dead._trial_id)
    time.sleep(2.1)  # the storage's clock counts whole seconds
    assert main([*flags, "--n-trials", "2", "--search-space", "gamma"]) == 0
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[1].params == {"gamma": 0.99}  # the run's own settings, queued first
    # the dead trial's settings ran again, as a trial of their own
    assert trials[2].params == dead.params
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trials[2]) == dead.number


def test_a_trial_failed_by_another_process_meanwhile_is_reported_and_the_search_goes_on(tmp_path, monkeypatch, capsys):
    import optuna
    from optuna.trial import TrialState

    import agents.tune as tune

    url = f"sqlite:///{tmp_path / 'study.db'}"
    flags = ["--optimize", "--storage", url, "--study-name", "tiny", *TINY, *TINY_PARAMS, "-f", str(tmp_path)]
    real = tune.run_trial

    def taken_over(base, params, folder, report, **kwargs):
        # this process was silent too long (paused, its heartbeat lost): another process failed its trial
        monkeypatch.setattr(tune, "run_trial", real)
        storage = optuna.storages.RDBStorage(url)
        (running,) = [
            t for t in storage.get_all_trials(storage.get_study_id_from_name("tiny")) if t.state.name == "RUNNING"
        ]
        storage.set_trial_state_values(running._trial_id, TrialState.FAIL)
        assert report(128, 0.5) is True  # the run is told to stop at its next evaluation
        return {"score": 0.5, "metric": "eval success", "pruned": True, "folder": str(folder)}

    monkeypatch.setattr(tune, "run_trial", taken_over)
    assert main([*flags, "--n-trials", "2", "--search-space", "gamma"]) == 0
    out = capsys.readouterr().out
    assert "trial 0 was failed by another process (this one sent no heartbeat for 120 s;" in out
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]


def test_a_study_searches_one_space(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    flags = ["--optimize", "--storage", storage, "--study-name", "tiny", *TINY, *TINY_PARAMS, "-f", str(tmp_path)]
    assert main([*flags, "--n-trials", "1", "--search-space", "gamma"]) == 0
    capsys.readouterr()
    assert main([*flags, "--n-trials", "1", "--search-space", "gamma:0.95:0.99"]) == 2
    # (Optuna's own log handler may also write here, to a stream an earlier test's capture closed)
    (err,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train.py: error:")]
    assert err.startswith("train.py: error: this run's search space does not match study 'tiny' at 'gamma' (there: ")
    assert "low=0.9," in err and "low=0.95," in err
    assert main([*flags, "--n-trials", "1", "--search-space", "gamma", "ent_coef"]) == 2
    assert "at 'ent_coef' (there: not searched; here: FloatDistribution(" in capsys.readouterr().err


def test_iqm_and_its_interval_match_a_hand_computation():
    eight = stats.iqm_interval([7, 0, 5, 2, 6, 1, 4, 3], reps=500)
    assert eight.iqm == pytest.approx((2 + 3 + 4 + 5) / 4)  # the middle half of 0..7
    assert eight.low <= eight.iqm <= eight.high
    assert stats.iqm_interval([1.0, 2.0, 3.0, 4.0], reps=500).iqm == pytest.approx(2.5)  # mean of 2 and 3
    same = stats.iqm_interval([0.8, 0.8, 0.8], reps=200)
    assert (same.iqm, same.low, same.high) == pytest.approx((0.8, 0.8, 0.8))
    rng = np.random.default_rng(0)
    few = stats.iqm_interval(rng.uniform(0, 1, 5), reps=1000)
    many = stats.iqm_interval(rng.uniform(0, 1, 80), reps=1000)
    assert many.high - many.low < few.high - few.low
    assert stats.steps_interval([40_000, None]) is None
    assert stats.steps_interval([40_000, 40_000], reps=100).steps() == "40,000 [40,000, 40,000]"
    assert stats.per_seed([40_000, None], steps=True) == "40,000 never"
    assert str(stats.iqm_interval([0.5])) == "0.50 (1 seed)"  # no interval from one value
    assert stats.steps_interval([40_000], reps=100).steps() == "40,000 (1 seed)"


def test_the_bootstrap_interval_is_the_same_every_time_and_leaves_numpys_generator_alone():
    """rliable resamples with numpy's global generator: the table and the plot of one cell, and two runs
    of one command, must still print the same interval."""
    values = [0.1, 0.5, 0.9, 0.3, 0.7]
    np.random.seed(123)
    first = stats.iqm_interval(values, reps=300)
    after = np.random.random()
    np.random.seed(7)
    second = stats.iqm_interval(values, reps=300)
    assert (first.low, first.high) == (second.low, second.high)
    np.random.seed(123)
    assert np.random.random() == after  # the caller's generator went on as if nothing had drawn from it


def test_bad_sweep_input_is_one_line(capsys):
    from agents.cli import OneLineParser
    from agents.cluster import check_address
    from agents.config import ConfigError

    with pytest.raises(ConfigError, match=r"--address '127.0.0.1:1' is unreachable .*: expected HOST:PORT"):
        check_address("127.0.0.1:1")  # nothing listens on port 1 of this machine
    with pytest.raises(ConfigError, match="--address 'nowhere' is invalid"):
        check_address("nowhere")
    parser = OneLineParser(prog="memory_length.py")
    sweep.add_arguments(parser, "test")
    with pytest.raises(SystemExit) as exit_:
        sweep.check_arguments(parser, parser.parse_args(["--seeds", "0"]))
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "memory_length.py: error: --seeds 0 is invalid: must be >= 1\n"
    with pytest.raises(SystemExit):
        sweep.check_arguments(parser, parser.parse_args(["--checkpoint-every", "-5"]))
    assert capsys.readouterr().err == (
        "memory_length.py: error: --checkpoint-every -5 is invalid: must be >= 0 seconds, or -1 for none\n"
    )
    with pytest.raises(SystemExit):
        sweep.check_arguments(parser, parser.parse_args(["--seed", str(2**32 - 20_002), "--seeds", "3"]))
    assert "--seeds 3: the last seed must be <= 4294947295" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # tuned cells scored on the seed they were tuned on: biased upwards
        sweep.check_arguments(parser, parser.parse_args(["--tune", "4", "--seeds", "3"]))
    assert (
        "--tune-seed 0 is invalid with --seed 0 --seeds 3: the tuned cells would be scored" in capsys.readouterr().err
    )
    fine = parser.parse_args(["--tune", "4", "--seed", "1", "--seeds", "3"])
    fine.methods = ["mlp"]  # set by each sweep's own parser
    sweep.check_arguments(parser, fine)


@pytest.mark.parametrize(
    "method, algo, extractor",
    [("patch-attention", "ppo", "patch-attention"), ("ppo_attention", "ppo_attention", "patch-attention"),
     ("cnn", "ppo", "cnn")],
)  # fmt: skip
def test_set_size_cases_train_each_method_through_train_py(method, algo, extractor):
    """Each method of the set-size sweep is a train.py run that resolves; the patch methods replay for target mass."""
    import set_size

    from agents.plan import resolve

    args = argparse.Namespace(search="feature", budget=1024, eval_freq=512, eval_episodes=4, mass_episodes=4)
    case = set_size.make_case(8, method, 0, args)
    plan = resolve(config_from_args(list(case.arguments)))
    assert (plan.config.algo, plan.extractor, plan.env_kwargs["set_size"]) == (algo, extractor, 8)
    assert (case.after is not None) == (method in set_size.LOOKS)


def test_memory_length_trains_each_method_from_its_presets_shortest_corridor():
    """The sweep's runs train on the corridors each method's preset gives (unless --train-from says otherwise)."""
    import memory_length

    args = argparse.Namespace(
        maze="passive",
        lengths=[300, 1000],
        methods=["ppo_attention", "attention"],
        budget=1000,
        seed=0,
        seeds=1,
        train_from=None,
        plain=False,
        eval_freq=None,
        eval_episodes=20,
    )
    cases = {(case.key["method"], case.key["length"]): case for case in memory_length.make_cases(args)}
    shortest = {cell: case.key["train_from"] for cell, case in cases.items()}
    # from L = 1000 on every method trains from corridor 2; below, ppo_attention from 2, the others from L/10 <= 10
    assert shortest == {
        ("ppo_attention", 300): 2,
        ("attention", 300): 10,
        ("ppo_attention", 1000): 2,
        ("attention", 1000): 2,
    }
    episodic = cases["ppo_attention", 1000].arguments
    kwargs = episodic[episodic.index("--env-kwargs") + 1 : episodic.index("-n")]
    assert kwargs == ("corridor_length:1000", "min_corridor_length:2", "slack:100", "tight_fraction:0.5")
    told = memory_length.make_cases(argparse.Namespace(**{**vars(args), "train_from": 5}))
    assert {case.key["train_from"] for case in told} == {5}


def test_a_plot_line_draws_one_point_per_length_the_one_trained_as_the_preset_trains():
    """Cells of one line that share a length (an older shortest corridor beside the preset's) give one point:
    the preset's, whatever the order; a length with one cell keeps it."""
    import memory_length

    def runs(length, train_from, successes):
        key = dict(maze="passive", length=length, method="ppo_lstm", budget=1000, train_from=train_from, inputs=None)
        return [{**key, "seed": seed, "success": value, "steps_to_095": None} for seed, value in enumerate(successes)]

    # at L = 1000 the preset trains ppo_lstm from corridor 2; the 10..1000 cell has more seeds and another result
    older, preset, shorter = runs(1000, 10, [1.0, 1.0, 1.0, 1.0]), runs(1000, 2, [0.0, 0.0, 0.0]), runs(100, 10, [1.0])
    for records in (older + preset + shorter, preset + shorter + older):
        table = sweep.cells(records, memory_length.KEY_FIELDS)
        points = memory_length.series(table, "passive", "ppo_lstm", mixed=True)
        assert [(length, iqm) for length, iqm, _, _ in points] == [(100, 1.0), (1000, 0.0)]


def test_third_party_rows_give_steps_per_s_over_ppo_lstm_on_the_same_task_only():
    """The speed column divides by the ppo_lstm cell of the same task, budget and tuning; without one it says '-'."""
    import third_party

    def runs(task, method, speeds, tuned=False, old=False):
        key = dict(task=task, method=method, budget=1000, tuned=tuned)
        timed = {} if old else {"outside_training_s": 1.0}  # old: a record whose rate counted its evaluations
        return [
            {**key, "seed": seed, "success": None, "score": 0.5, "best_score": 0.5, "steps_per_s": value, **timed}
            for seed, value in enumerate(speeds)
        ]

    records = (
        runs("MemoryS7", "ppo_lstm", [500.0, 700.0])
        + runs("MemoryS7", "ppo_lstm", [100.0], tuned=True)
        + runs("MemoryS7", "ppo_attention", [2400.0, 2400.0])
        + runs("MemoryS7", "ppo_attention", [300.0], tuned=True)
        + runs("MemoryS11", "ppo_lstm", [200.0])
        + runs("MemoryS11", "mlp", [300.0])
        + runs("RepeatPrevious", "mlp", [900.0])
        + runs("Autoencode", "ppo_lstm", [100.0])
        + runs("Autoencode", "mlp", [400.0], old=True)
    )
    table = third_party.Table(
        third_party.KEY_FIELDS, third_party.COLUMNS, "", third_party.row, None, third_party.speed_ratio
    )
    rows = {(r[0], r[1]): r for r in table.rows(sweep.cells(records, third_party.KEY_FIELDS))}
    assert all(len(r) == len(third_party.COLUMNS) for r in rows.values())
    ratio = {cell: r[-1] for cell, r in rows.items()}
    # 2,400 over the steps over the seconds of 500 and 700 (583 = 2 / (1/500 + 1/700)), not the tuned 100
    assert ratio[("MemoryS7", "ppo_attention")] == "4.1x" and rows[("MemoryS7", "ppo_lstm")][-2] == "583"
    assert ratio[("MemoryS7", "ppo_lstm")] == "1.0x"
    assert ratio[("MemoryS7", "ppo_attention, tuned")] == "3.0x"  # over the tuned ppo_lstm's 100
    assert ratio[("MemoryS11", "mlp")] == "1.5x"
    assert ratio[("RepeatPrevious", "mlp")] == "-"
    assert rows[("Autoencode", "mlp")][-2:] == ["400*", "4.0x*"]  # a rate with evaluations in it is marked


def test_a_preset_change_behind_the_same_arguments_gives_a_case_a_new_digest(monkeypatch):
    """Another n_heads in the preset: same key, same train.py arguments, another run, so another digest
    (``--reuse`` and the case's run folder must not hand back the old preset's run)."""
    from agents import presets

    case = sweep.Case({"method": "attention", "seed": 0}, "attention", (*TRAIN, "--extractor", "attention"))
    sweep.resolved_text.cache_clear()
    before = sweep.case_digest(case)
    assert sweep.case_digest(case) == before and '"n_heads": 1' in sweep.resolved_text(tuple(case.arguments))
    # the seed-free digest: one for every seed of the cell, another once the preset changes
    seed_3 = sweep.Case({"method": "attention", "seed": 3}, "attention", (*case.arguments, "--seed", "3"))
    settings = sweep.settings_digest(case)
    assert sweep.settings_digest(seed_3) == settings and sweep.case_digest(seed_3) != before
    preset = presets.PRESETS[("ppo", "TMaze")]
    attention = {**preset.per_extractor["attention"], "n_heads": 2}
    changed = dataclasses.replace(preset, per_extractor={**preset.per_extractor, "attention": attention})
    monkeypatch.setitem(presets.PRESETS, ("ppo", "TMaze"), changed)
    sweep.resolved_text.cache_clear()
    assert sweep.case_digest(case) != before and '"n_heads": 2' in sweep.resolved_text(tuple(case.arguments))
    assert sweep.settings_digest(case) != settings
    monkeypatch.undo()
    sweep.resolved_text.cache_clear()
    assert sweep.case_digest(case) == before
    # arguments that do not resolve still get a digest (the case fails when it runs, with its own message)
    assert sweep.resolved_text(("--env-kwargs", "corridor_length:0")) == ""


def test_reuse_needs_the_same_arguments_and_saved_only_shows_what_was_saved(tmp_path):
    """A preset change that alters a case's train.py arguments must not hand back the old run's record."""
    before, after = (
        sweep.Case({"method": "mlp", "seed": 0}, "mlp", (*TINY, *extra)) for extra in ((), ("--n-envs", "4"))
    )
    assert sweep.case_digest(before) != sweep.case_digest(after)
    results = sweep.Results(tmp_path / "results.json")
    old_folder = sweep.case_folder(tmp_path, before) / "mlp" / "rlattn-TMaze-v0_1"
    results.add({**before.key, "success": 0.0, "folder": str(old_folder)})  # saved before records had a digest
    assert results.find(before.key, sweep.case_digest(before))["success"] == 0.0
    assert results.find(after.key, sweep.case_digest(after)) is None
    assert results.find(after.key)["success"] == 0.0  # --saved-only: whatever was saved under these settings
    results.add({**after.key, "success": 1.0, "digest": sweep.case_digest(after)})
    assert results.find(after.key, sweep.case_digest(after))["success"] == 1.0
    assert results.find(before.key, sweep.case_digest(before))["success"] == 0.0
    assert sweep.Results(tmp_path / "results.json").find(after.key, sweep.case_digest(after))["success"] == 1.0


def test_saved_only_keeps_one_set_of_settings_per_cell(tmp_path, capsys):
    """Seeds of one cell saved under other settings (a preset changed between them) leave the table: the
    cell keeps the settings this command names where a seed has them, else its latest ones."""
    cases = tiny_cases(seeds=(0, 1, 2))
    args = sweep_args(tmp_path)
    args.saved_only = True
    results = sweep.Results(args.results)
    record = {"success": 1.0, "steps_to_095": 64, "steps_per_s": 100, "outside_training_s": 0.0}
    for case in cases:  # the settings this command runs: digest and settings digest of the case
        results.add(
            {**case.key, **record, "digest": sweep.case_digest(case), "settings_digest": sweep.settings_digest(case)}
        )
    results.add({**cases[2].key, **record, "success": 0.0, "digest": "other", "settings_digest": "other"})
    records = sweep.run_cases(cases, args)
    assert [r["success"] for r in records] == [1.0, 1.0, 1.0]  # the seed rerun elsewhere shows its own settings' run
    stale = tmp_path / "stale.json"
    args.results = stale
    results = sweep.Results(stale)
    for case in cases:
        digest = "old" if case.key["seed"] < 2 else "new"  # saved under settings this command no longer names
        results.add(
            {**case.key, **record, "success": float(case.key["seed"]), "digest": digest, "settings_digest": digest}
        )
    records = sweep.run_cases(cases, args)
    assert [r["seed"] for r in records] == [2]  # the latest settings keep the cell
    assert "2 saved runs were made with other settings than the rest of their cell" in capsys.readouterr().out
    older = tmp_path / "older.json"  # seeds 0 and 1 saved before records had a settings digest: kept
    args.results = older
    results = sweep.Results(older)
    for case in cases:
        digests = {"settings_digest": "new"} if case.key["seed"] == 2 else {}
        results.add({**case.key, **record, "digest": sweep.case_digest(case), **digests})
    assert [r["seed"] for r in sweep.run_cases(cases, args)] == [0, 1, 2]


def test_routing_benchmark_refuses_a_folder_that_is_not_a_run(tmp_path, monkeypatch, capsys):
    import routing

    monkeypatch.setattr(sys, "argv", ["routing.py", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        routing.main()
    assert exit_.value.code == 2
    assert (
        capsys.readouterr().err
        == f"routing.py: error: {tmp_path} is not a train.py run folder: it holds no ENV/config.json\n"
    )


def best_params_file(tmp_path: Path, params: list[str]) -> Path:
    """A best_params.json as train.py --optimize writes it (the fields the sweeps read)."""
    path = tmp_path / "best_params.json"
    path.write_text(json.dumps({"study": "s", "trials": 4, "params": params, "command": "python train.py"}))
    return path


def test_tuned_settings_reach_train_py_and_get_their_own_cell(tmp_path):
    """--tuned METHOD=FILE trains that method with the file's -params, in cases (and table rows) of their own;
    the other methods' cases are unchanged, so their finished runs and saved records still match."""
    import memory_length

    from agents.plan import resolve

    path = best_params_file(tmp_path, ["learning_rate:0.00042", "n_steps:64", "gamma:0.97"])
    base = dict(maze="passive", lengths=[10], methods=["ppo_lstm", "mlp-stack"], budget=1000, seed=0, seeds=1)
    base.update(train_from=None, plain=False, eval_freq=None, eval_episodes=4)
    plain = {c.key["method"]: c for c in memory_length.make_cases(argparse.Namespace(**base, tuned={}))}
    tuned_args = argparse.Namespace(**base, tuned=sweep.read_tuned([f"ppo_lstm={path}"], base["methods"]))
    tuned = {c.key["method"]: c for c in memory_length.make_cases(tuned_args)}

    assert tuned["mlp-stack"] == plain["mlp-stack"]  # same key, arguments, folder
    lstm = tuned["ppo_lstm"]
    assert lstm.key == {**plain["ppo_lstm"].key, "tuned": str(path.resolve())}
    assert lstm.arguments[-4:] == ("-params", "learning_rate:0.00042", "n_steps:64", "gamma:0.97")
    assert sweep.case_folder(tmp_path, lstm) != sweep.case_folder(tmp_path, plain["ppo_lstm"])
    plan = resolve(config_from_args(list(lstm.arguments)))
    assert (plan.config.algo, plan.algo_kwargs["learning_rate"], plan.algo_kwargs["gamma"]) == (
        "ppo_lstm",
        4.2e-4,
        0.97,
    )
    assert "ppo_lstm, tuned seed 0" in lstm.label

    results = sweep.Results(tmp_path / "results.json")
    results.add({**lstm.key, "success": 1.0, "steps_to_095": 5000, "digest": sweep.case_digest(lstm)})
    assert results.find(plain["ppo_lstm"].key) is None  # a tuned run never stands in for the untuned one
    assert results.find(lstm.key)["success"] == 1.0
    cells = sweep.cells(
        results.records + [{**plain["ppo_lstm"].key, "success": 0.0, "steps_to_095": None}], memory_length.KEY_FIELDS
    )
    assert sorted(sweep.method_text(c.settings) for c in cells) == ["ppo_lstm", "ppo_lstm, tuned"]


def test_bad_tuned_input_is_one_line(tmp_path, capsys):
    from agents.cli import OneLineParser

    good = best_params_file(tmp_path, ["learning_rate:0.001"])
    (tmp_path / "other.json").write_text(json.dumps({"hyperparams": {"learning_rate": 0.001}}))
    cases = {
        "ppo_lstm": "'ppo_lstm' is invalid: expected METHOD=FILE, FILE a best_params.json written by train.py --optimize",
        f"mlp={good}": "'mlp' is not among this sweep's --methods (ppo_lstm, attention)",
        f"ppo_lstm={tmp_path / 'missing.json'}": "missing.json cannot be read",
        f"ppo_lstm={tmp_path / 'other.json'}": "other.json has no 'params' list of KEY:VALUE strings",
    }
    for value, message in cases.items():
        parser = OneLineParser(prog="memory_length.py")
        sweep.add_arguments(parser, "test")
        parser.add_argument("--methods", nargs="+", default=["ppo_lstm", "attention"])
        with pytest.raises(SystemExit) as exit_:
            sweep.check_arguments(parser, parser.parse_args(["--tuned", value]))
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1 and message in err, err
    with pytest.raises(sweep.ConfigError, match="'ppo_lstm' is tuned twice"):
        sweep.read_tuned([f"ppo_lstm={good}", f"ppo_lstm={good}"], ["ppo_lstm"])


def test_tuned_settings_join_a_methods_own_params_and_stale_flips_are_measured_again(tmp_path, monkeypatch):
    """On the noise sweep's visual search each method has -params of its own (one block over the patches,
    neighbourhood or block routing): tuned settings are added to them, not put in their place. A saved
    record whose flips came from another patch mask is not reused."""
    import noise

    from agents.plan import resolve
    from rlattn.faithfulness import PATCH_MASK

    path = best_params_file(tmp_path, ["learning_rate:0.0007", "n_layers:2"])
    argv = ["noise.py", "--tasks", "search", "--search-noise", "64", "--methods", "local-attention"]
    monkeypatch.setattr(sys, "argv", [*argv, "--search-budget", "2000", "--tuned", f"local-attention={path}"])
    (case,) = noise.make_cases(noise.parse_args())
    monkeypatch.setattr(sys, "argv", [*argv, "--search-budget", "2000"])
    (untuned,) = noise.make_cases(noise.parse_args())
    plan = resolve(config_from_args(list(case.arguments)))
    assert plan.extractor_kwargs["attention"] == "neighbourhood"  # the method's own -params kept
    assert plan.extractor_kwargs["n_layers"] == 2 and plan.algo_kwargs["learning_rate"] == 7e-4  # the tuned win
    assert resolve(config_from_args(list(untuned.arguments))).extractor_kwargs["n_layers"] == 1
    assert case.current({"task": "search", "patch_mask": PATCH_MASK})
    assert not case.current({"task": "search"})  # measured before the mask was recorded: with zeros


def test_add_params_keeps_the_flags_after_the_params():
    arguments = ("--algo", "ppo", "-params", "a:1", "b:2", "-n", "100")
    assert sweep.add_params(arguments, ["b:3"]) == ("--algo", "ppo", "-params", "a:1", "b:2", "b:3", "-n", "100")
    assert sweep.add_params(("--algo", "ppo"), ["b:3"]) == ("--algo", "ppo", "-params", "b:3")
