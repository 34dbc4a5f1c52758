"""``train.py --optimize``: tune a run's hyperparameters with Optuna, on Ray Tune or in a shared Optuna study.

Every setting is checked (and the storage opened) before the first trial. The study's folder,
``LOG_FOLDER/ALGO/optimize/ENV_N/``, holds each trial's run folder and ``best_params.json``: the best
settings as ``-params`` takes them and the ``train.py`` command that reuses them.
"""

from __future__ import annotations

import json
import shlex
import warnings
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import ray
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
    json_to_distribution,
)
from optuna.samplers import TPESampler
from optuna.trial import TrialState

from agents.checks import first_line
from agents.cluster import cores, start_ray
from agents.config import ConfigError, TrainConfig
from agents.plan import plan_digest, resolve
from agents.runfolder import env_name, new_run_folder
from agents.search_space import own_settings, search_space
from agents.trial_log import TrialLogCallback, read_trials, same_search
from agents.trials import (
    TUNE_FIELDS,
    MedianRule,
    TuneTrial,
    config_flags,
    median_pruner,
    report_to_trial,
    reported_evaluations,
    run_trial,
    trial_config,
)

BEST = "best_params.json"
FROM_LOG = "from_trial_log.json"
"""in a search's folder: the trials it took from its trial log when it began (by id), counted again when it
is restored"""
SEARCH = "search.json"
"""in a search's folder from its start: what it searches (its settings and space), so that an unfinished
search is resumed only by the same search"""


@dataclass(frozen=True)
class Best:
    params: dict[str, Any]
    score: float
    metric: str
    trials: int
    """trials the search ran (with --storage: all in the study, other processes' too)"""
    first: dict[str, Any] | None = None
    """the first trial's settings (the run's own) and its score, if it finished unpruned"""
    failed: int = 0
    """of ``trials``, those that failed (settings that do not go together, a run that crashed)"""
    pruned: int = 0
    """of ``trials``, those the median rule stopped (never chosen as the best)"""
    steps_per_second: float | None = None
    """the best trial's env steps/s (training alone; None for a trial logged before it was recorded)"""

    def counted(self) -> str:
        """``8 trials`` or ``8 trials (2 failed, 1 pruned)``: how many the best was chosen among."""
        left_out = [f"{n} {what}" for n, what in ((self.failed, "failed"), (self.pruned, "pruned")) if n]
        return f"{self.trials} trials" + (f" ({', '.join(left_out)})" if left_out else "")


@dataclass(frozen=True)
class TuneResult:
    folder: Path
    best: Best
    command: str
    exit_code: int = 0
    resumed: int | None = None
    """when the search went on from an interrupted one: the trials that had finished before"""

    def best_line(self) -> str:
        settings = " ".join(f"{k}:{v!r}" for k, v in self.best.params.items())
        speed = f" at {self.best.steps_per_second:,.0f} env steps/s" if self.best.steps_per_second else ""
        return f"best of {self.best.counted()}: {self.best.metric} {self.best.score:.3f}{speed} with {settings}"

    def summary(self) -> str:
        return f"{self.best_line()}; written to {self.folder / BEST}\nreuse with: {self.command}"


@dataclass(frozen=True)
class StoppedSearch:
    """A search on Ray interrupted before all its trials finished: nothing is written, and the same
    command goes on with it (its finished trials kept)."""

    folder: Path
    finished: int
    n_trials: int
    exit_code: int = 130
    study: str | None = None
    """with --storage: the study, which keeps the trials that finished (and the interrupted one, failed)"""

    def summary(self) -> str:
        stopped = f"search interrupted after {self.finished} of {self.n_trials} trials, no best settings written"
        if self.study is not None:
            return (
                f"{stopped} by this process ({self.folder}); study {self.study!r} keeps its finished trials: "
                "the same command adds trials to it"
            )
        return f"{stopped} ({self.folder}): run the same command to go on with it"


class RestoreError(Exception):
    """An interrupted search whose saved state Ray Tune cannot restore."""


