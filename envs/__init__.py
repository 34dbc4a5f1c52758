"""The rlattn task suite: memory and visual-search environments, registered under ``rlattn/``.

Importing this package registers every id, so ``gym.make("envs:rlattn/TMaze-v0")`` works anywhere.
"""

from __future__ import annotations

from typing import Protocol

import gymnasium as gym
import numpy as np

from envs.glimpse import GlimpseSearchEnv, GlimpseSearchOracle
from envs.tmaze import TMazeActiveEnv, TMazeEnv, TMazeOracle
from envs.visual_search import CuedVisualSearchEnv, CuedVisualSearchOracle, VisualSearchEnv, VisualSearchOracle

NAMESPACE = "rlattn"

# (name, entry point, kwargs): one table, one register loop.
_SPECS: tuple[tuple[str, str, dict], ...] = (
    ("TMaze-v0", "envs.tmaze:TMazeEnv", {}),
    *((f"TMaze-L{n}-v0", "envs.tmaze:TMazeEnv", {"corridor_length": n}) for n in (30, 100, 300, 1000)),
    ("TMazeActive-v0", "envs.tmaze:TMazeActiveEnv", {}),
    *((f"TMazeActive-L{n}-v0", "envs.tmaze:TMazeActiveEnv", {"corridor_length": n}) for n in (30, 100)),
    ("VisualSearch-v0", "envs.visual_search:VisualSearchEnv", {}),
    ("VisualSearchConjunction-v0", "envs.visual_search:VisualSearchEnv", {"search": "conjunction"}),
    ("CuedVisualSearch-v0", "envs.visual_search:CuedVisualSearchEnv", {}),
    ("GlimpseSearch-v0", "envs.glimpse:GlimpseSearchEnv", {}),
)

ENV_IDS: tuple[str, ...] = tuple(f"{NAMESPACE}/{name}" for name, _, _ in _SPECS)

for _name, _entry, _kwargs in _SPECS:
    if f"{NAMESPACE}/{_name}" not in gym.registry:
        gym.register(id=f"{NAMESPACE}/{_name}", entry_point=_entry, kwargs=_kwargs)


class Oracle(Protocol):
    """An optimal policy acting from observations alone; ``reset()`` before each episode."""

    def reset(self) -> None: ...

    def act(self, obs: np.ndarray) -> int: ...


ORACLES: dict[type, type[Oracle]] = {
    TMazeEnv: TMazeOracle,
    TMazeActiveEnv: TMazeOracle,
    VisualSearchEnv: VisualSearchOracle,
    CuedVisualSearchEnv: CuedVisualSearchOracle,
    GlimpseSearchEnv: GlimpseSearchOracle,
}


def oracle_for(env: gym.Env) -> Oracle:
    """The optimal observation-only policy for one of this package's envs."""
    return ORACLES[type(env.unwrapped)](env)  # type: ignore[call-arg]


__all__ = [
    "ENV_IDS",
    "NAMESPACE",
    "ORACLES",
    "CuedVisualSearchEnv",
    "CuedVisualSearchOracle",
    "GlimpseSearchEnv",
    "GlimpseSearchOracle",
    "Oracle",
    "TMazeActiveEnv",
    "TMazeEnv",
    "TMazeOracle",
    "VisualSearchEnv",
    "VisualSearchOracle",
    "oracle_for",
]
