"""Checks of command-line values that fail with one line (ConfigError) naming the value and what is allowed."""

from __future__ import annotations

import difflib
import importlib
import inspect
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.config import ConfigError
from rlattn.validation import check_int


def check_env_id(env_id: str) -> str:
    """The registered id without any ``module:`` prefix (the module is imported first)."""
    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name is not None and (module == error.name or module.startswith(f"{error.name}.")):
                raise ConfigError(f"--env {env_id!r}: cannot import module {module!r}: no such module") from None
            missing = repr(error.name) if error.name else f"a module ({first_line(error)})"
            raise ConfigError(
                f"--env {env_id!r}: importing module {module!r} failed: it imports {missing}, which is not installed"
            ) from None
        except Exception as error:  # the user's module raised while importing: its own error, in one line
            raise ConfigError(
                f"--env {env_id!r}: importing module {module!r} failed: {type(error).__name__}: {first_line(error)}"
            ) from None
    if name in gym.registry:
        return name
    close = difflib.get_close_matches(name, list(gym.registry), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see --list-envs"
    raise ConfigError(f"unknown env {env_id!r}: {hint}")


def check_device(device: str) -> None:
    try:
        parsed = torch.device("cpu" if device == "auto" else device)
    except (RuntimeError, ValueError):
        parsed = None
    known = ("cpu", "cuda", "mps")
    if parsed is None or parsed.type not in known or (parsed.type == "cpu" and parsed.index not in (None, 0)):
        raise ConfigError(f"--device {device!r} is invalid: allowed are cpu, cuda, cuda:N, mps, auto") from None
    kind = parsed.type
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device!r} is not available here (no MPS device): use cpu or auto")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device!r} is not available here (no CUDA device): use cpu or auto")


def check_int_flag(flag: str, value: Any, low: int = 1, high: int | None = None, disabled: int | None = None) -> None:
    """``check_int`` for a command-line flag: its ValueError becomes a ConfigError."""
    try:
        check_int(flag, value, low, high, disabled)
    except ValueError as error:
        raise ConfigError(str(error)) from None


# Numeric algorithm keywords: (type, low, high, low allowed, None allowed). Anything the table does not
# name is checked against the type of its default in the algorithm's signature.
_NUMBERS: dict[str, tuple[type, float, float | None, bool, bool]] = {
    "learning_rate": (float, 0, None, False, False),
    "n_steps": (int, 1, None, True, False),
    "batch_size": (int, 1, None, True, False),
    "n_epochs": (int, 1, None, True, False),
    "gamma": (float, 0, 1, True, False),
    "gae_lambda": (float, 0, 1, True, False),
    "clip_range": (float, 0, None, False, False),
    "clip_range_vf": (float, 0, None, False, True),
    "ent_coef": (float, 0, None, True, False),
    "vf_coef": (float, 0, None, True, False),
    "max_grad_norm": (float, 0, None, False, False),
    "target_kl": (float, 0, None, False, True),
    "buffer_size": (int, 1, None, True, False),
    "learning_starts": (int, 0, None, True, False),
    "tau": (float, 0, 1, False, False),
    "train_freq": (int, 1, None, True, False),
    "gradient_steps": (int, -1, None, True, False),
    "target_update_interval": (int, 1, None, True, False),
    "exploration_fraction": (float, 0, 1, True, False),
    "exploration_initial_eps": (float, 0, 1, True, False),
    "exploration_final_eps": (float, 0, 1, True, False),
    "rms_prop_eps": (float, 0, None, False, False),
    "stats_window_size": (int, 1, None, True, False),
    "sde_sample_freq": (int, -1, None, True, False),
}


