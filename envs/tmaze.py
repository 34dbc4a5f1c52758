"""T-Maze memory tasks (Ni et al. 2023, https://arxiv.org/abs/2307.03864, section 5.1)."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.validation import check_fraction, check_int

MAX_CORRIDOR_LENGTH = 100_000
BELOW_CUE = np.nextafter(np.float32(1.0), np.float32(0.0))
"""the largest float32 below the cue's 1.0: distractor values never reach it"""

RIGHT, LEFT, UP, DOWN = 0, 1, 2, 3
ACTION_NAMES = ("right", "left", "up", "down")


def penalty_for(steps: int) -> float:
    """The largest power of two <= 1 / steps: exact in floating point, so ``steps`` penalties sum to >= -1."""
    return 2.0 ** -math.ceil(math.log2(steps))


class TMazeEnv(gym.Env):
    """Passive T-Maze: remember a cue seen once, act on it ``corridor_length`` steps later.

    ## Description
    A corridor of cells ``0 .. corridor_length`` ends in a junction with an upper and a lower arm. The
    first observation shows the cue (which arm is right); every later one hides it. The agent walks
    right to the junction and turns into an arm. Memory length equals ``corridor_length``.

    ## Observation Space
    ``Box(0, 1, (3,), float32)``: ``[cue is up, cue is down, at the junction]``. With ``noise > 0``
    the first two entries of every step that does not show the cue are distractors: each drawn
    uniformly from ``[0, noise)`` (below the cue's 1), independently of the goal and of each other,
    so the cue stays the only step that says which arm is right.

    ## Action Space
    ``Discrete(4)``: 0 right, 1 left, 2 up, 3 down. Up or down ends the episode at the junction and
    bumps into a wall elsewhere.

    ## Rewards
    1 for turning into the cued arm, 0 for the other. Each step that does not bring the agent closer
    to the end of a shortest episode costs ``step_penalty``, the largest power of two not above
    ``1 / max_steps`` (exact in floating point), so penalties add up to no less than -1 and the best
    episode returns exactly 1.0.

    ## Episode End
    Terminated when the agent turns at the junction (``info["is_success"]`` says whether it chose the
    cued arm), or after ``max_steps = corridor_length + 1 + slack`` steps (success False). Running out
    of time is part of the task, not a truncation: SB3 bootstraps a value after a truncation, which
    here would reward dawdling at the junction.

    ## Arguments
    - ``corridor_length`` (int, 1 .. 100000): steps from the start to the junction.
    - ``slack`` (int, >= 0): extra steps allowed beyond a shortest episode.
    - ``noise`` (float, 0 .. 1): amplitude of the distractor values on the cue entries of the steps
      without the cue (0: none, the plain maze; 1: as large as just below the cue itself).
    - ``min_corridor_length`` (int, 1 .. ``corridor_length``, or None): if given, every episode draws
      its corridor length log-uniformly from ``min_corridor_length .. corridor_length`` (training on
      a mix of lengths; evaluate with it None). Spaces, ``max_steps`` and ``step_penalty`` are those
      of the longest corridor, so a history wrapper sized for it fits every episode.
    - ``length_exponent`` (float, 0 .. 3): with ``min_corridor_length``, corridor lengths are drawn
      with density proportional to ``length ** -length_exponent``: 1 (the default) is log-uniform, 0
      uniform, above 1 more short episodes. Log-uniform spends equal env steps on every length; at
      1.5 the env steps spent on a length fall as its square root (corridors 2..10000: mean episode
      about 140 steps instead of 1,170, three quarters of episodes at most 31 steps long).
    - ``tight_fraction`` (float, 0 .. 1): the share of episodes, drawn per episode, that get no slack
      (time for a shortest episode only, as in evaluation); the others get ``slack``. For training:
      with slack, a step wasted at the start or at the junction costs only its penalty, so nothing
      teaches the policy that the plain maze does not allow it.
    - ``junction_wait`` (int >= 0, or None): the most steps the agent may spend at the junction without
      turning; one more ends the episode, a failure. None: as long as the time allows. For training
      with slack: ``0`` makes hesitating at the junction as fatal as on the plain maze, while the
      corridor keeps its slack.
    - ``episode_penalty`` (bool): each episode's step penalty from its own time limit (the largest
      power of two not above ``1 / limit``) instead of the longest corridor's; the same on the plain
      maze. For training on mixed lengths: a wasted step in a 5-step episode then costs 1/8, not
      1/2048 as at L = 1000, so short episodes teach what a step is worth (on the Active T-Maze:
      step back to the cue first).
    - ``render_mode``: ``None``, ``"ansi"`` (text) or ``"rgb_array"`` (3 x cells grid, HWC uint8).

    ``info`` holds ``cue_step`` (the episode step at which the cue was last observed, -1 before it
    has been seen), ``goal`` (0 up, 1 down) and ``position``: ground truth for scoring attention.

    ## Registered IDs
    ``rlattn/TMaze-v0`` (corridor 10) and ``rlattn/TMaze-L{30,100,300,1000}-v0``.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}
    active = False
    PARAMETERS: dict[str, tuple[int, int]] = {
        "corridor_length": (1, MAX_CORRIDOR_LENGTH),
        "slack": (0, MAX_CORRIDOR_LENGTH),
        "noise": (0, 1),
        "tight_fraction": (0, 1),
        "length_exponent": (0, 3),
    }
    """each numeric keyword's allowed range, inclusive (the fuzz tests draw integers from these;
    ``noise`` also takes any float in its range)"""

    def __init__(
        self,
        corridor_length: int = 10,
        slack: int = 0,
        min_corridor_length: int | None = None,
        render_mode: str | None = None,
        noise: float = 0.0,
        tight_fraction: float = 0.0,
        junction_wait: int | None = None,
        length_exponent: float = 1.0,
        episode_penalty: bool = False,
    ):
        self.corridor_length = check_int("corridor_length", corridor_length, *self.PARAMETERS["corridor_length"])
        self.slack = check_int("slack", slack, *self.PARAMETERS["slack"])
        self.noise = check_fraction("noise", noise, *self.PARAMETERS["noise"])
        self.tight_fraction = check_fraction("tight_fraction", tight_fraction, *self.PARAMETERS["tight_fraction"])
        self.length_exponent = check_fraction("length_exponent", length_exponent, *self.PARAMETERS["length_exponent"])
        if junction_wait is not None:
            junction_wait = check_int("junction_wait", junction_wait, 0, MAX_CORRIDOR_LENGTH)
        self.junction_wait = junction_wait
        if not isinstance(episode_penalty, (bool, np.bool_)):
            raise ValueError(f"episode_penalty={episode_penalty!r} is invalid: must be True or False")
        self.episode_penalty = bool(episode_penalty)
        if min_corridor_length is not None:
            min_corridor_length = check_int("min_corridor_length", min_corridor_length, 1, self.corridor_length)
        self.min_corridor_length = min_corridor_length
        self.longest_corridor = self.corridor_length
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode={render_mode!r} is invalid: allowed are None, 'ansi', 'rgb_array'")
        self.render_mode = render_mode
        self.start = 1 if self.active else 0
        self.junction = self.start + self.corridor_length
        self.max_steps = self.shortest_episode + self.slack
        # the largest power of two <= 1 / max_steps: exact in floating point, so penalties sum to >= -1
        self.step_penalty = penalty_for(self.max_steps)
        self.observation_space = spaces.Box(0.0, 1.0, (3,), np.float32)
        self.action_space = spaces.Discrete(4)
        self._position = self.start
        self._goal = 0
        self._t = 0
        self._cue_step = -1
        self._time_limit = self.max_steps
        self._penalty = self.step_penalty
        self._waited = 0

    @property
    def shortest_episode(self) -> int:
        """Steps in an optimal episode: the walk to the junction plus the turn."""
        return self.corridor_length + 1

    def _cue_visible(self) -> bool:
        return self._t == 0

    def _steps_to_go(self) -> int:
        return self.junction - self._position + 1

    def _observe(self) -> np.ndarray:
        obs = np.zeros(3, dtype=np.float32)
        if self._cue_visible():
            obs[self._goal] = 1.0
            self._cue_step = self._t
        elif self.noise > 0:  # distractors: no draws at all without noise, so seeded episodes stay as they were
            obs[:2] = np.minimum(self.np_random.uniform(0.0, self.noise, 2), BELOW_CUE)
        obs[2] = float(self._position == self.junction)
        return obs

    def _info(self) -> dict[str, Any]:
        return {"cue_step": self._cue_step, "goal": self._goal, "position": self._position}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if self.min_corridor_length is not None:
            length = self._draw_corridor_length()
            self.corridor_length = min(max(length, self.min_corridor_length), self.longest_corridor)
            self.junction = self.start + self.corridor_length
        # no draw without tight_fraction, so seeded episodes stay as they were
        tight = self.tight_fraction > 0 and self.np_random.uniform() < self.tight_fraction
        self._time_limit = self.shortest_episode + (0 if tight else self.slack)
        self._penalty = penalty_for(self._time_limit) if self.episode_penalty else self.step_penalty
        self._position, self._t, self._cue_step, self._waited = self.start, 0, -1, 0
        self._goal = int(self.np_random.integers(2))
        return self._observe(), self._info()

    def _draw_corridor_length(self) -> int:
        """A length from ``min_corridor_length .. longest_corridor`` with density ``~ length ** -length_exponent``
        (inverse CDF over the continuous range ``[min, longest + 1)``, rounded down)."""
        low, high = float(self.min_corridor_length), float(self.longest_corridor + 1)  # type: ignore[arg-type]
        if self.length_exponent == 1.0:  # log-uniform, drawn as before so seeded episodes stay as they were
            return int(math.exp(self.np_random.uniform(math.log(low), math.log(high))))
        power = 1.0 - self.length_exponent
        u = self.np_random.uniform()
        return int((low**power + u * (high**power - low**power)) ** (1.0 / power))

    def step(self, action):
        action = int(action)
        if not 0 <= action < 4:
            raise ValueError(f"action={action} is invalid: allowed are 0..3")
        at_junction = self._position == self.junction
        self._t += 1
        if at_junction and action in (UP, DOWN):
            success = action - UP == self._goal
            info = self._info() | {"is_success": success}
            return self._observe(), float(success), True, False, info
        before = self._steps_to_go()
        if action == RIGHT:
            self._position = min(self._position + 1, self.junction)
        elif action == LEFT:
            self._position = max(self._position - 1, 0)
        reward = 0.0 if self._steps_to_go() < before else -self._penalty
        obs = self._observe()
        info = self._info()
        self._waited += int(at_junction)
        out_of_time = self._t >= self._time_limit
        waited_too_long = self.junction_wait is not None and self._waited > self.junction_wait
        if out_of_time or waited_too_long:
            info["is_success"] = False
        return obs, reward, out_of_time or waited_too_long, False, info

    def render(self) -> str | np.ndarray | None:
        if self.render_mode == "ansi":
            cells = ["."] * (self.junction + 1)
            if self._cue_visible():
                cells[0] = "UD"[self._goal]
            cells[self._position] = "A"
            return "".join(cells) + "|"
        if self.render_mode == "rgb_array":
            return self._render_rgb()
        return None

    def _render_rgb(self, width: int = 512) -> np.ndarray:
        """Corridor in grey, the cued arm green, the other red, the agent white."""
        n = self.junction + 1
        grid = np.zeros((3, n, 3), dtype=np.uint8)
        grid[1, :] = 96
        grid[1 + (1 - 2 * (self._goal == 0)), -1] = (0, 200, 0)
        grid[1 - (1 - 2 * (self._goal == 0)), -1] = (200, 0, 0)
        grid[1, self._position] = 255
        scale = max(1, width // n)
        return np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)


class TMazeActiveEnv(TMazeEnv):
    """Active T-Maze: the cue cell is one step behind the start; the agent must step back to see it.

    Same spaces, rewards and arguments as :class:`TMazeEnv`. The agent starts in cell 1; the cue is
    visible while it stands in cell 0; the junction is ``corridor_length`` steps right of the start.
    A shortest episode is one step left, ``corridor_length + 1`` right and the turn
    (``corridor_length + 3`` steps); stepping back onto the cue cell is progress, not a penalty.

    ## Registered IDs
    ``rlattn/TMazeActive-v0`` (corridor 10) and ``rlattn/TMazeActive-L{30,100}-v0``.
    """

    active = True

    @property
    def shortest_episode(self) -> int:
        return self.corridor_length + 3

    def _cue_visible(self) -> bool:
        return self._position == 0

    def _steps_to_go(self) -> int:
        if self._cue_step < 0:
            return self._position + self.junction + 1
        return self.junction - self._position + 1


class TMazeOracle:
    """The optimal policy, acting from observations alone (it keeps its own memory of the cue)."""

    def __init__(self, env: gym.Env):
        maze = env.unwrapped
        if not isinstance(maze, TMazeEnv):
            raise ValueError(f"TMazeOracle needs a T-Maze env, got {maze}")
        self.active = maze.active
        self.reset()

    def reset(self) -> None:
        self.goal: int | None = None

    def act(self, obs: np.ndarray) -> int:
        if max(obs[0], obs[1]) >= 1.0:  # the cue; distractors stay below 1
            self.goal = int(obs[1] > obs[0])
        if self.goal is None:
            return LEFT if self.active else RIGHT
        if obs[2]:
            return UP + self.goal
        return RIGHT
