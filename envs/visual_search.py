"""Visual search on pixels: find a target among distractors, in feature or conjunction search
(Treisman & Gelade 1980, https://doi.org/10.1016/0010-0285(80)90005-5), and a cued variant where the
target's identity must be remembered."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.validation import check_choice, check_int

PALETTE = np.array([(220, 30, 30), (30, 200, 30), (40, 80, 230), (225, 210, 30)], np.uint8)
COLOUR_NAMES = ("red", "green", "blue", "yellow")
SHAPE_NAMES = ("square", "plus", "frame", "cross")
N_COLOURS, N_SHAPES = len(COLOUR_NAMES), len(SHAPE_NAMES)
TARGET = (0, 0)
"""the (colour, shape) of the target in VisualSearch and GlimpseSearch: a red square"""
SEARCHES = ("feature", "conjunction")
MIN_CELL = 4


def shape_masks(cell: int) -> np.ndarray:
    """(N_SHAPES, cell, cell) bool: each shape in an odd-sized square with >= 1 px of margin below and right."""
    size = cell - 1 if cell % 2 == 0 else cell - 2
    i, j = np.indices((size, size))
    mid, last, half = size // 2, size - 1, size // 8  # strokes are 2 * half + 1 pixels wide
    shapes = (
        np.ones((size, size), bool),
        (abs(i - mid) <= half) | (abs(j - mid) <= half),
        (np.minimum(i, j) <= half) | (np.maximum(i, j) >= last - half),
        (abs(i - j) <= half) | (abs(i + j - last) <= half),
    )
    masks = np.zeros((N_SHAPES, cell, cell), bool)
    start = (cell - size) // 2
    masks[:, start : start + size, start : start + size] = shapes
    return masks


class SearchDisplay:
    """A ``grid x grid`` array of cells of ``image_size // grid`` pixels, centred in a square image.
    ``sprites[colour, shape]`` is the (3, cell, cell) uint8 picture of one item (read-only)."""

    def __init__(self, image_size: int, grid: int):
        self.image_size, self.grid = image_size, grid
        self.cell = image_size // grid
        self.offset = (image_size - grid * self.cell) // 2
        masks = shape_masks(self.cell)
        sprites = masks[None, :, None] * PALETTE[:, None, :, None, None]  # (colour, shape, 3, c, c)
        self.sprites = sprites.astype(np.uint8)
        self.sprites.flags.writeable = False
        self._templates = np.concatenate(  # every sprite, then the empty cell
            [self.sprites.reshape(N_COLOURS * N_SHAPES, -1), np.zeros((1, self.sprites[0, 0].size), np.uint8)]
        ).astype(np.float32)

    def blocks(self, image: np.ndarray) -> np.ndarray:
        """A (3, grid, cell, grid, cell) view of the grid's pixels in a (3, S, S) image."""
        lo, hi = self.offset, self.offset + self.grid * self.cell
        return image[:, lo:hi, lo:hi].reshape(3, self.grid, self.cell, self.grid, self.cell)

    def pixel_span(self, first: int, last: int) -> slice:
        """The pixel rows (or columns) covered by cells ``first .. last`` along one axis."""
        return slice(self.offset + first * self.cell, self.offset + (last + 1) * self.cell)

    def cell_box(self, cell: int) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` pixels of a flat cell index, end exclusive."""
        rows, cols = self.pixel_span(*2 * (cell // self.grid,)), self.pixel_span(*2 * (cell % self.grid,))
        return rows.start, cols.start, rows.stop, cols.stop

    def draw(self, out: np.ndarray, cells: np.ndarray, colours: np.ndarray, shapes: np.ndarray) -> None:
        """Clear ``out`` and draw one item per flat cell index, by one slice assignment."""
        out.fill(0)
        rows, cols = np.divmod(cells, self.grid)
        self.blocks(out)[:, rows, :, cols, :] = self.sprites[colours, shapes]

    def target_likeness(self, image: np.ndarray, identity: tuple[int, int], noise: int) -> np.ndarray:
        """(grid * grid,) how much nearer each cell is to ``identity``'s sprite than to any other template
        (other sprites, empty), after removing the noise mean: positive where the nearest is the target."""
        cells = self.blocks(image).transpose(1, 3, 0, 2, 4).reshape(self.grid**2, -1).astype(np.float32)
        cells -= noise / 2
        distance = (self._templates**2).sum(1) - 2 * cells @ self._templates.T  # + |cell|^2, equal per row
        target = identity[0] * N_SHAPES + identity[1]
        own = distance[:, target].copy()
        distance[:, target] = np.inf
        return distance.min(1) - own


class PixelSearchEnv(gym.Env):
    """Shared keywords, display, items, noise and rendering of the visual-search envs."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    PARAMETERS: dict[str, tuple[int, int]] = {
        "image_size": (16, 256),
        "grid": (2, 32),
        "set_size": (1, 32 * 32),
        "noise": (0, 128),
    }
    """each integer keyword's allowed range, inclusive (the fuzz tests draw from these)"""

    def _setup(self, image_size: int, grid: int, set_size: int, noise: int, render_mode: str | None) -> None:
        self.image_size = check_int("image_size", image_size, *self.PARAMETERS["image_size"])
        grid = check_int("grid", grid, self.PARAMETERS["grid"][0])
        if self.image_size // grid < MIN_CELL:
            raise ValueError(
                f"grid={grid} does not fit image_size={self.image_size}: cells need >= {MIN_CELL} pixels, "
                f"so grid <= {self.image_size // MIN_CELL}"
            )
        self.grid = check_int("grid", grid, *self.PARAMETERS["grid"])
        self.set_size = check_int("set_size", set_size, *self.PARAMETERS["set_size"])
        if self.set_size > self.grid**2:
            raise ValueError(f"set_size={set_size} does not fit grid={grid}: at most grid * grid = {grid**2} items")
        self.noise = check_int("noise", noise, *self.PARAMETERS["noise"])
        self.render_mode = check_choice("render_mode", render_mode, (None, *self.metadata["render_modes"]))
        self.display = SearchDisplay(self.image_size, self.grid)
        shape = (3, self.image_size, self.image_size)
        self.observation_space = spaces.Box(0, 255, shape, np.uint8)
        self._scene = np.zeros(shape, np.uint8)  # the display without noise
        self._frame = np.zeros(shape, np.uint8)  # the last observation
        self._cells = self._colours = self._shapes = np.zeros(0, np.int64)

    @property
    def items(self) -> tuple[tuple[int, int, int], ...]:
        """``(cell, colour, shape)`` of every item on the display, the target first (a copy)."""
        return tuple(zip(self._cells.tolist(), self._colours.tolist(), self._shapes.tolist(), strict=True))

    @property
    def target_cell(self) -> int:
        """Flat index ``row * grid + col`` of the target's cell."""
        return int(self._cells[0]) if self._cells.size else -1

    def _info(self) -> dict[str, Any]:
        return {"target_cell": self.target_cell, "target_box": self.display.cell_box(self.target_cell)}

    def _place(self, colours: np.ndarray, shapes: np.ndarray) -> None:
        """Put the items (target first) in distinct random cells and draw them on the scene."""
        self._cells = self.np_random.choice(self.grid**2, self.set_size, replace=False)
        self._colours, self._shapes = colours, shapes
        self.display.draw(self._scene, self._cells, colours, shapes)

    def _search_items(self, search: str) -> tuple[np.ndarray, np.ndarray]:
        """The target ``TARGET`` and distractors following the ``search`` rule."""
        n = self.set_size - 1
        other = 1 + self.np_random.integers(N_COLOURS - 1, size=n)  # any colour or shape but the target's (0)
        colours, shapes = other, np.zeros(n, np.int64)
        if search == "conjunction":  # each shares the colour or (else) the shape
            share_colour = self.np_random.integers(2, size=n).astype(bool)
            colours, shapes = np.where(share_colour, 0, other), np.where(share_colour, other, 0)
        return np.concatenate([[TARGET[0]], colours]), np.concatenate([[TARGET[1]], shapes])

    def _noisy(self, clean: np.ndarray) -> np.ndarray:
        """A fresh copy of ``clean`` plus uniform noise in [0, noise] per pixel, saturating at 255."""
        if self.noise == 0:
            return clean.copy()
        noisy = self.np_random.integers(0, self.noise + 1, size=clean.shape, dtype=np.uint16)  # faster than uint8
        noisy += clean
        return np.minimum(noisy, 255, out=noisy).astype(np.uint8)

    def _check_cell(self, action: Any) -> int:
        cell = int(action)
        if not 0 <= cell < self.grid**2:
            raise ValueError(f"action={cell} is invalid: allowed are 0..{self.grid**2 - 1}")
        return cell

    def _picture(self) -> np.ndarray:
        return self._frame

    def render(self) -> np.ndarray | None:
        """The last observation as HWC uint8, upscaled to about 256 pixels."""
        if self.render_mode != "rgb_array":
            return None
        scale = max(1, 256 // self.image_size)
        return np.repeat(np.repeat(self._picture().transpose(1, 2, 0), scale, axis=0), scale, axis=1)


class VisualSearchEnv(PixelSearchEnv):
    """Find the red square among ``set_size - 1`` distractors in one look.

    ## Description
    ``set_size`` items lie in distinct random cells of a ``grid x grid`` array. Items have one of four
    colours (``PALETTE``: red, green, blue, yellow) and one of four shapes (square, plus, frame, cross).
    The target is always ``TARGET``, colour 0 and shape 0 (a red square). In feature search every
    distractor is a square of another colour (the target pops out by colour); in conjunction search
    each distractor shares exactly one feature with the target (a red non-square or a non-red square,
    each with probability 1/2), so neither colour nor shape alone finds it.

    ## Observation Space
    ``Box(0, 255, (3, image_size, image_size), uint8)``: cells of ``image_size // grid`` pixels, the grid
    centred, background 0, and uniform noise in ``[0, noise]`` on every pixel, saturating at 255.

    ## Action Space
    ``Discrete(grid * grid)``: the flat index ``row * grid + col`` of the chosen cell.

    ## Rewards
    1 if the chosen cell holds the target, else 0.

    ## Episode End
    Terminated after the one step; ``info["is_success"]`` says whether the target was chosen. The
    observation after it is a copy of the display.

    ## Arguments
    ``image_size`` (int, 16 .. 256), ``grid`` (int, 2 .. 32, cells of >= 4 pixels), ``set_size`` (int,
    1 .. grid * grid), ``search`` (``"feature"`` or ``"conjunction"``), ``noise`` (int, 0 .. 128),
    ``render_mode`` (``None`` or ``"rgb_array"``: the observation, HWC, upscaled).

    Every ``info`` holds the ground truth for scoring attention: ``target_cell`` (flat index) and
    ``target_box`` (its pixels, ``(top, left, bottom, right)``, end exclusive). ``items`` lists
    ``(cell, colour, shape)`` of every item, the target first.

    ## Registered IDs
    ``rlattn/VisualSearch-v0`` (feature search) and ``rlattn/VisualSearchConjunction-v0``.
    """

    actions_are_patches = True
    """each action is a cell: where the patches are the cells, AttentionPPO's PatchPolicy points without a warning"""

    def __init__(
        self,
        image_size: int = 64,
        grid: int = 8,
        set_size: int = 16,
        search: str = "feature",
        noise: int = 0,
        render_mode: str | None = None,
    ):
        self._setup(image_size, grid, set_size, noise, render_mode)
        self.search = check_choice("search", search, SEARCHES)
        self.action_space = spaces.Discrete(self.grid**2)

    shortest_episode = 1

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._place(*self._search_items(self.search))
        self._frame = self._noisy(self._scene)
        return self._frame.copy(), self._info()

    def step(self, action):
        success = self._check_cell(action) == self.target_cell
        return self._frame.copy(), float(success), True, False, self._info() | {"is_success": success}


class CuedVisualSearchEnv(PixelSearchEnv):
    """See a cue, wait ``delay`` blank frames, then find the cued item on a display.

    ## Description
    Step 0 shows the cue: this episode's target identity (a random colour and shape), drawn twice as
    large at the image centre. Steps ``1 .. delay`` are blank. Step ``delay + 1`` shows the display:
    ``set_size`` items in distinct random cells, the target and distractors of uniformly random other
    identities. The display alone does not say which item is the target: the same display follows
    many cues, so a memoryless policy can only guess among its items.

    ## Observation Space, Action Space, Rewards
    As in ``VisualSearchEnv`` (noise on every frame); the actions before the display are ignored.

    ## Episode End
    Terminated after ``delay + 2`` steps, on the answer (``info["is_success"]``).

    ## Arguments
    ``image_size``, ``grid``, ``set_size``, ``noise`` and ``render_mode`` as in ``VisualSearchEnv``;
    ``delay`` (int, 0 .. 1000): blank frames between the cue and the display. ``info`` also holds
    ``cue_step`` (always 0) and ``target`` (``(colour, shape)``).

    ## Registered IDs
    ``rlattn/CuedVisualSearch-v0`` (set size 8, delay 4).
    """

    PARAMETERS = {**PixelSearchEnv.PARAMETERS, "delay": (0, 1000)}
    actions_are_patches = True
    """as in ``VisualSearchEnv``"""

    def __init__(
        self,
        image_size: int = 64,
        grid: int = 8,
        set_size: int = 8,
        delay: int = 4,
        noise: int = 0,
        render_mode: str | None = None,
    ):
        self._setup(image_size, grid, set_size, noise, render_mode)
        self.delay = check_int("delay", delay, *self.PARAMETERS["delay"])
        self.action_space = spaces.Discrete(self.grid**2)
        size = 2 * self.display.cell
        self.cue_box = (slice(None), *2 * (slice((self.image_size - size) // 2, (self.image_size + size) // 2),))
        """where the cue is drawn: the centre (3, 2 * cell, 2 * cell) of the image"""
        self.cue_sprites = self.display.sprites.repeat(2, axis=-1).repeat(2, axis=-2)
        self._cue, self._blank = np.zeros_like(self._scene), np.zeros_like(self._scene)
        self._target, self._t = TARGET, 0

    @property
    def shortest_episode(self) -> int:
        return self.delay + 2

    def _info(self) -> dict[str, Any]:
        return super()._info() | {"cue_step": 0, "target": self._target}

    def _observe(self) -> np.ndarray:
        self._frame = self._noisy(self._cue if self._t == 0 else self._blank if self._t <= self.delay else self._scene)
        return self._frame.copy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        n_identities = N_COLOURS * N_SHAPES
        target = int(self.np_random.integers(n_identities))
        others = (target + 1 + self.np_random.integers(n_identities - 1, size=self.set_size - 1)) % n_identities
        identities = np.concatenate([[target], others])
        self._place(identities // N_SHAPES, identities % N_SHAPES)
        self._target, self._t = divmod(target, N_SHAPES), 0
        self._cue[self.cue_box] = self.cue_sprites[self._target]
        return self._observe(), self._info()

    def step(self, action):
        cell = self._check_cell(action)
        self._t += 1
        if self._t <= self.delay + 1:
            return self._observe(), 0.0, False, False, self._info()
        success = cell == self.target_cell
        return self._observe(), float(success), True, False, self._info() | {"is_success": success}


class VisualSearchOracle:
    """Chooses the cell that looks most like the target, from the observation alone."""

    def __init__(self, env: gym.Env):
        search = env.unwrapped
        if not isinstance(search, VisualSearchEnv):
            raise ValueError(f"VisualSearchOracle needs a VisualSearch env, got {search}")
        self.display, self.noise = search.display, search.noise

    def reset(self) -> None:
        """Nothing to forget: every episode is one look."""

    def act(self, obs: np.ndarray) -> int:
        return int(np.argmax(self.display.target_likeness(obs, TARGET, self.noise)))


class CuedVisualSearchOracle:
    """Recognises the cue on step 0, remembers it, waits, then chooses the matching cell."""

    def __init__(self, env: gym.Env):
        cued = env.unwrapped
        if not isinstance(cued, CuedVisualSearchEnv):
            raise ValueError(f"CuedVisualSearchOracle needs a CuedVisualSearch env, got {cued}")
        self.display, self.noise, self.delay, self.cue_box = cued.display, cued.noise, cued.delay, cued.cue_box
        self.cues = cued.cue_sprites.reshape(N_COLOURS * N_SHAPES, -1).astype(np.float32)
        self.reset()

    def reset(self) -> None:
        self.t, self.target = 0, TARGET

    def act(self, obs: np.ndarray) -> int:
        self.t += 1
        if self.t == 1:
            seen = obs[self.cue_box].reshape(1, -1).astype(np.float32) - self.noise / 2
            self.target = divmod(int(np.argmin(((self.cues - seen) ** 2).sum(1))), N_SHAPES)
        if self.t <= self.delay + 1:
            return 0
        return int(np.argmax(self.display.target_likeness(obs, self.target, self.noise)))
