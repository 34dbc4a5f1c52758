"""Visual search through a moving glimpse: the agent sees a few cells around a cursor at a time."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.validation import check_choice, check_fraction, check_int
from envs.visual_search import SEARCHES, TARGET, PixelSearchEnv

UP, DOWN, LEFT, RIGHT, DECLARE = range(5)
ACTION_NAMES = ("up", "down", "left", "right", "declare")
MOVES = {UP: (-1, 0), DOWN: (1, 0), LEFT: (0, -1), RIGHT: (0, 1)}
UNSEEN = 48
"""the grey of every pixel outside the glimpse, in all three channels"""


class GlimpseSearchEnv(PixelSearchEnv):
    """Move a glimpse over a visual-search display, then declare the target's cell.

    ## Description
    The scene of ``VisualSearchEnv`` (target ``TARGET``, a red square; ``search`` picks the
    distractors), but only a window of ``glimpse x glimpse`` cells centred on a cursor cell is visible,
    clipped at the grid's edges. The cursor starts in a random cell. The agent must look around,
    remember where it has looked, and move onto the target.

    ## Observation Space
    ``Box(0, 255, (3, image_size, image_size), uint8)``: the window's pixels as in ``VisualSearchEnv``
    (with fresh noise each step); every other pixel is exactly ``UNSEEN`` grey (48, 48, 48), no noise.

    ## Action Space
    ``Discrete(5)``: 0 up, 1 down, 2 left, 3 right (a move off the grid stays put), 4 declare.

    ## Rewards
    1 for declaring while the cursor is on the target's cell, else 0.

    ## Episode End
    Terminated on declare (``info["is_success"]`` says whether the cursor was on the target), or
    after ``max_steps`` steps without one (success False). Running out of time is part of the task,
    not a truncation: SB3 bootstraps a value after a truncation, which here would make never declaring
    look as good as finding the target. The default of 64 covers the oracle's worst case at grid 8,
    glimpse 3 (``worst_case_steps(8, 3)`` = 35 steps).

    ## Arguments
    ``image_size``, ``grid``, ``set_size``, ``search``, ``noise`` and ``render_mode`` as in
    ``VisualSearchEnv`` (``rgb_array`` shows the whole scene dimmed, the window bright);
    ``glimpse`` (odd int, 1 .. 31, < grid, so the window never spans a whole row and the cursor can be
    told from it); ``max_steps`` (int, 1 .. 100000); ``near_start`` (float, 0 .. 1, for training): the
    share of episodes, drawn per episode, whose cursor starts ``d`` moves from the target (``d`` drawn
    uniformly from 0 .. ``glimpse``), so that declaring on the target and walking onto it are met
    early, as a start-state curriculum; the others start anywhere, as evaluation does.

    ``info`` holds ``target_cell`` and ``cursor`` (flat cell indices, ``row * grid + col``).

    ## Registered IDs
    ``rlattn/GlimpseSearch-v0`` (set size 8, feature search, glimpse 3, 64 steps).
    """

    PARAMETERS = {**PixelSearchEnv.PARAMETERS, "glimpse": (1, 31), "max_steps": (1, 100_000), "near_start": (0, 1)}

    def __init__(
        self,
        image_size: int = 64,
        grid: int = 8,
        set_size: int = 8,
        search: str = "feature",
        noise: int = 0,
        glimpse: int = 3,
        max_steps: int = 64,
        near_start: float = 0.0,
        render_mode: str | None = None,
    ):
        self._setup(image_size, grid, set_size, noise, render_mode)
        self.search = check_choice("search", search, SEARCHES)
        self.glimpse = check_int("glimpse", glimpse, *self.PARAMETERS["glimpse"])
        if self.glimpse % 2 == 0:
            raise ValueError(f"glimpse={glimpse} is invalid: must be odd, so the window is centred on the cursor")
        if self.glimpse >= self.grid:
            raise ValueError(f"glimpse={glimpse} does not fit grid={self.grid}: must be smaller than grid")
        self.max_steps = check_int("max_steps", max_steps, *self.PARAMETERS["max_steps"])
        self.near_start = check_fraction("near_start", near_start, *self.PARAMETERS["near_start"])
        self.action_space = spaces.Discrete(len(ACTION_NAMES))
        self._cursor, self._t = 0, 0
        self._window: tuple[slice, slice, slice] = (slice(None), slice(0, 0), slice(0, 0))

    @property
    def cursor(self) -> int:
        """Flat index of the cursor's cell."""
        return self._cursor

    def _info(self) -> dict[str, Any]:
        return super()._info() | {"cursor": self._cursor}

    def _observe(self) -> np.ndarray:
        radius, last = self.glimpse // 2, self.grid - 1
        y, x = divmod(self._cursor, self.grid)
        span = self.display.pixel_span
        rows, cols = span(max(0, y - radius), min(last, y + radius)), span(max(0, x - radius), min(last, x + radius))
        self._window = (slice(None), rows, cols)
        self._frame = np.full(self._scene.shape, UNSEEN, np.uint8)
        self._frame[self._window] = self._noisy(self._scene[self._window])
        return self._frame.copy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._place(*self._search_items(self.search))
        self._cursor, self._t = int(self.np_random.integers(self.grid**2)), 0
        # no draw without near_start, so seeded episodes stay as they were
        if self.near_start > 0 and self.np_random.uniform() < self.near_start:
            self._cursor = self._near_target(int(self.np_random.integers(self.glimpse + 1)))
        return self._observe(), self._info()

    def _near_target(self, distance: int) -> int:
        """A random cell ``distance`` moves from the target (Manhattan), or the farthest in reach if none is."""
        ty, tx = divmod(self.target_cell, self.grid)
        rows, cols = np.divmod(np.arange(self.grid**2), self.grid)
        away = np.abs(rows - ty) + np.abs(cols - tx)
        cells = np.flatnonzero(away == min(distance, int(away.max())))
        return int(self.np_random.choice(cells))

    def step(self, action):
        action = int(action)
        if not 0 <= action < len(ACTION_NAMES):
            raise ValueError(f"action={action} is invalid: allowed are 0..{len(ACTION_NAMES) - 1}")
        self._t += 1
        if action == DECLARE:
            success = self._cursor == self.target_cell
            return self._observe(), float(success), True, False, self._info() | {"is_success": success}
        (dy, dx), last = MOVES[action], self.grid - 1
        y, x = divmod(self._cursor, self.grid)
        self._cursor = min(max(y + dy, 0), last) * self.grid + min(max(x + dx, 0), last)
        obs, info = self._observe(), self._info()
        out_of_time = self._t >= self.max_steps
        if out_of_time:
            info["is_success"] = False
        return obs, 0.0, out_of_time, False, info

    def _picture(self) -> np.ndarray:
        picture = self._scene // 3
        picture[self._window] = self._frame[self._window]
        return picture


