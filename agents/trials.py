"""One tuning trial: a training run with sampled settings that reports each evaluation and stops when pruned.

Both ways of running trials use it: a Ray Tune trial (:class:`TuneTrial`, the median rule kept by one
:class:`MedianRule` actor) or a trial of a shared Optuna study (the study's own pruner).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import ray
import torch
from optuna.trial import TrialState
from ray import tune
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from agents.config import TrainConfig
from agents.evaluate import EvalResult
from agents.resume import CHECKPOINT_S, train_resumable

Report = Callable[[int, float], bool]
"""(env steps, evaluation score) -> whether to prune the run now"""
TUNE_FIELDS = ("optimize", "n_trials", "storage", "study_name", "search_space", "objective")
"""the flags of the search itself, not of a run"""


def median_pruner() -> optuna.pruners.MedianPruner:
    """Prune a trial whose evaluation falls below the median of earlier trials' at the same step (after 5 trials)."""
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)


def _walk(callback: BaseCallback) -> Iterator[BaseCallback]:
    yield callback
    if isinstance(callback, CallbackList):
        for child in callback.callbacks:
            yield from _walk(child)


class ReportEvaluations(BaseCallback):
    """After each evaluation of the run, report its success rate (else its mean return); stop when told to prune.

    A resumed run's evaluation callback starts with the evaluations of the attempts before (up to the
    step it goes on from): they are reported first, as they came, so that a trial killed with its search
    is judged on its whole curve; if the pruner stops it on one of them, the run stops at once."""

    def __init__(self, report: Report):
        super().__init__()
        self.report = report
        self.pruned = False
        self.evaluation: EvalCallback | None = None
        self.seen = 0
        self.values: list[float] = []
        """every evaluation's score so far, in order"""
        self.steps: list[int] = []
        """the env steps of each of ``values``"""

    def _on_training_start(self) -> None:
        # SB3 passes learn()'s locals: its CallbackList holds the run's EvalCallback, which this one follows
        found = [c for c in _walk(self.locals["callback"]) if isinstance(c, EvalCallback)]
        self.evaluation = found[0] if found else None
        self.seen, self.values, self.steps, self.pruned = 0, [], [], False
        self._report_new()

    def _report_new(self) -> None:
        """Every evaluation not reported yet, in order, until the pruner says stop."""
        evaluation = self.evaluation
        if evaluation is None:
            return
        while self.seen < len(evaluation.evaluations_results) and not self.pruned:
            i = self.seen
            successes = evaluation.evaluations_successes
            scores = successes[i] if len(successes) > i and successes[i] else evaluation.evaluations_results[i]
            value = float(np.mean(scores))
            self.values.append(value)
            self.steps.append(int(evaluation.evaluations_timesteps[i]))
            self.seen += 1
            self.pruned = self.report(self.steps[-1], value)

    def _on_step(self) -> bool:
        self._report_new()
        return not self.pruned


def reported_evaluations(run: Path) -> tuple[list[int], list[float]]:
    """The (env steps, score) pairs a finished trial's run reported, read back from its ``evaluations.npz``
    (:class:`ReportEvaluations`' values: each evaluation's success rate, else its mean return)."""
    file = run / "evaluations.npz"
    if not file.is_file():
        return [], []
    with np.load(file) as saved:
        successes = saved["successes"] if "successes" in saved else np.zeros(0)
        timesteps, results = saved["timesteps"], saved["results"]
        if successes.size and len(successes) < len(timesteps):
            # written before the evaluations ahead of the first reported success got rows: they were failures
            width = int(np.shape(successes)[-1])
            successes = np.concatenate([np.zeros((len(timesteps) - len(successes), width)), successes])
        scores = successes.mean(axis=1) if successes.size else results.mean(axis=1)
        return [int(t) for t in timesteps], [float(v) for v in scores]


class StopAtBudget(BaseCallback):
    """End an on-policy run once it has collected its budget of env steps, so that every trial is scored
    on the same number.

    SB3 trains until a rollout ends past ``total_timesteps``: with n_steps x n_envs larger than what
    is left, a trial would collect and train on up to a whole rollout more than the others. A rollout
    that ends exactly at the budget is kept and trained on; one that would cross it stops at the budget,
    untrained (the default search space holds only rollouts that fit the budget). Off-policy runs train
    every ``train_freq`` steps and pass the budget by less than that: left as SB3 runs them."""

    def __init__(self) -> None:
        super().__init__()
        self.budget = 0
        self.rollout_end: int | None = None

    def _on_training_start(self) -> None:
        self.budget = int(self.locals["total_timesteps"])

    def _on_rollout_start(self) -> None:
        if isinstance(self.model, OnPolicyAlgorithm):  # a rollout is n_steps on each env
            self.rollout_end = self.num_timesteps + self.model.n_steps * self.model.n_envs

    def _on_step(self) -> bool:
        if self.rollout_end is None or self.num_timesteps < self.budget:
            return True
        return self.num_timesteps >= self.rollout_end


def objective(evaluation: EvalResult | None, during: list[float], kind: str) -> tuple[float, str]:
    """(score, what it is) of a finished run, from its final evaluation's success rate (else its mean return).

    ``kind`` "final": that final evaluation alone, as the RL Zoo scores a trial. "curve": the mean of
    the evaluations ``during`` training and the final one, the area under the evaluation curve: it
    rewards getting there early and staying there, and one lucky evaluation moves it by 1/n only."""
    if evaluation is None:
        raise KeyboardInterrupt("the trial's run was interrupted")
    if evaluation.success_rate is not None:
        final, metric = evaluation.success_rate, "eval success"
    else:
        final, metric = evaluation.mean_return, "mean return"
    if kind == "final":
        return final, metric
    values = [*during, final]
    return float(np.mean(values)), f"{metric}, mean of {len(values)} evaluations"


