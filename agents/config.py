"""The training run's configuration: one typed dataclass whose field help is the ``--help`` text."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

VEC_ENVS = ("dummy", "subproc")
OBJECTIVES = ("curve", "final")
"""what ``--optimize`` maximises (agents/trials.py, ``objective``)"""
HISTORY_INPUTS = ("action", "reward")
"""what a history step can hold besides the observation (``HistoryObservation``'s include_action, include_reward)"""


class ConfigError(ValueError):
    """A bad setting: the message is one line naming the value and what is allowed."""


class StoppedEarly(KeyboardInterrupt):
    """Ctrl-C where training's own handling is not (start-up, a replay): the message, one line, says what
    was left; ``train.py`` prints it and exits with 130."""


def _flag(*flags: str, help: str, **kwargs: Any) -> Any:
    default = kwargs.pop("default", None)
    factory = kwargs.pop("default_factory", None)
    metadata = {"flags": flags, "help": help, **kwargs}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """One training run. ``None`` means "take the preset for this algo and env"."""

    algo: str = _flag("--algo", default="ppo", registry="algos", help="RL algorithm (choices: the registry's)")
    env: str = _flag("--env", default="rlattn/TMaze-v0", help="Gymnasium env id (see --list-envs)")
    extractor: str | None = _flag(
        "--extractor", default=None, registry="extractors", help="feature extractor (the registry's, listed in --help)"
    )
    history: int | None = _flag(
        "--history",
        default=None,
        type=int,
        help="how many past steps a decision can see, its own included: the history K of the stateless extractors, the memory window W of ppo_attention (longer than the env's episodes is fine). Default: the preset, else a whole episode where the env says how long that is, else 64",
    )
    history_inputs: list[str] | None = _flag(
        "--history-inputs",
        default=None,
        nargs="*",
        choices=HISTORY_INPUTS,
        help="what each observed step holds besides the observation: action (the one that led to it; one-hot if discrete, zeros on the first step), reward (received on arriving); none at all for the observation only. With ppo_lstm or mlp the newest step's. Default: the preset (action on the Active T-Maze, else none)",
    )
    n_timesteps: int | None = _flag(
        "-n", "--n-timesteps", default=None, type=int, help="env steps to train for (default: the preset)"
    )
    seed: int = _flag("--seed", default=0, type=int, help="random seed for envs, model and evaluation")
    log_folder: str = _flag("-f", "--log-folder", default="logs", help="runs go to LOG_FOLDER/ALGO/ENV_N/")
    tensorboard_log: str | None = _flag(
        "-tb", "--tensorboard-log", default=None, help="TensorBoard folder (default: the run folder)"
    )
    eval_freq: int = _flag(
        "--eval-freq", default=10_000, type=int, help="evaluate every this many env steps (-1 disables)"
    )
    eval_episodes: int = _flag(
        "--eval-episodes", default=50, type=int, help="episodes per evaluation, and for the final one"
    )
    save_freq: int = _flag(
        "--save-freq", default=50_000, type=int, help="save a checkpoint every this many env steps (-1 disables)"
    )
    env_kwargs: dict[str, Any] = _flag(
        "--env-kwargs", default_factory=dict, nargs="*", kv=True, help="env keywords as key:value literals"
    )
    eval_env_kwargs: dict[str, Any] = _flag(
        "--eval-env-kwargs",
        default_factory=dict,
        nargs="*",
        kv=True,
        help="env keywords for evaluation and replay only, over --env-kwargs (e.g. train on mixed corridor lengths, evaluate on the longest: min_corridor_length:None)",
    )
    hyperparams: dict[str, Any] = _flag(
        "-params",
        "--hyperparams",
        default_factory=dict,
        nargs="*",
        kv=True,
        help="overrides key:value for the algorithm or the extractor; learning_rate, clip_range and ent_coef also take lin_START (falls linearly to 0 over the run, as in the RL Zoo)",
    )
    trained_agent: str | None = _flag(
        "-i",
        "--trained-agent",
        default=None,
        help="resume a run from one of its model zips (final, best or checkpoint): the run's saved settings are used, -n is the total step count to reach, and its folder and TensorBoard run continue",
    )
    n_envs: int | None = _flag("--n-envs", default=None, type=int, help="parallel envs (default: the preset)")
    vec_env: str = _flag(
        "--vec-env",
        default="dummy",
        choices=VEC_ENVS,
        help="run envs in this process (dummy) or in subprocesses (subproc)",
    )
    progress: bool = _flag(
        "-P", "--progress", default=False, action="store_true", help="show a progress bar (tqdm and rich)"
    )
    device: str = _flag("--device", default="cpu", help="torch device: cpu, cuda, auto")
    verbose: int = _flag("--verbose", default=1, type=int, help="0 quiet, 1 training logs, 2 debug")
    replay: str | None = _flag(
        "--replay",
        default=None,
        help="play a trained run instead of training: a run folder (its best model, else its final one) or a model zip in one; prints success and return and writes a GIF with the attention overlay",
    )
    episodes: int = _flag("--episodes", default=5, type=int, help="episodes to play with --replay")
    video: str | None = _flag(
        "--video",
        default=None,
        help="GIF written by --replay, its record beside it as .json (default: RUN_FOLDER/replay.gif)",
    )
    list_envs: bool = _flag(
        "--list-envs", default=False, action="store_true", help="list this project's env ids and exit"
    )
    optimize: bool = _flag(
        "--optimize",
        default=False,
        action="store_true",
        help="tune the hyperparameters with Optuna (TPE sampler, median pruner on evaluation success, else mean return) instead of training once; the first trial runs the run's own settings (its -params, else the preset), so the search is measured against them: trials run on Ray Tune, one per core, or with --storage in a shared Optuna study; writes best_params.json and prints the train.py command that reuses the best settings",
    )
    n_trials: int = _flag("--n-trials", default=10, type=int, help="trials to run with --optimize")
    storage: str | None = _flag(
        "--storage",
        default=None,
        help="with --optimize: an Optuna RDB URL (e.g. sqlite:///study.db) holding a study that several processes or machines join, each running its trials in turn; default: a search on Ray Tune",
    )
    study_name: str | None = _flag(
        "--study-name", default=None, help="with --optimize: the study's name (default: ALGO-EXTRACTOR-ENV)"
    )
    objective: str = _flag(
        "--objective",
        default="curve",
        choices=OBJECTIVES,
        help="with --optimize: what a trial scores, from its evaluations' success rate (else mean return): curve, the mean over every evaluation during training and the final one (the area under the evaluation curve); final, the final evaluation alone (as the RL Zoo)",
    )
    search_space: list[str] = _flag(
        "--search-space",
        default_factory=list,
        nargs="*",
        help="with --optimize: search only these keys, as KEY (its default range), KEY:LOW:HIGH or KEY:[V1,V2,...] (default: every key the algorithm and extractor take, of learning_rate n_steps batch_size ent_coef gamma gae_lambda n_epochs clip_range exploration_fraction target_update_interval embed_dim n_layers n_heads)",
    )


def parse_key_values(items: list[str], what: str) -> dict[str, Any]:
    """``["a:1", "b:'x'"]`` -> ``{"a": 1, "b": "x"}``; values must be Python literals."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition(":")
        if not sep or not key.isidentifier():
            raise ConfigError(f"{what} {item!r} is invalid: expected key:value, e.g. corridor_length:20")
        if text.startswith("lin_"):  # a linear schedule, the RL Zoo's way (agents/schedules.py checks it)
            out[key] = text
            continue
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ConfigError(
                f"{what} {item!r} is invalid: the value {text!r} must be a Python literal (number, string in quotes, list, dict, True/False/None)"
            ) from None
    return out