def sweep_waypoints(grid: int, glimpse: int) -> list[tuple[int, int]]:
    """Cursor cells, in boustrophedon order, whose windows together cover the grid."""
    radius = glimpse // 2
    centres = sorted({min(radius + k * glimpse, grid - 1 - radius) for k in range(-(-grid // glimpse))})
    return [(y, x) for i, y in enumerate(centres) for x in (centres if i % 2 == 0 else centres[::-1])]


def worst_case_steps(grid: int, glimpse: int) -> int:
    """An upper bound on the oracle's episode length: the walk from the farthest start to the first
    waypoint, the sweep, the walk to a target seen in the window, and the declare."""
    path, radius = sweep_waypoints(grid, glimpse), glimpse // 2
    sweep = sum(abs(a - c) + abs(b - d) for (a, b), (c, d) in zip(path, path[1:], strict=False))
    return 2 * (grid - 1 - radius) + sweep + 2 * radius + 1


class GlimpseSearchOracle:
    """Tells the cursor from the window, sweeps the grid until the target is in view, walks onto it
    and declares. Remembers which cells it has seen."""

    def __init__(self, env: gym.Env):
        search = env.unwrapped
        if not isinstance(search, GlimpseSearchEnv):
            raise ValueError(f"GlimpseSearchOracle needs a GlimpseSearch env, got {search}")
        self.display, self.noise, self.grid = search.display, search.noise, search.grid
        self.radius = search.glimpse // 2
        self.waypoints = sweep_waypoints(search.grid, search.glimpse)
        windows = np.zeros((len(self.waypoints), self.grid, self.grid), bool)
        for k, (y, x) in enumerate(self.waypoints):
            windows[k, y - self.radius : y + self.radius + 1, x - self.radius : x + self.radius + 1] = True
        self.windows = windows.reshape(len(self.waypoints), -1)
        self.reset()

    def reset(self) -> None:
        self.seen = np.zeros(self.grid**2, bool)

    def _cursor(self, visible: np.ndarray) -> tuple[int, int]:
        """The window is never clipped on both sides (glimpse < grid), so one unclipped edge gives it."""
        rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
        y = rows[0] + self.radius if rows[0] > 0 else rows[-1] - self.radius
        x = cols[0] + self.radius if cols[0] > 0 else cols[-1] - self.radius
        return int(y), int(x)

    def act(self, obs: np.ndarray) -> int:
        visible = (self.display.blocks(obs) != UNSEEN).any(axis=(0, 2, 4))  # (grid, grid)
        y, x = self._cursor(visible)
        self.seen |= visible.ravel()
        likeness = np.where(visible.ravel(), self.display.target_likeness(obs, TARGET, self.noise), -np.inf)
        best = int(np.argmax(likeness))
        if likeness[best] > 0:
            goal = divmod(best, self.grid)
        else:
            todo = np.flatnonzero((self.windows & ~self.seen).any(1))
            if todo.size == 0:
                return DECLARE
            goal = self.waypoints[todo[0]]
        if goal == (y, x):
            return DECLARE
        return UP if goal[0] < y else DOWN if goal[0] > y else LEFT if goal[1] < x else RIGHT
