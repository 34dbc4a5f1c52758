"""HistoryObservation: masks, episode boundaries, encodings, fresh arrays, and both env checkers."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs  # noqa: F401  (registers the ids)
from rlattn import HistoryObservation


class Counter(gym.Env):
    """Observation = the step count, in a chosen space; episodes last ``horizon`` steps."""

    def __init__(self, space: gym.Space, horizon: int = 5):
        self.observation_space, self.action_space, self.horizon = space, spaces.Discrete(3), horizon
        self.t = 0

    def _obs(self):
        if isinstance(self.observation_space, spaces.Discrete):
            return self.t % self.observation_space.n
        if isinstance(self.observation_space, spaces.MultiBinary):
            return np.full(self.observation_space.shape, self.t % 2, dtype=np.int8)
        if isinstance(self.observation_space, spaces.MultiDiscrete):
            return (np.full(self.observation_space.shape, self.t) % self.observation_space.nvec).astype(np.int64)
        return np.full(self.observation_space.shape, 1 + self.t, dtype=self.observation_space.dtype)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), float(self.t), self.t >= self.horizon, False, {}


BOX = spaces.Box(0, 100, (2,), np.float32)


def test_newest_last_and_valid_marks_real_steps():
    env = HistoryObservation(Counter(BOX), length=3)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs["valid"], [0, 0, 1])
    np.testing.assert_array_equal(obs["obs"][:, 0], [0, 0, 1])
    for _ in range(3):
        obs, *_ = env.step(0)
    np.testing.assert_array_equal(obs["valid"], [1, 1, 1])
    np.testing.assert_array_equal(obs["obs"][:, 0], [2, 3, 4])


def test_new_episode_never_sees_the_last_one():
    env = HistoryObservation(Counter(BOX, horizon=2), length=4)
    env.reset(seed=0)
    env.step(0)
    env.step(0)
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs["valid"], [0, 0, 0, 1])
    np.testing.assert_array_equal(obs["obs"][:, 0], [0, 0, 0, 1])


def test_returns_fresh_arrays():
    env = HistoryObservation(Counter(BOX), length=3)
    first, _ = env.reset(seed=0)
    kept = {k: v.copy() for k, v in first.items()}
    second, *_ = env.step(0)
    for key in first:
        assert not np.shares_memory(first[key], second[key])
        np.testing.assert_array_equal(first[key], kept[key])


def test_padding_lies_inside_the_space():
    space = spaces.Box(1, 10, (2,), np.float32)
    env = HistoryObservation(Counter(space), length=4)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    np.testing.assert_array_equal(obs["obs"][0], [1, 1])


def test_discrete_observations_become_one_hot():
    env = HistoryObservation(Counter(spaces.Discrete(4)), length=2)
    obs, _ = env.reset(seed=0)
    env.step(0)
    obs, *_ = env.step(0)
    np.testing.assert_array_equal(obs["obs"], [[0, 1, 0, 0], [0, 0, 1, 0]])


def test_multidiscrete_observations_become_concatenated_one_hots():
    env = HistoryObservation(Counter(spaces.MultiDiscrete([2, 3])), length=2)
    env.reset(seed=0)
    obs, *_ = env.step(0)
    np.testing.assert_array_equal(obs["obs"][-1], [0, 1, 0, 1, 0])
    assert env.observation_space["obs"].shape == (2, 5)


def test_previous_action_and_reward_per_step():
    env = HistoryObservation(Counter(BOX), length=3, include_action=True, include_reward=True)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs["action"][-1], [0, 0, 0])
    obs, *_ = env.step(2)
    np.testing.assert_array_equal(obs["action"][-2:], [[0, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(obs["reward"][:, 0], [0, 0, 1])


def test_a_value_outside_a_discrete_space_is_refused_in_one_line_not_wrapped_around():
    """Discrete(3, start=1) holds 1..3: an action 0 (SB3's index for the first action) would one-hot to the
    last slot through numpy's negative index, silently the same as action 3."""
    base = Counter(BOX)
    base.action_space = spaces.Discrete(3, start=1)
    env = HistoryObservation(base, length=2, include_action=True)
    env.reset(seed=0)
    obs, *_ = env.step(1)
    np.testing.assert_array_equal(obs["action"][-1], [1, 0, 0])
    with pytest.raises(
        ValueError, match=r"^action value 0 is outside its space: allowed are integers from \[1\] to \[3\] \(SB3"
    ) as error:
        env.step(0)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=r"^action value 4 is outside its space"):
        env.step(4)


def test_image_observations_keep_shape_and_dtype():
    space = spaces.Box(0, 255, (3, 8, 8), np.uint8)
    env = HistoryObservation(Counter(space), length=4)
    obs, _ = env.reset(seed=0)
    assert obs["obs"].shape == (4, 3, 8, 8) and obs["obs"].dtype == np.uint8


@pytest.mark.parametrize("space", [BOX, spaces.Discrete(4), spaces.MultiDiscrete([2, 3]), spaces.MultiBinary(3)])
def test_wrapped_envs_pass_both_checkers(space):
    env = HistoryObservation(Counter(space), length=6, include_action=True, include_reward=True)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)


@pytest.mark.parametrize("length", [0, -1, 2.5, True, "8"])
def test_bad_length_names_the_value(length):
    with pytest.raises(ValueError, match=f"length={length!r}"):
        HistoryObservation(Counter(BOX), length=length)


def test_unsupported_space_names_the_space():
    with pytest.raises(ValueError, match="Text.* not supported by HistoryObservation: allowed are Box"):
        HistoryObservation(Counter(spaces.Text(8)), length=2)