def integral(key: str, value: Any) -> Any:
    """An integer keyword's whole-number float (``n_steps:128.0``, a float search space's draw) as an int:
    SB3 would fail on it at the first rollout (``deque(maxlen=100.0)``, array shapes); a ``train_freq`` list
    as the tuple SB3 takes; anything else as given."""
    if key in _NUMBERS and _NUMBERS[key][0] is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if key == "train_freq" and isinstance(value, list):  # SB3 takes (n, unit) as a tuple only
        return tuple(value)
    return value


def check_algo_values(algo: type, values: dict[str, Any]) -> None:
    """Types and ranges of algorithm keywords, so that a typo fails now and not at the first update."""
    defaults = {name: p.default for name, p in inspect.signature(algo).parameters.items()}
    for key, value in values.items():
        if key == "train_freq" and isinstance(value, (tuple, list)):
            _check_train_freq(value)
        elif key in _NUMBERS:
            kind, low, high, low_ok, none_ok = _NUMBERS[key]
            if value is None and none_ok:
                continue
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
            if kind is int:
                number = number and float(value).is_integer()
            in_range = number and (value > low or (low_ok and value == low)) and (high is None or value <= high)
            if not in_range:
                what = "an integer" if kind is int else "a number"
                lower = f">= {low}" if low_ok else f"> {low}"
                bounds = lower + (f" and <= {high}" if high is not None else "") + (", or None" if none_ok else "")
                raise ConfigError(f"-params {key}={value!r} is invalid: must be {what} {bounds}")
        elif isinstance(defaults.get(key), bool) and not isinstance(value, bool):
            raise ConfigError(f"-params {key}={value!r} is invalid: must be True or False")
        elif type(defaults.get(key)) is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"-params {key}={value!r} is invalid: must be an integer")


def _check_train_freq(value: tuple | list) -> None:
    """SB3's ``(n, "step")`` or ``(n, "episode")`` form of ``train_freq``."""
    ok = len(value) == 2 and isinstance(value[0], int) and not isinstance(value[0], bool) and value[0] >= 1
    if not (ok and value[1] in ("step", "episode")):
        raise ConfigError(
            f"-params train_freq={value!r} is invalid: must be an integer >= 1, or (n, 'step') or (n, 'episode') with n >= 1"
        )


def check_writable(folder: str, flag: str) -> None:
    """The folder exists or can be made, and files can be written in it."""
    path = Path(folder)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise ConfigError(f"{flag} {folder!r} is invalid: {existing} is a file, not a folder")
    try:  # try it: permissions alone do not tell (root, read-only mounts, /proc)
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ConfigError(f"{flag} {folder!r} is invalid: cannot write in {existing} ({error.strerror})") from None


def check_model_file(path: str, flag: str = "-i") -> Path:
    """A readable SB3 model zip (these hold pickled objects: load only files you trust)."""
    file = Path(path)
    expected = "an SB3 model .zip written by train.py"
    if not file.is_file():
        raise ConfigError(f"{flag} {path!r} is invalid: no such file; expected {expected}")
    if file.suffix != ".zip":
        raise ConfigError(f"{flag} {path!r} is invalid: not a .zip file; expected {expected}")
    try:
        with zipfile.ZipFile(file) as archive:
            names = set(archive.namelist())
            broken = archive.testzip()
    except (OSError, zipfile.BadZipFile) as error:
        raise ConfigError(
            f"{flag} {path!r} is invalid: cannot read it as a zip ({error}); expected {expected}"
        ) from None
    if broken is not None or not {"data", "policy.pth"} <= names:
        raise ConfigError(f"{flag} {path!r} is invalid: a zip but not a complete SB3 model; expected {expected}")
    return file


def check_optimize_flags(optimize: bool, given: dict[str, Any], n_trials: int) -> None:
    """``--n-trials`` >= 1; the search's own flags (``given``: flag -> whether set) only with ``--optimize``."""
    check_int_flag("--n-trials", n_trials)
    for flag, is_set in given.items():
        if is_set and not optimize:
            raise ConfigError(f"{flag} is only for --optimize: add --optimize, or leave {flag} out")


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
