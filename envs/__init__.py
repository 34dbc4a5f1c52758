"""The rlattn task suite: memory environments, registered under the ``rlattn/`` namespace.

Importing this package registers every id, so ``gym.make("envs:rlattn/TMaze-v0")`` works anywhere.
"""

from __future__ import annotations

import gymnasium as gym

from envs.tmaze import TMazeActiveEnv, TMazeEnv, TMazeOracle

NAMESPACE = "rlattn"

# (name, entry point, kwargs): one table, one register loop.
_SPECS: tuple[tuple[str, str, dict], ...] = (
    ("TMaze-v0", "envs.tmaze:TMazeEnv", {}),
    *((f"TMaze-L{n}-v0", "envs.tmaze:TMazeEnv", {"corridor_length": n}) for n in (30, 100, 300, 1000)),
    ("TMazeActive-v0", "envs.tmaze:TMazeActiveEnv", {}),
    *((f"TMazeActive-L{n}-v0", "envs.tmaze:TMazeActiveEnv", {"corridor_length": n}) for n in (30, 100)),
)

ENV_IDS: tuple[str, ...] = tuple(f"{NAMESPACE}/{name}" for name, _, _ in _SPECS)

for _name, _entry, _kwargs in _SPECS:
    if f"{NAMESPACE}/{_name}" not in gym.registry:
        gym.register(id=f"{NAMESPACE}/{_name}", entry_point=_entry, kwargs=_kwargs)

ORACLES: dict[type, type[TMazeOracle]] = {TMazeEnv: TMazeOracle, TMazeActiveEnv: TMazeOracle}


def oracle_for(env: gym.Env) -> TMazeOracle:
    """The optimal observation-only policy for one of this package's envs."""
    return ORACLES[type(env.unwrapped)](env)


__all__ = ["ENV_IDS", "NAMESPACE", "TMazeActiveEnv", "TMazeEnv", "TMazeOracle", "oracle_for"]