class SearchInterruptedError(Exception):
    def __init__(self, finished: int, n_trials: int, folder: Path, study: str | None = None):
        super().__init__(f"{finished} of {n_trials} trials finished")
        self.finished, self.n_trials, self.folder, self.study = finished, n_trials, folder, study


class TrialCrashedError(Exception):
    """A trial's run raised (a diverged run's NaN, an env that failed): the trial fails, the search goes on."""


HEARTBEAT_S = 30
"""how often a process running a study's trial tells the storage it is alive"""
GRACE_S = 120
"""a RUNNING trial not heard from for this long belongs to a process that died: failed, and run once more"""


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The Optuna RDB storage at ``url``, or a one-line ConfigError naming it.

    Each running trial sends a heartbeat; a trial whose process was killed (SIGKILL, a lost machine)
    would otherwise stay RUNNING for good: the next trial started against the study marks it failed
    and queues its settings once more (Optuna's RetryHeartbeatStaleTrialCallback)."""
    try:
        with warnings.catch_warnings():  # heartbeats and their retry are "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
    except Exception as error:  # SQLAlchemy and drivers raise many kinds: all mean "cannot open it"
        raise ConfigError(
            f"--storage {url!r} cannot be opened ({first_line(error)}): expected an Optuna RDB URL such as sqlite:///study.db"
        ) from None


def pruning_searcher(space: dict[str, BaseDistribution], seed: int, own: dict[str, Any] | None) -> Any:
    """Ray Tune's OptunaSearch (TPE) that tells Optuna a pruned trial was pruned.

    OptunaSearch marks a trial PRUNED only when its last result lacks the metric; a pruned run still
    reports the score of its shortened run, which TPE would otherwise take as a finished trial's."""
    from ray.tune.search.optuna import OptunaSearch

    class PruningOptunaSearch(OptunaSearch):  # type: ignore[misc]
        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
            if result and result.get("pruned") and not error:
                result = {k: v for k, v in result.items() if k != "score"}
            super().on_trial_complete(trial_id, result, error)

    return PruningOptunaSearch(
        space,
        metric="score",
        mode="max",
        sampler=TPESampler(seed=seed),
        points_to_evaluate=[own] if own else None,
    )


def search_on_ray(
    base: TrainConfig,
    space: dict[str, BaseDistribution],
    folder: Path,
    name: str,
    own: dict[str, Any] | None,
    workers: int | None = None,
    restore: bool = False,
    trial_log: Path | None = None,
    resolved: str | None = None,
) -> tuple[Best, int | None]:
    """``base.n_trials`` trials on Ray Tune (OptunaSearch with TPE), one per core, pruned by one median rule;
    the first runs the settings ``own`` when given. With ``restore`` the search in ``folder`` goes on from
    where it was interrupted: its finished trials are kept (and told to the median rule), its unfinished
    ones go on from their resume points (or start over), the rest are sampled as they would have been.
    With ``trial_log`` (:mod:`agents.trial_log`) each trial is logged there as it ends; a new search
    (not ``restore``) takes the trials that log holds of the same search as run, tells them to the
    sampler and the median rule, and runs only the others.
    Returns the best and, when restored or gone on with from the log, how many trials had ended before."""
    import ray
    from ray import tune

    start_ray()
    rule = ray.remote(MedianRule).remote()
    trainable = tune.with_resources(
        tune.with_parameters(TuneTrial, base=base, folder=folder.resolve() / "trials", rule=rule), {"cpu": 1}
    )
    search = log_signature(base, space, resolved)  # resolved: what the flags resolve to (see search_signature)
    in_log = read_trials(trial_log, search) if trial_log is not None else {}
    callbacks: list[tune.Callback] = [TrialLogCallback(trial_log, search)] if trial_log is not None else []
    before: int | None = None
    if restore:  # the trials this search took from its log when it began (the restored sampler knows them)
        taken = json.loads((folder / FROM_LOG).read_text()) if (folder / FROM_LOG).is_file() else []
        logged = {trial_id: in_log[trial_id] for trial_id in taken if trial_id in in_log}
        if len(logged) < len(taken):
            print(
                f"search {name!r}: {len(taken) - len(logged)} of the trials it took from {trial_log} are gone from it"
            )
    else:
        logged = in_log
        (folder / FROM_LOG).write_text(json.dumps(list(logged)) + "\n")
        if logged:
            before = len(logged)
            rest = "the others run now" if before < base.n_trials else "choosing the best of them"
            print(
                f"search {name!r} goes on from the trial log {trial_log}: {before} of {base.n_trials} trials had ended; {rest}"
            )
    for trial_id, entry in logged.items():
        tell_rule(rule, trial_id, entry)
    if restore:
        # trials that failed (settings that do not go together) stay failed, as the sampler was told
        try:
            tuner = tune.Tuner.restore(
                str(folder.resolve() / "tune" / name), trainable=trainable, resume_unfinished=True
            )
            restored = tuner.get_results()
        except Exception as error:  # a state Ray Tune cannot read back: the caller starts a new search
            ray.kill(rule)  # type: ignore[arg-type]
            raise RestoreError(first_line(error)) from None
        before = len(logged) + sum(replay_to_rule(rule, restored[i].metrics or {}) for i in range(len(restored)))
        rest = "the others run now" if before < base.n_trials else "choosing the best of them"
        print(f"search {name!r} resumed: {before} of {base.n_trials} trials had finished; {rest}")
    else:
        searcher = pruning_searcher(space, base.seed, None if any(e["params"] == own for e in logged.values()) else own)
        for entry in logged.values():
            tell_searcher(searcher, entry)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=base.n_trials - len(logged),
                max_concurrent_trials=workers or cores(),
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(folder.resolve() / "tune"),
                stop={"training_iteration": 1},
                verbose=0,
                checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
                callbacks=callbacks,
            ),
        )
    results = []
    if len(logged) < base.n_trials:
        grid = tuner.fit()
        results = [grid[i] for i in range(len(grid))]
    ray.kill(rule)  # type: ignore[arg-type]
    ended = len(logged) + sum(1 for r in results if r.error is not None or (r.metrics and "score" in r.metrics))
    if ended < base.n_trials:  # Ctrl-C: Ray Tune saved the search's state and returned
        raise SearchInterruptedError(ended, base.n_trials, folder)
    done = [(e, e["params"]) for e in logged.values() if "score" in e]
    done += [(r.metrics, r.config or {}) for r in results if r.error is None and r.metrics and "score" in r.metrics]
    trials = len(logged) + len(results)
    failed = sum("error" in e for e in logged.values()) + sum(r.error is not None for r in results)
    pruned = sum(bool(m.get("pruned")) for m, _ in done)
    if not done:
        errors = [e["error"] for e in logged.values() if "error" in e] + [
            first_line(r.error) for r in results if r.error is not None
        ]
        raise ConfigError(f"all {trials} trials failed; the first: {errors[0] if errors else 'no result'}")
    done = [(m, c) for m, c in done if not m.get("pruned")]  # a pruned run's score is of a shorter run
    if not done:
        raise ConfigError(f"search {name!r} has no completed trial: every trial was pruned")
    metrics, config = done[best_index([m["score"] for m, _ in done], [c for _, c in done], own)]
    first = next((m["score"] for m, c in done if own and c == own), None)
    best = Best(
        dict(config),
        metrics["score"],
        metrics["metric"],
        trials,
        _first(own, first),
        failed,
        pruned,
        metrics.get("steps_per_second"),
    )
    return best, before


