"""``train.py --optimize``: tune a run's hyperparameters with Optuna, on Ray Tune or in a shared Optuna study.

Every setting is checked (and the storage opened) before the first trial. The study's folder,
``LOG_FOLDER/ALGO/optimize/ENV_N/``, holds each trial's run folder and ``best_params.json``: the best
settings as ``-params`` takes them and the ``train.py`` command that reuses them.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import TPESampler
from optuna.trial import TrialState

from agents.checks import first_line
from agents.cluster import cores, start_ray
from agents.config import ConfigError, TrainConfig
from agents.plan import resolve
from agents.runfolder import env_name, new_run_folder
from agents.search_space import search_space
from agents.trials import (
    TUNE_FIELDS,
    MedianRule,
    TuneTrial,
    config_flags,
    median_pruner,
    report_to_trial,
    run_trial,
    trial_config,
)

BEST = "best_params.json"


@dataclass(frozen=True)
class Best:
    params: dict[str, Any]
    score: float
    metric: str
    trials: int
    """trials the search ran (with --storage: all in the study, other processes' too)"""


@dataclass(frozen=True)
class TuneResult:
    folder: Path
    best: Best
    command: str
    exit_code: int = 0

    def summary(self) -> str:
        settings = " ".join(f"{k}:{v!r}" for k, v in self.best.params.items())
        return (
            f"best of {self.best.trials} trials: {self.best.metric} {self.best.score:.3f} with {settings}; "
            f"written to {self.folder / BEST}\nreuse with: {self.command}"
        )


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The Optuna RDB storage at ``url``, or a one-line ConfigError naming it."""
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as error:  # SQLAlchemy and drivers raise many kinds: all mean "cannot open it"
        raise ConfigError(
            f"--storage {url!r} cannot be opened ({first_line(error)}): expected an Optuna RDB URL such as sqlite:///study.db"
        ) from None


def search_on_ray(base: TrainConfig, space: dict[str, BaseDistribution], folder: Path, name: str) -> Best:
    """``base.n_trials`` trials on Ray Tune (OptunaSearch with TPE), one per core, pruned by one median rule."""
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    start_ray()
    rule = ray.remote(MedianRule).remote()
    searcher = OptunaSearch(space, metric="score", mode="max", sampler=TPESampler(seed=base.seed))
    trainable = tune.with_parameters(TuneTrial, base=base, folder=folder.resolve() / "trials", rule=rule)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=base.n_trials, max_concurrent_trials=cores()),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(folder.resolve() / "tune"),
            stop={"training_iteration": 1},
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
        ),
    )
    grid = tuner.fit()
    ray.kill(rule)  # type: ignore[arg-type]
    results = [grid[i] for i in range(len(grid))]
    done = [(r.metrics, r.config or {}) for r in results if r.error is None and r.metrics and "score" in r.metrics]
    if not done:
        errors = [first_line(r.error) for r in results if r.error is not None]
        raise ConfigError(f"all {len(grid)} trials failed; the first: {errors[0] if errors else 'no result'}")
    metrics, config = max(done, key=lambda pair: pair[0]["score"])
    return Best(dict(config), metrics["score"], metrics["metric"], len(grid))


def search_in_study(
    base: TrainConfig, space: dict[str, BaseDistribution], folder: Path, storage: optuna.storages.RDBStorage, name: str
) -> Best:
    """``base.n_trials`` trials of the study ``name`` in ``storage``, one after another in this process."""
    # unseeded: processes joining one study must not all draw the same settings
    sampler = TPESampler()
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        load_if_exists=True,
        direction="maximize",
        sampler=sampler,
        pruner=median_pruner(),
    )
    for _ in range(base.n_trials):
        trial = study.ask(space)
        try:
            outcome = run_trial(base, trial.params, folder / f"trial_{trial.number}", partial(report_to_trial, trial))
        except ConfigError as error:  # settings that do not go together: the next trial samples others
            print(f"trial {trial.number} failed: {error}")
            study.tell(trial, state=TrialState.FAIL)
            continue
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        trial.set_user_attr("metric", outcome["metric"])
        pruned = outcome["pruned"]
        study.tell(
            trial, None if pruned else outcome["score"], state=TrialState.PRUNED if pruned else TrialState.COMPLETE
        )
    try:
        best = study.best_trial
    except ValueError:
        raise ConfigError(f"study {name!r} has no completed trial: every trial failed or was pruned") from None
    return Best(best.params, float(best.value), best.user_attrs.get("metric", "score"), len(study.trials))  # type: ignore[arg-type]


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
        "metric": best.metric,
        "best_score": best.score,
        "hyperparams": hyperparams,
        "params": params,
        "command": command,
    }
    (folder / BEST).write_text(json.dumps(record, indent=2) + "\n")
    return TuneResult(folder, best, command)


def optimize(cfg: TrainConfig) -> TuneResult:
    """Check every setting, open the storage, then search and write the best settings."""
    plan = resolve(trial_config(cfg, {}, Path(cfg.log_folder)))
    space = search_space(plan, cfg.search_space)
    base = replace(cfg, extractor=plan.extractor)
    name = cfg.study_name or f"{cfg.algo}-{plan.extractor}-{env_name(cfg.env)}"
    storage = open_storage(cfg.storage) if cfg.storage else None
    folder = new_run_folder(cfg.log_folder, f"{cfg.algo}/optimize", cfg.env)
    if storage is not None:
        best = search_in_study(base, space, folder, storage, name)
    else:
        best = search_on_ray(base, space, folder, name)
    return write_best(base, folder, name, best)
