"""Where many runs go (sweeps, seeds, tuning): a local Ray by default, or an existing Ray cluster by address.

Every trial takes one CPU and trains with one torch thread, so ``N`` trials at once keep ``N`` cores busy.
A cluster's nodes need this repository at the same path and the same Python environment.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agents.config import ConfigError

ADDRESS_HELP = (
    "HOST:PORT of a running Ray head (what `ray start --head` prints), ray://HOST:PORT (Ray Client) or auto; "
    "without --address a local Ray starts"
)


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_address(address: str) -> None:
    """A one-line ConfigError unless ``address`` is ``auto`` or a host and port that accept a connection.

    Checked before ``ray.init``, which would retry an unreachable address for minutes.
    """
    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--address {address!r} is invalid: expected {ADDRESS_HELP}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(f"--address {address!r} is unreachable ({reason}): expected {ADDRESS_HELP}") from None


def worker_env(paths: Sequence[Path]) -> dict[str, str]:
    """Environment of every Ray worker: one torch thread, and ``paths`` importable (e.g. benchmarks/)."""
    python_path = [str(p) for p in paths] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if python_path:
        env["PYTHONPATH"] = os.pathsep.join(python_path)
    return env


def start_ray(address: str | None = None, cpus: int | None = None, paths: Sequence[Path] = ()) -> None:
    """Join the Ray cluster at ``address``, or start a local Ray with ``cpus`` CPUs (default: the cores).

    Does nothing when this process already has a Ray session (a test's shared one, an earlier call).
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's older reporter is silent at verbose=0; the new one is not
    options: dict[str, Any] = {
        "runtime_env": {"env_vars": worker_env(paths)},
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    if address is None:
        ray.init(num_cpus=cpus or cores(), **options)
        return
    check_address(address)
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"--address {address!r} cannot be joined ({first}): expected {ADDRESS_HELP}") from None