def trial_config(base: TrainConfig, params: dict[str, Any], folder: Path) -> TrainConfig:
    """``base`` with the sampled settings over its ``-params``, quiet, no checkpoints, in ``folder``."""
    defaults = TrainConfig()
    search = {name: getattr(defaults, name) for name in TUNE_FIELDS}
    hyperparams = {**base.hyperparams, **params}
    return replace(base, **search, hyperparams=hyperparams, log_folder=str(folder), verbose=0, save_freq=-1)


def run_trial(
    base: TrainConfig, params: dict[str, Any], folder: Path, report: Report, checkpoint_s: float = CHECKPOINT_S
) -> dict[str, Any]:
    """Train with ``params`` in ``folder`` (going on from the resume point of an attempt that was killed
    there, see :func:`agents.resume.train_resumable`); the score, what it measures, whether the run
    was pruned, the (env steps, score) pairs it reported, the env steps it trained and its env steps/s
    (training alone; of its last attempt where it was resumed, as in ``result.json``)."""
    reporter = ReportEvaluations(report)
    attempt = train_resumable(
        trial_config(base, params, folder), folder, f"trial {folder.name}", [reporter, StopAtBudget()], checkpoint_s
    )
    result = attempt.result
    score, metric = objective(result.evaluation, reporter.values, base.objective)
    reports = [[step, value] for step, value in zip(reporter.steps, reporter.values, strict=True)]
    return {
        "score": score,
        "metric": metric,
        "pruned": reporter.pruned,
        "folder": str(result.folder),
        "reports": reports,
        "env_steps": result.timesteps,
        "steps_per_second": result.steps_per_second,
    }


def finished_trial(folder: Path, kind: str, report: Report) -> dict[str, Any] | None:
    """The outcome of a trial (of a search gone on with after an interrupt) whose run had finished before
    Ray Tune took its result: read back from the run's files, its evaluations reported again, instead of
    training it again. None when the trial's folder holds no finished run. A run that ended short of its
    budget was pruned (a run that ends by its budget collects all of it)."""
    for file in sorted(folder.glob("*/*/result.json")):
        record = json.loads(file.read_text())
        if record.get("interrupted_by") is not None or record.get("evaluation") is None:
            continue
        steps, values = reported_evaluations(file.parent)
        for step, value in zip(steps, values, strict=True):
            report(step, value)
        score, metric = objective(EvalResult(**record["evaluation"]), values, kind)
        pruned = record["env_steps"] < record["settings"]["n_timesteps"]
        reports = [[step, value] for step, value in zip(steps, values, strict=True)]
        return {
            "score": score,
            "metric": metric,
            "pruned": pruned,
            "folder": str(file.parent),
            "reports": reports,
            "env_steps": record["env_steps"],
            "steps_per_second": record["steps_per_second"],
        }
    return None


def report_to_trial(trial: optuna.Trial, step: int, value: float) -> bool:
    """An Optuna trial's report: record the value at ``step``, ask its study's pruner."""
    trial.report(value, step)
    return trial.should_prune()


class MedianRule:
    """Optuna's median pruner for the trials of one Ray Tune search: every trial reports to this one actor."""

    def __init__(self) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(direction="maximize", pruner=median_pruner())
        self.trials: dict[str, optuna.Trial] = {}

    def report(self, name: str, step: int, value: float) -> bool:
        if name not in self.trials:
            self.trials[name] = self.study.ask()
        return report_to_trial(self.trials[name], step, value)

    def finish(self, name: str, value: float, pruned: bool) -> None:
        trial = self.trials.pop(name, None)
        if trial is not None:
            state = TrialState.PRUNED if pruned else TrialState.COMPLETE
            self.study.tell(trial, None if pruned else value, state=state)

    def replay(self, name: str, reports: list[tuple[int, float]], value: float, pruned: bool) -> None:
        """A trial that finished before the search was restored: its reports and its end, as they came then."""
        for step, reported in reports:
            self.report(name, step, reported)
        self.finish(name, value, pruned)


def _ask_rule(rule: Any, name: str, step: int, value: float) -> bool:
    return ray.get(rule.report.remote(name, step, value))


class TuneTrial(tune.Trainable):
    """A Ray Tune trial: one whole training run in one step (in the actor's main thread, where signals work)."""

    def setup(self, config: dict[str, Any], base: TrainConfig, folder: Path, rule: Any) -> None:  # type: ignore[override]
        torch.set_num_threads(1)  # one trial per core
        self.params, self.base, self.folder, self.rule = dict(config), base, folder, rule

    def step(self) -> dict[str, Any]:
        name = self.trial_id
        report = partial(_ask_rule, self.rule, name)
        folder = self.folder / f"trial_{name}"
        outcome = finished_trial(folder, self.base.objective, report) or run_trial(
            self.base, self.params, folder, report
        )
        ray.get(self.rule.finish.remote(name, outcome["score"], outcome["pruned"]))
        return outcome


def config_flags(cfg: TrainConfig, skip: tuple[str, ...] = ()) -> list[str]:
    """The ``train.py`` flags that give ``cfg`` (those away from their defaults), without the fields in ``skip``."""
    defaults, flags = TrainConfig(), []
    for f in fields(TrainConfig):
        value = getattr(cfg, f.name)
        if f.name in skip or value == getattr(defaults, f.name):
            continue
        flag = f.metadata["flags"][0]
        if isinstance(value, bool):
            flags.append(flag)
        elif isinstance(value, dict):
            flags += [flag, *(f"{k}:{v!r}" for k, v in value.items())]
        elif isinstance(value, list):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags
