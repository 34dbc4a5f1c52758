"""Dict and Tuple observations (MiniGrid's, POPGym's) in HistoryObservation, FlatObservation and train.py."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from rlattn import FlatObservation, HistoryAttentionExtractor, HistoryObservation

GRID = spaces.Dict(
    {
        "image": spaces.Box(0, 255, (3, 3, 2), np.uint8),
        "direction": spaces.Discrete(4),
        "mission": spaces.Text(12),
    }
)
PAIR = spaces.Tuple((spaces.Discrete(2), spaces.Tuple((spaces.Box(-1.0, 1.0, (2,), np.float32), spaces.Discrete(3)))))


class Structured(gym.Env):
    """Observation at step t: every number of the structure derived from t; episodes last 4 steps."""

    def __init__(self, space: gym.Space):
        self.observation_space, self.action_space, self.t = space, spaces.Discrete(2), 0

    def _obs(self):
        t = self.t
        if isinstance(self.observation_space, spaces.Dict):
            image = np.full((3, 3, 2), t, dtype=np.uint8)
            image[0, 0, 0] = 7  # a value MiniGrid would use for an object index, kept unscaled
            return {"image": image, "direction": t % 4, "mission": "get the key"}
        return (t % 2, (np.array([0.5, -0.5 * (t % 2)], dtype=np.float32), t % 3))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 1.0, self.t >= 4, False, {}


def test_dict_steps_are_one_vector_in_key_order_with_text_dropped():
    with pytest.warns(UserWarning, match="'mission'.*dropped.*FilterObservation"):
        env = HistoryObservation(Structured(GRID), length=3)
    # direction one-hot, then the image (keys sorted): uint8 codes, 8 bits each (least significant first)
    assert env.observation_space["obs"].shape == (3, 4 + 18 * 8)
    env.reset(seed=0)
    obs, *_ = env.step(0)
    newest = obs["obs"][-1]
    np.testing.assert_array_equal(newest[:4], [0, 1, 0, 0])  # direction 1
    codes = newest[4:].reshape(18, 8)  # flattened in the image's own order
    np.testing.assert_array_equal(codes[0], [1, 1, 1, 0, 0, 0, 0, 0])  # 7
    np.testing.assert_array_equal(codes[1:], np.tile([1, 0, 0, 0, 0, 0, 0, 0], (17, 1)))  # 1
    np.testing.assert_array_equal(obs["valid"], [0, 1, 1])


@pytest.mark.parametrize(
    ("leaf", "value", "expected"),
    [
        # a few values per number: one-hot from the leaf's low bound
        (spaces.Box(-1, 2, (2,), np.int64), [2, -1], [0, 0, 0, 1, 1, 0, 0, 0]),
        # wide ranges: each number's binary code, as wide as the range needs (0..1000: 10 bits)
        (spaces.Box(0, 1000, (1,), np.int32), [6], [0, 1, 1, 0, 0, 0, 0, 0, 0, 0]),
        (spaces.Box(10, 300, (1,), np.int16), [15], [1, 0, 1, 0, 0, 0, 0, 0, 0]),
        # floats and integers too wide for 16 bits: unchanged
        (spaces.Box(-1.0, 1.0, (2,), np.float32), [0.25, -1.0], [0.25, -1.0]),
        (spaces.Box(0, 2**20, (1,), np.int64), [70000], [70000]),
        # leaves that would grow past 8192 numbers (images): values scaled to [0, 1] by their bounds
        (
            spaces.Box(0, 255, (32, 32, 3), np.uint8),
            np.full(3072, 9),
            np.full(3072, 9, np.float32) * np.float32(1 / 255),
        ),
    ],
)
def test_integer_leaves_are_codes(leaf, value, expected):
    """Integer Box leaves are categories (MiniGrid's object indices: key 5, ball 6), not magnitudes."""
    env = FlatObservation(Structured(spaces.Dict({"x": leaf})))
    encoded = env.observation(dict(x=np.asarray(value, dtype=leaf.dtype).reshape(leaf.shape)))
    np.testing.assert_array_equal(encoded, np.asarray(expected, dtype=np.float32))
    assert env.observation_space.shape == encoded.shape and env.observation_space.contains(encoded)


@pytest.mark.parametrize(
    "leaf",
    [
        spaces.Box(0, 100, (2,), np.int32),
        spaces.Box(np.array([0, 0]), np.array([200, 100]), dtype=np.int32),
        spaces.Box(1, 4, (2,), np.int64),
    ],
    ids=["binary", "binary-two-ranges", "one-hot"],
)
@pytest.mark.parametrize("value", [[3, 128], [-1, 3]])
def test_a_leaf_value_outside_its_space_is_one_line_naming_the_key(leaf, value):
    """A binary code has room for values past the range (0..100 takes 7 bits: 128 would read as 0):
    refused, as the one-hot code refuses them, naming the observation key and the range."""
    env = FlatObservation(Structured(spaces.Dict({"level": leaf})))
    with pytest.raises(
        ValueError, match=r"^observation key 'level' value .* is outside its space: allowed are integers"
    ) as error:
        env.observation({"level": np.asarray(value, dtype=leaf.dtype)})
    assert "\n" not in str(error.value) and "SB3 acts" not in str(error.value)


def test_key_and_ball_codes_differ_in_two_bits():
    """Raw, key (5) and ball (6) differed by 1 where key and wall (2) differed by 3; as codes 5 and 6
    differ in two bits, 5 and 2 in three."""
    env = FlatObservation(Structured(spaces.Dict({"x": spaces.Box(0, 255, (1,), np.uint8)})))
    code = {v: env.observation({"x": np.array([v], dtype=np.uint8)}) for v in (2, 5, 6)}
    assert np.abs(code[5] - code[6]).sum() == 2 and np.abs(code[5] - code[2]).sum() == 3


def test_nested_tuple_steps_flatten_every_leaf():
    env = HistoryObservation(Structured(PAIR), length=2)
    assert env.observation_space["obs"].shape == (2, 2 + 2 + 3)
    env.reset(seed=0)
    obs, *_ = env.step(0)
    np.testing.assert_array_equal(obs["obs"][-1], [0, 1, 0.5, -0.5, 0, 1, 0])
    np.testing.assert_array_equal(obs["obs"][0], [1, 0, 0.5, 0, 1, 0, 0])


@pytest.mark.filterwarnings("ignore:observation key 'mission'")
@pytest.mark.parametrize("space", [GRID, PAIR])
def test_wrapped_structured_envs_pass_both_checkers(space):
    for env in (
        HistoryObservation(Structured(space), length=3, include_action=True),
        FlatObservation(Structured(space)),
    ):
        gym_check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=True)


