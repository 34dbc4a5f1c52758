"""Property-based tests (hypothesis): random seeds, keywords and actions never break an env, the
history wrapper or an extractor. Derandomized, so CI sees the same examples on every run."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import envs
from rlattn import HistoryAttentionExtractor, HistoryFlattenExtractor, HistoryObservation

FUZZ = settings(max_examples=40, deadline=None, derandomize=True)
SEARCH_IDS = [env_id for env_id in envs.ENV_IDS if "Search" in env_id]


def env_class(env_id):
    creator = gym.spec(env_id).entry_point
    return gym.envs.registration.load_env_creator(creator) if isinstance(creator, str) else creator


@st.composite
def env_cases(draw):
    """Any id, every integer keyword drawn from its own range independently."""
    env_id = draw(st.sampled_from(envs.ENV_IDS))
    kwargs = {name: draw(st.integers(low, high)) for name, (low, high) in env_class(env_id).PARAMETERS.items()}
    return env_id, kwargs, draw(st.integers(0, 2**32 - 1))


@st.composite
def fitting_search_cases(draw):
    """A visual-search id with keywords that fit together, so every one of these envs gets exercised."""
    env_id = draw(st.sampled_from(SEARCH_IDS))
    image_size = draw(st.integers(16, 256))
    grid = draw(st.integers(2, min(32, image_size // 4)))
    kwargs = {"image_size": image_size, "grid": grid, "set_size": draw(st.integers(1, grid * grid))}
    kwargs["noise"] = draw(st.integers(0, 128))
    parameters = env_class(env_id).PARAMETERS
    if "delay" in parameters:
        kwargs["delay"] = draw(st.integers(0, 20))
    if "glimpse" in parameters:
        kwargs["glimpse"] = 2 * draw(st.integers(0, (grid - 2) // 2)) + 1
        kwargs["max_steps"] = draw(st.integers(1, 80))
        kwargs["near_start"] = draw(st.sampled_from([0.0, 0.5, 1.0]))
    return env_id, kwargs, draw(st.integers(0, 2**32 - 1))


def make_or_skip(env_id, kwargs):
    """Independent draws can clash (a grid too fine for the image, more items than cells): such a
    combination must fail with one line naming a drawn keyword, and the example is skipped."""
    try:
        return gym.make(env_id, **kwargs)
    except ValueError as error:
        message = str(error)
        if "\n" in message or not any(f"{name}=" in message for name in kwargs):
            pytest.fail(f"{env_id} {kwargs}: unhelpful error {message!r}")
        assume(False)


def run_random_actions(env, seed, data):
    """Actions drawn from the env's own action space; checks every step's outputs."""
    actions = data.draw(st.lists(st.integers(0, env.action_space.n - 1), min_size=1, max_size=60))
    obs, info = env.reset(seed=seed)
    assert env.observation_space.contains(obs) and np.isfinite(obs).all()
    total = 0.0
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        assert env.observation_space.contains(obs) and np.isfinite(obs).all()
        assert np.isfinite(reward)
        total += reward
        assert total >= -1.0 and total <= 1.0  # returns are scaled: the best episode scores 1.0
        if "target_cell" in info:
            assert 0 <= info["target_cell"] < env.unwrapped.grid**2
        if terminated or truncated:
            assert isinstance(info["is_success"], bool)
            obs, info = env.reset()
            total = 0.0
            assert env.observation_space.contains(obs)


@FUZZ
@given(env_cases(), st.data())
def test_envs_never_raise_leave_their_space_or_produce_nan(case, data):
    env_id, kwargs, seed = case
    run_random_actions(make_or_skip(env_id, kwargs), seed, data)


@FUZZ
@given(fitting_search_cases(), st.data())
def test_search_envs_with_fitting_keywords_never_break(case, data):
    env_id, kwargs, seed = case
    run_random_actions(gym.make(env_id, **kwargs), seed, data)


class RandomEnv(gym.Env):
    """Observations drawn from any space, episodes of random length."""

    def __init__(self, space, horizon):
        self.observation_space, self.action_space, self.horizon = space, spaces.Discrete(3), horizon

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        return self.observation_space.sample(), float(self.np_random.normal()), self.t >= self.horizon, False, {}


observation_spaces = st.one_of(
    st.builds(
        lambda shape, low: spaces.Box(low, low + 5, shape, np.float32),
        st.lists(st.integers(1, 3), min_size=1, max_size=2).map(tuple),
        st.floats(-10, 10),
    ),
    st.builds(
        lambda shape: spaces.Box(0, 255, shape, np.uint8),
        st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
    ),
    st.builds(spaces.Discrete, st.integers(1, 6), start=st.integers(-3, 3)),
    st.builds(lambda nvec: spaces.MultiDiscrete(nvec), st.lists(st.integers(1, 4), min_size=1, max_size=3)),
    st.builds(spaces.MultiBinary, st.integers(1, 5)),
)


@FUZZ
@given(
    space=observation_spaces,
    length=st.integers(1, 8),
    horizon=st.integers(1, 12),
    include_action=st.booleans(),
    include_reward=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_history_wrapper_stays_in_its_space_with_valid_suffixes(
    space, length, horizon, include_action, include_reward, seed
):
    env = HistoryObservation(RandomEnv(space, horizon), length, include_action, include_reward)
    obs, _ = env.reset(seed=seed)
    steps_in_episode = 1
    for _ in range(2 * horizon + 1):
        assert env.observation_space.contains(obs)
        assert all(np.isfinite(np.asarray(v, dtype=np.float64)).all() for v in obs.values())
        expected = np.zeros(length, np.float32)
        expected[max(0, length - steps_in_episode) :] = 1
        np.testing.assert_array_equal(obs["valid"], expected)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        steps_in_episode += 1
        if terminated or truncated:
            obs, _ = env.reset()
            steps_in_episode = 1


EXTRACTOR_VARIANTS = [
    {},
    {"attention": "local", "window": 1, "n_layers": 2},
    {"attention": "local", "window": 2, "n_layers": 3},
    {"top_k": 1, "n_layers": 2},
    {"gate": "residual"},
]


@FUZZ
@given(
    length=st.integers(1, 10),
    variant=st.sampled_from(EXTRACTOR_VARIANTS),
    data=st.data(),
)
def test_extractors_are_finite_for_any_mask_pattern(length, variant, data):
    """Any validity pattern at all (holes anywhere, nothing valid but the newest), any values in the space."""
    space = spaces.Dict(
        {"obs": spaces.Box(-1e3, 1e3, (length, 2), np.float32), "valid": spaces.Box(0, 1, (length,), np.float32)}
    )
    if variant.get("window", 0) > length:
        variant = {**variant, "window": length}
    batch = data.draw(st.integers(1, 4))
    valid = data.draw(
        st.lists(st.lists(st.booleans(), min_size=length, max_size=length), min_size=batch, max_size=batch)
    )
    values = data.draw(
        st.lists(st.floats(-1e3, 1e3, width=32), min_size=batch * length * 2, max_size=batch * length * 2)
    )
    obs = {
        "obs": torch.tensor(values, dtype=torch.float32).view(batch, length, 2),
        "valid": torch.tensor(valid, dtype=torch.float32),
    }
    torch.manual_seed(0)
    attention = HistoryAttentionExtractor(space, features_dim=8, embed_dim=8, n_heads=2, **variant)
    out = attention(obs)
    assert out.shape == (batch, 8) and torch.isfinite(out).all()
    maps = attention.attention_maps(obs)
    assert torch.isfinite(maps).all()
    torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]))
    flat = HistoryFlattenExtractor(space, features_dim=8)(obs)
    assert torch.isfinite(flat).all()