def tell_searcher(searcher: Any, entry: dict[str, Any]) -> None:
    """A trial from the trial log, told to the sampler as a trial of this search would be: a failed one as
    failed, a pruned one as pruned without a value (see :func:`pruning_searcher`)."""
    if "error" in entry:
        searcher.add_evaluated_point(entry["params"], None, error=True)
        return
    pruned = bool(entry["pruned"])
    try:
        searcher.add_evaluated_point(entry["params"], None if pruned else entry["score"], pruned=pruned)
    except ValueError as error:  # a score Optuna refuses (NaN): Ray Tune only warns of such a trial too
        print(f"a logged trial's score {entry['score']!r} cannot be told to the sampler ({first_line(error)})")


def tell_rule(rule: Any, trial_id: str, entry: dict[str, Any]) -> None:
    """A trial from the trial log, told to the median rule as it ended: its evaluations, then its end."""
    if "error" in entry:
        return
    reports = [(int(step), float(value)) for step, value in entry.get("reports", [])]
    ray.get(rule.replay.remote(trial_id, reports, entry["score"], bool(entry["pruned"])))


def log_signature(base: TrainConfig, space: dict[str, BaseDistribution], resolved: str | None = None) -> dict[str, Any]:
    """What a trial log's search is: :func:`search_signature` without where it logs (another machine's
    clone, another log folder: the same search)."""
    return search_signature(base, space, skip=("verbose", "log_folder"), resolved=resolved)


