"""A search's ended trials in one small text file, so that the search can go on from them on another machine.

A search on Ray Tune keeps its state (and each trial's resume point) in its log folder: an interrupted
search goes on from there, but only where that folder is. A trial log is one JSON line per ended
trial (its settings, score, what the score measures, whether it was pruned, the evaluations it
reported, the env steps it trained and at what speed (entries logged before these were kept have neither),
or the error it failed with), after a first line naming the search. It is small enough to
commit beside the settings a search found (``benchmarks/tuned/``): the same search started where its
log folder is gone takes the logged trials as run (the sampler and the median rule are told them) and
runs only the others. A trial that was running when the search stopped is not in the log: it runs again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray import tune

from agents.checks import first_line
from agents.runfolder import write_atomic


def read_trials(path: Path, search: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ended trials of ``search`` in the log at ``path``, by trial id in the order they ended; none when
    there is no log, or when it is another search's (a log left by other settings is not used). A line
    that cannot be read (a write cut short) is left out with a message; the others are kept."""
    if not path.is_file():
        return {}
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    head = _json(lines[0]) if lines else None
    if not isinstance(head, dict) or not same_search(head.get("search"), search):
        return {}
    trials: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(lines[1:], start=2):
        entry = _json(line)
        if not isinstance(entry, dict) or "trial" not in entry or not isinstance(entry.get("params"), dict):
            print(f"trial log {path}, line {number}: not a trial's entry, left out")
            continue
        trials[str(entry.pop("trial"))] = entry
    return trials


def same_search(saved: Any, search: dict[str, Any]) -> bool:
    """Whether a search written down before (a log's head, a search folder's ``search.json``) is ``search``.
    One written before searches named what their settings resolve to (``resolved``) is taken for it
    where everything else agrees."""
    if saved == search:
        return True
    legacy = {k: v for k, v in search.items() if k != "resolved"}
    return isinstance(saved, dict) and "resolved" not in saved and saved == legacy


def _json(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def add_trial(path: Path, search: dict[str, Any], trial_id: str, entry: dict[str, Any]) -> None:
    """Log one ended trial of ``search``. A log of another search at ``path`` is started over; a trial
    logged before under the same id (a search gone on with) is not logged twice."""
    trials = read_trials(path, search)
    if trial_id in trials:
        return
    head = json.dumps({"search": search}, sort_keys=True) + "\n"
    if not trials:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(head)
    elif path.read_text().split("\n", 1)[0] + "\n" != head:  # a log taken for this search from before it
        # named its resolved settings: it now names them, so a later preset change is another search
        rest = path.read_text().split("\n", 1)[1]
        write_atomic(path, lambda target: target.write_text(head + rest))
    with path.open("a") as file:
        file.write(json.dumps({"trial": trial_id, **entry}, sort_keys=True) + "\n")


def ended_entry(result: dict[str, Any], params: dict[str, Any]) -> dict[str, Any] | None:
    """What the log keeps of a trial whose run ended (None while it has no score: an interrupted trial)."""
    if "score" not in result:
        return None
    cost = {key: result[key] for key in ("env_steps", "steps_per_second") if result.get(key) is not None}
    return {
        "params": dict(params),
        "score": result["score"],
        "metric": result["metric"],
        "pruned": bool(result["pruned"]),
        "reports": [list(pair) for pair in result.get("reports", [])],
        **cost,
    }


class TrialLogCallback(tune.Callback):  # type: ignore[misc]
    """Ray Tune callback (in the driver) that logs each trial of the search as it ends. A log that cannot
    be written is said so and the search goes on (Ray Tune would fail the trial on an exception here)."""

    def __init__(self, path: Path, search: dict[str, Any]):
        self.path, self.search = Path(path).resolve(), search

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        entry = ended_entry(trial.last_result or {}, trial.config or {})
        if entry is not None:
            self._add(trial.trial_id, entry)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = trial.get_pickled_error() or trial.get_error()
        message = first_line(error) if error is not None else "failed"
        self._add(trial.trial_id, {"params": dict(trial.config or {}), "error": message})

    def _add(self, trial_id: str, entry: dict[str, Any]) -> None:
        try:
            add_trial(self.path, self.search, trial_id, entry)
        except (OSError, TypeError, ValueError) as error:
            print(f"trial log {self.path}: trial {trial_id} not logged ({first_line(error)})")