@pytest.mark.filterwarnings("ignore:observation key 'mission'")
def test_flat_observation_is_the_history_step():
    flat, history = FlatObservation(Structured(GRID)), HistoryObservation(Structured(GRID), length=1)
    flat.reset(seed=0)
    history.reset(seed=0)
    np.testing.assert_array_equal(flat.step(1)[0], history.step(1)[0]["obs"][0])
    assert flat.observation_space.dtype == np.float32 and flat.observation_space.contains(flat.step(1)[0])


def test_a_structure_with_nothing_to_encode_names_it():
    only_text = spaces.Dict({"mission": spaces.Text(5)})
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="nothing to encode: no key holds numbers"):
        HistoryObservation(Structured(only_text), length=2)
    with pytest.raises(ValueError, match="not supported by FlatObservation: allowed are Dict and Tuple"):
        FlatObservation(gym.make("CartPole-v1"))


@pytest.mark.parametrize("extractor_kwargs", [{}, {"gate": "residual", "n_layers": 2}])
def test_sb3_ortho_init_leaves_the_attention_extractor_alone(extractor_kwargs):
    """PPO builds the same extractor with or without ortho_init=False; its MLP and heads still get SB3's init."""
    built = {}
    for ortho in (True, False):
        env = HistoryObservation(gym.make("CartPole-v1"), length=4)
        kwargs = dict(features_extractor_class=HistoryAttentionExtractor, ortho_init=ortho)
        model = PPO(
            "MultiInputPolicy", env, policy_kwargs={**kwargs, "features_extractor_kwargs": extractor_kwargs}, seed=3
        )
        built[ortho] = model.policy
    extractor = {k: p.features_extractor.state_dict() for k, p in built.items()}
    for name, tensor in extractor[True].items():
        assert np.array_equal(tensor.numpy(), extractor[False][name].numpy()), name
    # the actor head: SB3's orthogonal init with gain 0.01 only where ortho_init is on
    assert built[True].action_net.weight.abs().max() < 0.02 < built[False].action_net.weight.abs().max()


@pytest.mark.parametrize("space", [GRID, PAIR], ids=["dict", "tuple"])
def test_wrapped_envs_pickle_and_go_on_where_they_were(space):
    """Encoders are bound module functions, not closures: plain pickle (multiprocessing, get_attr) works."""
    import pickle
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dropped text key
        env = HistoryObservation(Structured(space), length=3, include_action=True, include_reward=True)
        flat = FlatObservation(Structured(space))
    env.reset(seed=0)
    env.step(1)
    copy = pickle.loads(pickle.dumps(env))
    for a, b in zip(env.step(0)[0].values(), copy.step(0)[0].values(), strict=True):
        np.testing.assert_array_equal(a, b)
    flat.reset(seed=0)
    np.testing.assert_array_equal(
        pickle.loads(pickle.dumps(flat)).observation(flat.unwrapped._obs()), flat.observation(flat.unwrapped._obs())
    )