def best_index(scores: list[float], params: list[dict[str, Any]], own: dict[str, Any] | None) -> int:
    """The best of the completed trials (``scores`` and ``params`` in trial order): the highest score, the
    earliest of equals, except that a tie with the run's own settings (``own``) keeps them: a search that
    found nothing better than where it started does not move."""
    top = max(scores)
    tied = [i for i, score in enumerate(scores) if score == top]
    return next((i for i in tied if own is not None and params[i] == own), tied[0])


def replay_to_rule(rule: Any, metrics: dict[str, Any]) -> bool:
    """A finished trial of a restored search, told to the new median rule as it was told to the first one:
    the evaluations it reported (from its run's ``evaluations.npz``), then its end. An unfinished trial
    (no score yet) is not: it goes on (see :class:`agents.trials.ReportEvaluations`) and reports itself.
    Returns whether it was told."""
    if "score" not in metrics or "folder" not in metrics:
        return False
    steps, values = reported_evaluations(Path(metrics["folder"]))
    reports = list(zip(steps, values, strict=True))
    ray.get(rule.replay.remote(str(metrics["trial_id"]), reports, metrics["score"], metrics["pruned"]))
    return True


def open_study(
    storage: optuna.storages.RDBStorage, name: str, objective: str, space: dict[str, BaseDistribution]
) -> optuna.Study:
    """The study ``name`` in ``storage`` (made if new), refused if it scores its trials another way or
    searches another space."""
    # unseeded: processes joining one study must not all draw the same settings
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        load_if_exists=True,
        direction="maximize",
        sampler=TPESampler(),
        pruner=median_pruner(),
    )
    _check_objective(study, objective)
    _check_space(study, space)
    return study


def search_in_study(
    base: TrainConfig, space: dict[str, BaseDistribution], folder: Path, study: optuna.Study, own: dict[str, Any] | None
) -> Best:
    """``base.n_trials`` trials of ``study``, one after another in this process; the settings ``own`` are
    queued first unless the study has already run or queued them."""
    # Optuna's own skip_if_exists also skips settings whose trial failed: an interrupted first process
    # would leave the study without its first trial for good
    if own and not any(t.params == own and t.state != TrialState.FAIL for t in study.trials):
        study.enqueue_trial(own)

    taken: set[int] = set()
    """trials this process ran that another process failed meanwhile (their heartbeat had stopped)"""

    def report(trial: optuna.Trial, step: int, value: float) -> bool:
        try:
            return report_to_trial(trial, step, value)
        except optuna.exceptions.UpdateFinishedTrialError:
            taken.add(trial.number)
            return True  # stop the run: its settings were queued again when the study failed it

    current: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        current[:] = [trial.number]
        params = {name: suggest(trial, name, distribution) for name, distribution in space.items()}
        try:
            # no resume points: a trial failed with its process is run again as another trial, maybe elsewhere
            outcome = run_trial(base, params, folder / f"trial_{trial.number}", partial(report, trial), checkpoint_s=-1)
        except ConfigError as error:  # settings that do not go together: the next trial samples others
            print(f"trial {trial.number} failed: {error}")
            raise
        except Exception as error:  # a run that crashed (diverged to NaN, say): this trial fails, not the search
            print(f"trial {trial.number} failed: {type(error).__name__}: {first_line(error)}")
            raise TrialCrashedError(first_line(error)) from error
        if any(t.number == trial.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))):
            taken.add(trial.number)
        if trial.number in taken:
            raise TakenOverError(trial.number)
        trial.set_user_attr("metric", outcome["metric"])
        trial.set_user_attr("steps_per_second", outcome["steps_per_second"])
        speed = f"{outcome['steps_per_second']:,.0f} env steps/s"
        if outcome["pruned"]:
            print(f"trial {trial.number} pruned at {outcome['metric']} {outcome['score']:.3f} ({speed})")
            raise optuna.TrialPruned()
        print(f"trial {trial.number}: {outcome['metric']} {outcome['score']:.3f} ({speed})")
        return float(outcome["score"])

    # study.optimize, not ask/tell: it runs the storage's heartbeat beside each trial and fails stale ones
    # (its own log lines off: a failed trial would print a traceback beside our one line; one line per
    # trial is printed here instead)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    ran = 0
    """trials this process has ended"""
    try:
        for _ in range(base.n_trials):
            current.clear()
            try:
                study.optimize(objective, n_trials=1, catch=(ConfigError, TrialCrashedError))
            except (TakenOverError, ValueError) as error:
                # Optuna cannot tell a trial that another process has failed: ValueError
                number = error.number if isinstance(error, TakenOverError) else current[0] if current else -1
                if number not in taken:
                    raise
                print(
                    f"trial {number} was failed by another process (this one sent no heartbeat for {GRACE_S} s; "
                    "the study runs its settings again once): going on"
                )
            ran += 1
    except KeyboardInterrupt:  # Optuna has marked the trial under way failed
        raise SearchInterruptedError(ran, base.n_trials, folder, study.study_name) from None
    finally:
        optuna.logging.set_verbosity(verbosity)
    completed = [t for t in study.trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not completed:
        raise ConfigError(f"study {study.study_name!r} has no completed trial: every trial failed or was pruned")
    best = completed[best_index([float(t.value) for t in completed], [t.params for t in completed], own)]  # type: ignore[arg-type]
    first = next((t.value for t in study.trials if own and t.params == own and t.state == TrialState.COMPLETE), None)
    metric = best.user_attrs.get("metric", "score")
    failed = sum(t.state == TrialState.FAIL for t in study.trials)
    pruned = sum(t.state == TrialState.PRUNED for t in study.trials)
    own_first = _first(own, first)  # type: ignore[arg-type]
    score = float(best.value)  # type: ignore[arg-type]
    speed = best.user_attrs.get("steps_per_second")
    return Best(best.params, score, metric, len(study.trials), own_first, failed, pruned, speed)


class TakenOverError(Exception):
    """This process's trial was failed by another (its heartbeat stopped): its result is not told."""

    def __init__(self, number: int):
        super().__init__(f"trial {number} was failed by another process")
        self.number = number


def suggest(trial: optuna.Trial, name: str, distribution: BaseDistribution) -> Any:
    """``trial``'s value for ``name`` drawn from ``distribution`` (a queued trial gets its queued value)."""
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(
            name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(
            name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    raise TypeError(f"no suggestion for {type(distribution).__name__} {name!r}")


def _check_objective(study: optuna.Study, objective: str) -> None:
    """A study scores its trials one way: ``--objective`` is saved with it, and a process with another is refused."""
    saved = study.user_attrs.get("objective")
    if saved is None and study.trials:
        saved = "final"  # a study begun before --objective existed scored the final evaluation
    if saved is None:
        study.set_user_attr("objective", objective)
    elif saved != objective:
        raise ConfigError(
            f"--objective {objective} does not match study {study.study_name!r}, whose trials are scored by {saved}: "
            f"give --objective {saved}, or another --study-name"
        )


def _check_space(study: optuna.Study, space: dict[str, BaseDistribution]) -> None:
    """A study searches one space: it is saved with the study, and a process searching another is refused
    (a trial queued again after its process died carries its settings, which must mean the same here).
    A study begun before the space was saved is compared with its trials' own distributions."""
    saved = study.user_attrs.get("space")
    if saved is not None:
        theirs = {name: json_to_distribution(text) for name, text in saved.items()}
    else:  # the trials' own, or none yet: this space is the study's
        theirs = next((dict(t.distributions) for t in study.trials if t.distributions), space)
    differ = sorted(set(theirs) ^ set(space)) or sorted(k for k in space if theirs[k] != space[k])
    if not differ:
        if saved is None:
            study.set_user_attr("space", {name: distribution_to_json(d) for name, d in space.items()})
        return
    key = differ[0]
    there = repr(theirs[key]) if key in theirs else "not searched"
    here = repr(space[key]) if key in space else "not searched"
    raise ConfigError(
        f"this run's search space does not match study {study.study_name!r} at {key!r} (there: {there}; "
        f"here: {here}): give the --algo, --extractor and --search-space of its other processes, or another --study-name"
    )


def _first(own: dict[str, Any] | None, score: float | None) -> dict[str, Any] | None:
    return None if own is None else {"params": own, "score": score}


def write_best(base: TrainConfig, folder: Path, name: str, best: Best) -> TuneResult:
    """``best_params.json``: the best settings as ``-params`` takes them, and the command that reuses them."""
    hyperparams = {**base.hyperparams, **best.params}
    params = [f"{k}:{v!r}" for k, v in hyperparams.items()]
    flags = config_flags(base, skip=(*TUNE_FIELDS, "hyperparams", "verbose"))
    command = shlex.join(["python", "train.py", *flags, "-params", *params])
    record = {
        "study": name,
        "storage": base.storage,
        "trials": best.trials,
        "failed": best.failed,
        "pruned": best.pruned,
        "metric": best.metric,
        "best_score": best.score,
        "best_steps_per_second": best.steps_per_second,
        "objective": base.objective,
        "first_trial": best.first,
        "hyperparams": hyperparams,
        "params": params,
        "command": command,
    }
    (folder / BEST).write_text(json.dumps(record, indent=2) + "\n")
    return TuneResult(folder, best, command)


def optimize(cfg: TrainConfig, workers: int | None = None, trial_log: Path | None = None) -> TuneResult | StoppedSearch:
    """Check every setting, open the storage, then search and write the best settings (on Ray: ``workers``
    trials at once, default one per core).

    On Ray, an earlier search with the same settings and space in the same log folder that was
    interrupted (no ``best_params.json``) is gone on with instead of starting another: its finished
    trials are kept. Where there is none, the trials ``trial_log`` holds of the same search (another
    machine's, see :mod:`agents.trial_log`) are taken as run; each trial is logged there as it ends.
    (A study in ``--storage`` keeps its trials by itself.) An interrupted search returns
    :class:`StoppedSearch` and writes no best settings."""
    plan = resolve(trial_config(cfg, {}, Path(cfg.log_folder)))
    space = search_space(plan, cfg.search_space)
    base = replace(cfg, extractor=plan.extractor)
    name = cfg.study_name or f"{cfg.algo}-{plan.extractor}-{env_name(cfg.env)}"
    study = open_study(open_storage(cfg.storage), name, cfg.objective, space) if cfg.storage else None
    own, moved = own_settings(plan, space)
    resolved = plan_digest(plan)
    signature = search_signature(base, space, resolved=resolved)
    parent = Path(cfg.log_folder) / cfg.algo / "optimize"
    earlier = unfinished_search(parent, name, signature) if study is None else None
    folder = earlier or new_run_folder(cfg.log_folder, f"{cfg.algo}/optimize", cfg.env)
    (folder / SEARCH).write_text(json.dumps(signature, indent=1) + "\n")
    print(_first_line(own, moved))
    resumed = None
    if study is not None:
        try:
            best = search_in_study(base, space, folder, study, own)
        except SearchInterruptedError as stop:
            return StoppedSearch(stop.folder, stop.finished, stop.n_trials, study=stop.study)
    else:
        try:
            best, resumed, folder = _search_on_ray_or_anew(
                cfg, base, space, folder, name, own, workers, earlier, trial_log, resolved
            )
        except SearchInterruptedError as stop:
            return StoppedSearch(stop.folder, stop.finished, stop.n_trials)
    result = write_best(replace(base, extractor=cfg.extractor), folder, name, best)  # the command as the user wrote it
    return replace(result, resumed=resumed)


def _search_on_ray_or_anew(
    cfg: TrainConfig,
    base: TrainConfig,
    space: dict[str, BaseDistribution],
    folder: Path,
    name: str,
    own: dict[str, Any] | None,
    workers: int | None,
    earlier: Path | None,
    trial_log: Path | None = None,
    resolved: str | None = None,
) -> tuple[Best, int | None, Path]:
    """The search on Ray in ``folder``, going on with it if it is ``earlier``'s; a search whose saved state
    Ray Tune cannot read back is said so in one line and made anew in a new folder."""
    try:
        restore = earlier is not None
        return (*search_on_ray(base, space, folder, name, own, workers, restore, trial_log, resolved), folder)
    except RestoreError as error:
        anew = new_run_folder(cfg.log_folder, f"{cfg.algo}/optimize", cfg.env)
        (anew / SEARCH).write_text((folder / SEARCH).read_text())
        print(f"the interrupted search in {folder} cannot be gone on with ({error}): searching anew in {anew}")
        return (*search_on_ray(base, space, anew, name, own, workers, trial_log=trial_log, resolved=resolved), anew)


def search_signature(
    base: TrainConfig,
    space: dict[str, BaseDistribution],
    skip: tuple[str, ...] = ("verbose",),
    resolved: str | None = None,
) -> dict[str, Any]:
    """What a search is: its run's flags but ``skip`` (trials, objective and seed among them), the space it
    draws from and ``resolved`` (:func:`~agents.plan.plan_digest`: what the flags resolve to, so that a
    preset changed since, behind the same flags, makes it another search)."""
    signature = {
        "flags": config_flags(base, skip=skip),
        "space": {key: distribution_to_json(d) for key, d in space.items()},
    }
    return signature if resolved is None else {**signature, "resolved": resolved}


def unfinished_search(parent: Path, name: str, signature: dict[str, Any]) -> Path | None:
    """The latest search folder under ``parent`` (``ENV_N``) that searched ``signature``, if it did not finish
    (no ``best_params.json``) and left a Ray Tune experiment that can be restored; else None."""
    from ray import tune

    def number(folder: Path) -> int:
        tail = folder.name.rsplit("_", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    for folder in sorted(parent.glob("*_*"), key=number, reverse=True):
        if not (folder / SEARCH).is_file() or not same_search(json.loads((folder / SEARCH).read_text()), signature):
            continue
        # the latest search of these settings decides: finished, the same command searches anew
        experiment = folder.resolve() / "tune" / name
        finished = (folder / BEST).is_file()
        return folder if not finished and _has_trials(experiment) and tune.Tuner.can_restore(str(experiment)) else None
    return None


def _has_trials(experiment: Path) -> bool:
    """Whether Ray Tune saved the state of ``experiment`` with at least one trial in it (an interrupt before
    its first trial leaves nothing to go on with: such a search starts anew)."""
    for state in sorted(experiment.glob("experiment_state-*.json"), reverse=True):
        try:
            return bool(json.loads(state.read_text()).get("trial_data"))
        except (OSError, ValueError):
            continue
    return False


def _first_line(own: dict[str, Any] | None, moved: list[str]) -> str:
    if own is None:
        return f"first trial: sampled like the others (the run's own settings are not in the space: {moved[0]})"
    settings = " ".join(f"{k}:{v!r}" for k, v in own.items())
    where = f"; moved into the space: {', '.join(moved)}" if moved else ""
    return f"first trial: the run's own settings, {settings}{where}"
