"""A user's own env: image layouts, 2-D frames, flags, scalars, VecNormalize, MultiBinary actions,
reward inputs and envs that cannot render, through the library and through ``train.py``."""

import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from agents.plan import make_env
from rlattn import (
    AttentionLoggingCallback,
    AttentionPPO,
    ChannelFirst,
    HistoryAttentionExtractor,
    HistoryFlattenExtractor,
    HistoryNormalize,
    HistoryObservation,
    PatchAttentionExtractor,
    SpatioTemporalAttentionExtractor,
)
from rlattn.wrappers import step_encoder

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"features_dim": 16, "embed_dim": 16, "n_heads": 2, "n_layers": 1}


class Steps(gym.Env):
    """Observations that tell their step and their layout: entry (i, ..., c) of step t is t + 10 c
    along the last axis for images, t elsewhere; rewards 1 + t; episodes of ``horizon`` steps."""

    metadata = {"render_modes": []}

    def __init__(self, space: gym.Space, action_space: gym.Space | None = None, horizon: int = 6):
        self.observation_space, self.horizon = space, horizon
        self.action_space = action_space if action_space is not None else spaces.Discrete(2)
        self.t = 0

    def _obs(self):
        space = self.observation_space
        if len(space.shape) == 3:  # channel-last image: channel c holds t + 10 c
            return (self.t + 10 * np.arange(space.shape[-1], dtype=np.uint8) + np.zeros(space.shape, np.uint8)).astype(
                space.dtype
            )
        return np.full(space.shape, min(self.t, int(np.max(space.high))), dtype=space.dtype)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), float(self.t), self.t >= self.horizon, False, {}


CHANNEL_LAST = spaces.Box(0, 255, (12, 16, 3), np.uint8)


def train_py(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """``train.py`` run in ``folder``, where the user's env module lies."""
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": f"{folder}:{ROOT}"},
    )


def register(name: str, space: gym.Space) -> str:
    env_id = f"OwnEnv{name}-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=lambda: Steps(space), max_episode_steps=6)
    return env_id


def test_channel_last_images_are_moved_channel_first_in_a_history():
    env = HistoryObservation(Steps(CHANNEL_LAST), 4)
    assert env.observation_space["obs"].shape == (4, 3, 12, 16)
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(0)
    newest = obs["obs"][-1]
    assert [int(newest[c, 5, 7]) for c in range(3)] == [1, 11, 21]  # step 1, channels 0..2
    extractor = SpatioTemporalAttentionExtractor(env.observation_space, patch_size=4, features_dim=16, embed_dim=16)
    batch = {key: torch.as_tensor(value[None]) for key, value in obs.items()}
    assert extractor(batch).shape == (1, extractor.features_dim)


def test_channel_first_wrapper_and_make_env():
    env = ChannelFirst(Steps(CHANNEL_LAST))
    assert env.observation_space.shape == (3, 12, 16)
    obs, _ = env.reset(seed=0)
    assert [int(obs[c, 0, 0]) for c in range(3)] == [0, 10, 20]
    assert make_env(register("Image", CHANNEL_LAST)).observation_space.shape == (3, 12, 16)
    with pytest.raises(ValueError, match=r"Box\(0, 255, \(3, 12, 16\).* not supported by ChannelFirst: allowed are"):
        ChannelFirst(Steps(spaces.Box(0, 255, (3, 12, 16), np.uint8)))


def test_a_channel_last_image_sb3_does_not_move_is_refused_until_its_channels_come_first():
    """SB3 moves a uint8 image's channels but not a float image's (VecNormalize makes images float32):
    (16, 16, 4) was read as 16 channels of 16 x 4, silently."""
    venv = VecNormalize(make_vec_env(lambda: Steps(spaces.Box(0, 255, (16, 16, 4), np.uint8)), n_envs=2))
    assert venv.observation_space.shape == (16, 16, 4) and venv.observation_space.dtype == np.float32
    kwargs = {
        "features_extractor_class": PatchAttentionExtractor,
        "features_extractor_kwargs": {**SMALL, "patch_size": 4},
    }
    with pytest.raises(
        ValueError, match=r"\(16, 16, 4\).* looks channel-last \(its smallest axis, 4, is the last\).*ChannelFirst"
    ) as error:
        PPO("CnnPolicy", venv, policy_kwargs=kwargs, device="cpu")
    assert "\n" not in str(error.value)
    floats = spaces.Box(0.0, 1.0, (16, 16, 4), np.float32)
    moved = ChannelFirst(Steps(floats))  # float images too, bounds moved with them
    assert moved.observation_space.shape == (4, 16, 16) and moved.observation_space.dtype == np.float32
    grid = spaces.Box(0.0, 1.0, (20, 9, 7), np.float32)  # a channel-first one-hot grid: 20 channels, 9 x 7
    assert PatchAttentionExtractor(grid, **{**SMALL, "patch_size": 1}).grid == (9, 7)
    with pytest.raises(ValueError, match="not supported by ChannelFirst"):
        ChannelFirst(Steps(grid))
    first = VecNormalize(make_vec_env(lambda: ChannelFirst(Steps(spaces.Box(0, 255, (16, 16, 4), np.uint8))), n_envs=2))
    model = PPO("CnnPolicy", first, n_steps=8, batch_size=8, policy_kwargs=kwargs, device="cpu")
    assert model.policy.features_extractor.grid == (4, 4)
    model.learn(16)


def test_grey_frames_without_a_channel_axis_get_one_from_channel_first():
    """(H, W) uint8 frames (gymnasium's AtariPreprocessing gives them): the image extractors refused them
    pointing at vector extractors; ChannelFirst now gives them a channel axis, and every image path takes them."""
    grey = spaces.Box(0, 255, (16, 16), np.uint8)
    with pytest.raises(ValueError, match=r"has two axes, no channel axis: .*rlattn.ChannelFirst\(env\) gives it one"):
        PatchAttentionExtractor(grey, **SMALL, patch_size=4)
    env = ChannelFirst(Steps(grey))
    assert env.observation_space == spaces.Box(0, 255, (1, 16, 16), np.uint8)
    env.reset(seed=0)
    obs, *_ = env.step(0)
    assert obs.shape == (1, 16, 16) and (obs == 1).all() and env.observation_space.contains(obs)

    def grey_frames(n_envs: int):
        return make_vec_env(lambda: ChannelFirst(Steps(grey)), n_envs=n_envs)

    kwargs = {
        "features_extractor_class": PatchAttentionExtractor,
        "features_extractor_kwargs": {**SMALL, "patch_size": 4},
    }
    model = PPO("CnnPolicy", grey_frames(2), n_steps=8, batch_size=8, policy_kwargs=kwargs, device="cpu")
    assert model.policy.features_extractor.grid == (4, 4)
    model.learn(16)
    history = HistoryObservation(ChannelFirst(Steps(grey)), 4)
    assert history.observation_space["obs"].shape == (4, 1, 16, 16)
    extractor = SpatioTemporalAttentionExtractor(history.observation_space, patch_size=4, features_dim=16, embed_dim=16)
    batch = {key: torch.as_tensor(value[None]) for key, value in history.reset(seed=0)[0].items()}
    assert extractor(batch).shape == (1, 16)
    frames = {"features_extractor_kwargs": {"patch_size": 4}}
    AttentionPPO("PatchPolicy", grey_frames(1), memory=4, n_steps=8, policy_kwargs=frames, device="cpu").learn(8)


def test_unscaled_pixels_from_sb3_are_one_line_naming_normalize_images():
    """SB3 divides a uint8 image by 255 only with normalize_images=True: with False the extractor got 0..255."""
    kwargs = {
        "features_extractor_class": PatchAttentionExtractor,
        "features_extractor_kwargs": {**SMALL, "patch_size": 4},
    }
    venv = make_vec_env(lambda: Steps(spaces.Box(0, 255, (3, 16, 16), np.uint8)), n_envs=2)
    model = PPO("CnnPolicy", venv, n_steps=8, batch_size=8, policy_kwargs={**kwargs, "normalize_images": False})
    with pytest.raises(ValueError, match=r"pixel values up to .* allowed is normalize_images=True"):
        model.learn(16)
    PPO("CnnPolicy", venv, n_steps=8, batch_size=8, policy_kwargs=kwargs).learn(16)


def test_two_d_uint8_frames_for_the_image_history_extractor_are_one_line_naming_the_channel_axis():
    env = HistoryObservation(Steps(spaces.Box(0, 255, (6, 8), np.uint8)), 4)
    with pytest.raises(
        ValueError,
        match=r"^a history step of shape \(48,\) \(if they are 2-D uint8 frames.*HistoryObservation flattens.*channel axis",
    ):
        SpatioTemporalAttentionExtractor(env.observation_space, patch_size=2, features_dim=16, embed_dim=16)


def test_train_py_reads_a_channel_last_image_env(tmp_path):
    """The patch size and grid come from the image's height and width, not from its channels."""
    (tmp_path / "ownimage.py").write_text(
        "import gymnasium as gym, numpy as np\n"
        "class Img(gym.Env):\n"
        "    observation_space = gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)\n"
        "    action_space = gym.spaces.Discrete(2)\n"
        "    def reset(self, *, seed=None, options=None):\n"
        "        super().reset(seed=seed); return self.observation_space.sample(), {}\n"
        "    def step(self, a): return self.observation_space.sample(), 0.0, False, False, {}\n"
        "gym.register('OwnImg-v0', Img, max_episode_steps=8)\n"
    )
    args = "-n 128 --n-envs 2 --eval-freq 64 --eval-episodes 2 --save-freq -1 --verbose 0 -f logs".split()
    done = train_py(tmp_path, "--env", "ownimage:OwnImg-v0", "--extractor", "patch-attention", *args)
    assert done.returncode == 0, done.stderr
    (saved,) = [p for p in (tmp_path / "logs" / "ppo" / "ownimage-OwnImg-v0_1").glob("*.zip") if p.stem != "best_model"]
    model = PPO.load(saved, device="cpu")
    assert model.observation_space.shape == (3, 16, 16)
    assert model.policy.features_extractor.grid[0] == model.policy.features_extractor.grid[1]  # a square grid


def test_two_d_uint8_frames_are_flattened_so_sb3_leaves_the_history_alone():
    space = spaces.Box(0, 255, (4, 16), np.uint8)
    venv = make_vec_env(lambda: HistoryObservation(Steps(space), 16), n_envs=2)
    model = PPO(
        "MultiInputPolicy",
        venv,
        n_steps=16,
        batch_size=16,
        n_epochs=1,
        device="cpu",
        policy_kwargs={"features_extractor_class": HistoryAttentionExtractor, "features_extractor_kwargs": SMALL},
    )
    assert model.observation_space["obs"].shape == (16, 64)  # K steps of H * W, not moved by VecTransposeImage
    model.learn(32)
    assert model.policy.features_extractor.obs_scale == pytest.approx(1 / 255)


def test_uint8_flags_are_scaled_by_their_own_bound():
    flags = HistoryObservation(Steps(spaces.Box(0, 1, (4,), np.uint8)), 4).observation_space
    counts = HistoryObservation(Steps(spaces.Box(0, 10, (4,), np.uint8)), 4).observation_space
    assert HistoryAttentionExtractor(flags, **SMALL).obs_scale == 1.0
    assert HistoryFlattenExtractor(counts, features_dim=8).obs_scale == pytest.approx(0.1)


def test_scalar_observations_are_one_number_per_step():
    env = HistoryObservation(Steps(spaces.Box(-5, 5, (), np.float32)), 4)
    assert env.observation_space["obs"].shape == (4, 1)
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(0)
    assert obs["obs"][-1, 0] == 1.0
    extractor = HistoryAttentionExtractor(env.observation_space, **SMALL)
    assert extractor({key: torch.as_tensor(value[None]) for key, value in obs.items()}).shape == (1, 16)


def test_a_normalised_valid_mask_is_one_line_naming_the_fix():
    def venv(**kwargs):
        make = lambda: HistoryObservation(Steps(spaces.Box(0, 9, (2,), np.float32)), 4)  # noqa: E731
        return VecNormalize(make_vec_env(make, n_envs=2), **kwargs)

    normalised = venv()  # every key, the mask too
    extractor = HistoryAttentionExtractor(normalised.observation_space, **SMALL)
    normalised.reset()
    obs = {k: torch.as_tensor(v) for k, v in normalised.step(np.zeros(2, dtype=np.int64))[0].items()}
    with pytest.raises(ValueError, match=r"'valid' mask holds .*allowed are 0 and 1 .*norm_obs_keys=\['obs'\]"):
        extractor(obs)
    policy_kwargs = {"features_extractor_class": HistoryAttentionExtractor, "features_extractor_kwargs": SMALL}
    model = PPO("MultiInputPolicy", venv(norm_obs_keys=["obs"]), n_steps=8, batch_size=8, policy_kwargs=policy_kwargs)
    model.learn(32)


def test_history_normalize_keeps_one_steps_statistics_for_every_slot(tmp_path):
    """Statistics of one step, from the steps the env returned, as VecNormalize on the env alone keeps
    them; every slot normalised by them; padding 0; uint8 steps become float32 for SB3's buffer."""
    space = spaces.Box(0, 50, (3,), np.uint8)
    history = HistoryNormalize(make_vec_env(lambda: HistoryObservation(Steps(space, horizon=9), 5), n_envs=2))
    alone = VecNormalize(make_vec_env(lambda: Steps(space, horizon=9), n_envs=2))
    assert (
        history.observation_space["obs"].dtype == np.float32 and history.venv.observation_space["obs"].dtype == np.uint8
    )
    obs, _ = history.reset(), alone.reset()
    for _ in range(20):
        obs = history.step(np.zeros(2, dtype=np.int64))[0]
        alone.step(np.zeros(2, dtype=np.int64))
    rms = history.obs_rms["obs"]
    assert rms.mean.shape == (3,) and rms.count == alone.obs_rms.count
    np.testing.assert_allclose(rms.mean, alone.obs_rms.mean)
    np.testing.assert_allclose(rms.var, alone.obs_rms.var)
    raw = history.get_original_obs()
    for env in range(2):  # the same raw value gets the same normalised value in every slot it sits in
        valid = raw["valid"][env] > 0.5
        expected = (raw["obs"][env] - rms.mean) / np.sqrt(rms.var + history.epsilon)
        np.testing.assert_allclose(obs["obs"][env][valid], expected[valid], rtol=1e-5)
        assert (obs["obs"][env][~valid] == 0).all()
    assert (raw["valid"] < 0.5).any()  # some padding was there to zero
    policy_kwargs = {"features_extractor_class": HistoryAttentionExtractor, "features_extractor_kwargs": SMALL}
    model = PPO("MultiInputPolicy", history, n_steps=8, batch_size=8, policy_kwargs=policy_kwargs, device="cpu")
    evaluation = HistoryNormalize(make_vec_env(lambda: HistoryObservation(Steps(space, horizon=9), 5)), training=False)
    model.learn(32, callback=EvalCallback(evaluation, eval_freq=8, n_eval_episodes=1, verbose=0))
    np.testing.assert_allclose(evaluation.obs_rms["obs"].mean, history.obs_rms["obs"].mean)  # synced by SB3
    assert model.rollout_buffer.observations["obs"].dtype == np.float32
    history.save(str(tmp_path / "stats.pkl"))
    loaded = HistoryNormalize.load(
        str(tmp_path / "stats.pkl"), make_vec_env(lambda: HistoryObservation(Steps(space), 5))
    )
    assert isinstance(loaded, HistoryNormalize) and isinstance(loaded.obs_rms["obs"], type(rms))
    np.testing.assert_allclose(loaded.obs_rms["obs"].var, rms.var)


def test_history_normalize_refuses_what_it_cannot_normalise():
    make = lambda: HistoryObservation(Steps(spaces.Box(0, 9, (2,), np.float32)), 4)  # noqa: E731
    for key in ("valid", "reward"):
        with pytest.raises(ValueError, match=f"norm_obs_keys entry '{key}' is invalid: allowed are obs$"):
            HistoryNormalize(make_vec_env(make), norm_obs_keys=[key])
    with pytest.raises(ValueError, match="wraps a VecEnv of HistoryObservation envs"):
        HistoryNormalize(make_vec_env(lambda: Steps(spaces.Box(0, 9, (2,), np.float32))))


def test_a_normalised_uint8_history_is_one_line_naming_the_key():
    """VecNormalize keeps a uint8 space uint8, so SB3's buffer would store its normalised values as
    wrapped uint8 numbers: refused at the first normalised rollout step, not trained on."""
    make = lambda: HistoryObservation(Steps(spaces.Box(0, 255, (4,), np.uint8)), 4)  # noqa: E731
    venv = VecNormalize(make_vec_env(make, n_envs=2), norm_obs_keys=["obs"])
    policy_kwargs = {"features_extractor_class": HistoryAttentionExtractor, "features_extractor_kwargs": SMALL}
    model = PPO("MultiInputPolicy", venv, n_steps=8, batch_size=8, policy_kwargs=policy_kwargs, device="cpu")
    with pytest.raises(
        ValueError, match=r"history key 'obs' holds -?\d.* uint8: allowed are whole numbers 0\.\.255"
    ) as error:
        model.learn(16)
    assert len(str(error.value).splitlines()) == 1 and "norm_obs_keys" in str(error.value)
    PPO("MultiInputPolicy", make_vec_env(make, n_envs=2), n_steps=8, batch_size=8, policy_kwargs=policy_kwargs).learn(
        16
    )


def test_a_normalised_image_history_is_one_line_naming_the_key():
    """A history of frames is 4-D, so SB3 does not take it for an image and VecNormalize keeps it uint8:
    the image-history extractor refuses normalised frames as the vector one refuses uint8 vectors."""
    make = lambda: HistoryObservation(Steps(spaces.Box(0, 255, (16, 16, 3), np.uint8)), 3)  # noqa: E731
    venv = VecNormalize(make_vec_env(make, n_envs=2), norm_obs_keys=["obs"])
    kwargs = {"patch_size": 8, "embed_dim": 16, "n_heads": 2}
    policy_kwargs = {"features_extractor_class": SpatioTemporalAttentionExtractor, "features_extractor_kwargs": kwargs}
    model = PPO("MultiInputPolicy", venv, n_steps=8, batch_size=8, policy_kwargs=policy_kwargs, device="cpu")
    with pytest.raises(ValueError, match=r"history key 'obs' holds -?\d.* where its space is uint8: allowed") as error:
        model.learn(16)
    assert len(str(error.value).splitlines()) == 1 and "norm_obs_keys" in str(error.value)
    PPO("MultiInputPolicy", make_vec_env(make, n_envs=2), n_steps=8, batch_size=8, policy_kwargs=policy_kwargs).learn(
        16
    )


@pytest.mark.parametrize("dtype", [np.int64, np.int16, np.bool_])
def test_integer_and_bool_steps_are_float32_in_a_history_so_they_can_be_normalised(dtype):
    """SB3's rollout buffer keeps a space's dtype: an integer history under VecNormalize had its
    normalised values cut to whole numbers. The history holds them as float32, values unchanged."""
    space = spaces.Box(0, 1 if dtype is np.bool_ else 1000, (4,), dtype)
    env = HistoryObservation(Steps(space), 3)
    assert env.observation_space["obs"].dtype == np.float32
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(0)
    np.testing.assert_array_equal(obs["obs"][-1], np.full(4, 1.0, np.float32))  # step 1's values
    venv = VecNormalize(make_vec_env(lambda: HistoryObservation(Steps(space), 3), n_envs=2), norm_obs_keys=["obs"])
    policy_kwargs = {"features_extractor_class": HistoryAttentionExtractor, "features_extractor_kwargs": SMALL}
    model = PPO("MultiInputPolicy", venv, n_steps=8, batch_size=8, policy_kwargs=policy_kwargs, device="cpu")
    model.learn(16)
    stored = model.rollout_buffer.observations["obs"]
    assert stored.dtype == np.float32 and (stored != np.round(stored)).any()  # normalised values kept


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_an_integer_step_bounded_by_its_dtypes_minimum_keeps_its_values(dtype):
    """ "Unbounded below" written as the dtype's minimum: its abs overflows in the integer dtype, which
    judged the range narrow and held the step as float32, changing values past 2**24."""
    space = spaces.Box(np.iinfo(dtype).min, 5, (2,), dtype)
    env = HistoryObservation(Steps(space), 2)
    assert env.observation_space["obs"].dtype == np.float64
    values = np.array([-2147483647, -16777217], dtype)
    np.testing.assert_array_equal(env._encode_obs(values), values.astype(np.float64))


@pytest.mark.parametrize("extractor", [HistoryAttentionExtractor, HistoryFlattenExtractor])
def test_a_three_axis_step_that_is_no_image_is_a_vector(extractor):
    env = HistoryObservation(Steps(spaces.Box(-1, 30, (2, 3, 4), np.float32)), 4)
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(0)
    kwargs = SMALL if extractor is HistoryAttentionExtractor else {"features_dim": 16}
    built = extractor(env.observation_space, **kwargs)
    assert built.step_dim == 24
    assert built({key: torch.as_tensor(value[None]) for key, value in obs.items()}).shape == (1, 16)
    with pytest.raises(ValueError, match=r"\(3, 12, 16\) are images"):  # uint8 0..255 steps of three axes are
        extractor(HistoryObservation(Steps(CHANNEL_LAST), 4).observation_space, **kwargs)


def test_an_image_inside_a_dict_is_scaled_to_unit_values():
    """An image leaf too large to code becomes values in [0, 1] (pixels by 1/255), as the extractors
    scale a uint8 step; small integer leaves stay codes and float leaves stay as they are."""
    space = spaces.Dict(
        {
            "image": spaces.Box(0, 255, (32, 32, 3), np.uint8),
            "level": spaces.Box(2, 6, (1,), np.int64),
            "speed": spaces.Box(-5, 5, (2,), np.float32),
        }
    )
    encode, box = step_encoder(space, "observation")
    image = np.zeros((32, 32, 3), np.uint8)
    image[0, 0] = (255, 51, 0)
    x = encode({"image": image, "level": np.array([4]), "speed": np.array([-3.0, 2.5], np.float32)})
    assert box.shape == x.shape == (32 * 32 * 3 + 5 + 2,)
    assert x[:3].tolist() == pytest.approx([1.0, 0.2, 0.0]) and x[3 : 32 * 32 * 3].max() == 0.0
    assert box.high[: 32 * 32 * 3].max() == 1.0
    assert x[32 * 32 * 3 :].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0, -3.0, 2.5]  # level 4 one-hot of 2..6, speed as is


def test_the_logging_callback_reads_a_channel_last_env_as_the_policy_does():
    """SB3 moves a channel-last image env's channels for CnnPolicy by itself; the callback, given the
    same env unwrapped, must read its frames the same way (else its patch grid is the wrong shape)."""
    policy_kwargs = {
        "features_extractor_class": PatchAttentionExtractor,
        "features_extractor_kwargs": {"patch_size": 4, "features_dim": 16, "embed_dim": 16, "n_heads": 2},
    }
    model = PPO("CnnPolicy", Steps(CHANNEL_LAST), n_steps=8, batch_size=8, policy_kwargs=policy_kwargs, device="cpu")
    assert model.observation_space.shape == (3, 12, 16)
    callback = AttentionLoggingCallback(Steps(CHANNEL_LAST), n_episodes=2)
    callback.init_callback(model)
    assert callback.env.observation_space.shape == (3, 12, 16)
    scored = callback.measure()
    assert scored is not None and scored.image.shape[-1] == 3 and len(scored.faithfulness.decisions) == 2


def test_attention_ppo_learns_with_multibinary_actions():
    env = Steps(spaces.Box(0, 9, (3,), np.float32), spaces.MultiBinary(2))
    model = AttentionPPO("MlpPolicy", env, memory=4, memory_kwargs=SMALL, n_steps=16, batch_size=16, device="cpu")
    model.learn(32)
    action, _ = model.predict(env.reset(seed=0)[0])
    assert action.shape == (2,) and set(np.unique(action)) <= {0, 1}


def test_reward_inputs_are_the_paid_rewards_in_training_and_in_the_logging_callback():
    seen = []

    class Recording(AttentionPPO):
        """Records the rewards each step's memory receives."""

        def _setup_model(self):
            super()._setup_model()
            remember = self.policy.remember

            def recording(memory, actions, rewards):
                seen.append(np.array(rewards))
                return remember(memory, actions, rewards)

            self.policy.remember = recording

    venv = VecNormalize(DummyVecEnv([lambda: Steps(spaces.Box(0, 9, (2,), np.float32))]), norm_obs=False)
    model = Recording("MlpPolicy", venv, memory=4, memory_kwargs=SMALL, n_steps=12, batch_size=12, include_reward=True)
    model.learn(12)
    paid = np.concatenate(seen[:12])
    assert sorted(set(paid.tolist())) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # the env's own, not the normalised ones
    callback = AttentionLoggingCallback(Steps(spaces.Box(0, 9, (2,), np.float32)), n_episodes=2)
    callback.init_callback(model)
    assert callback.measure() is not None  # played two episodes, the rewards handed to predict


VECTOR_ENV = (
    "import gymnasium as gym, numpy as np\n"
    "class Vec(gym.Env):\n"  # no render_mode argument: gym.make(..., render_mode=...) raises TypeError
    "    observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)\n"
    "    action_space = gym.spaces.Discrete(2)\n"
    "    def reset(self, *, seed=None, options=None):\n"
    "        super().reset(seed=seed); self.t = 0; return self.observation_space.sample(), {}\n"
    "    def step(self, a):\n"
    "        self.t += 1; return self.observation_space.sample(), float(a), self.t >= 5, False, {}\n"
    "gym.register('OwnVec-v0', Vec)\n"
)


@pytest.mark.parametrize("extractor", ["attention", "mlp"])
def test_replay_of_an_env_that_cannot_render(tmp_path, extractor):
    """The attention over the history is drawn alone; with nothing to draw, one line and exit code 2."""
    (tmp_path / "ownvec.py").write_text(VECTOR_ENV)

    tiny = "-n 64 --n-envs 2 --eval-freq -1 --save-freq -1 --verbose 0 -f logs".split()
    trained = train_py(tmp_path, "--env", "ownvec:OwnVec-v0", "--extractor", extractor, *tiny)
    assert trained.returncode == 0, trained.stderr
    done = train_py(tmp_path, "--replay", "logs/ppo/ownvec-OwnVec-v0_1", "--episodes", "2", "--video", "out.gif")
    if extractor == "attention":
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "out.gif").stat().st_size > 0
    else:
        assert done.returncode == 2
        (line,) = done.stderr.strip().splitlines()
        assert "nothing to draw: the env renders no rgb_array frames (its render_mode is None)" in line


class SometimesSucceeds(Steps):
    """Reports ``is_success`` (True) at the end of every other episode only, as envs that flag their
    successes do; actions are continuous or discrete as asked."""

    def __init__(self, action_space: gym.Space | None = None):
        super().__init__(spaces.Box(0, 9, (2,), np.float32), action_space, horizon=3)
        self.episodes = 0

    def reset(self, *, seed=None, options=None):
        self.episodes += 1
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if terminated and self.episodes % 2 == 0:
            info = {"is_success": True}
        return obs, reward, terminated, truncated, info


def test_an_episode_ending_without_is_success_where_others_report_it_is_a_failure(tmp_path):
    from agents.callbacks import ResumableEvalCallback
    from agents.evaluate import evaluate, success_flags

    assert success_flags([None, None]) == [] and success_flags([None, True, False]) == [False, True, False]
    assert success_flags([None, None], reports=True) == [False, False]  # known to report: no success is 0.00
    model = PPO("MlpPolicy", SometimesSucceeds(), n_steps=8, batch_size=8, device="cpu")
    result = evaluate(model, DummyVecEnv([SometimesSucceeds]), 4)
    assert result.episodes == 4 and result.success_rate == pytest.approx(0.5)  # SB3's way: 1.0 (two of two)
    assert evaluate(model, DummyVecEnv([lambda: Steps(spaces.Box(0, 9, (2,), np.float32))]), 2).success_rate is None
    callback = ResumableEvalCallback(
        DummyVecEnv([SometimesSucceeds]), n_eval_episodes=4, eval_freq=1, log_path=str(tmp_path), verbose=0
    )
    model.set_logger(configure(None, []))
    callback.init_callback(model)
    callback.on_step()
    assert callback.evaluations_successes == [[False, True, False, True]]
    callback.on_step()
    assert sorted(callback.evaluations_successes[-1]) == [False, False, True, True]  # afresh, not appended to
    assert np.load(tmp_path / "evaluations.npz")["successes"].mean() == pytest.approx(0.5)
    callback.eval_env = DummyVecEnv([lambda: Steps(spaces.Box(0, 9, (2,), np.float32))])  # no success this time
    callback.on_step()
    assert callback.evaluations_successes[-1] == [False] * 4  # 0.00, not left out
    never = ResumableEvalCallback(DummyVecEnv([lambda: Steps(spaces.Box(0, 9, (2,), np.float32))]), n_eval_episodes=2)
    never.init_callback(model)
    never.on_step()
    assert never.evaluations_successes == [] and not never.reports_success


def test_evaluations_before_the_first_reported_success_are_kept_as_failures(tmp_path):
    """SB3 gives an evaluation a success row only once one is reported: rows and timesteps stay aligned."""
    from agents.callbacks import ResumableEvalCallback

    silent = lambda: Steps(spaces.Box(0, 9, (2,), np.float32))  # noqa: E731
    model = PPO("MlpPolicy", SometimesSucceeds(), n_steps=8, batch_size=8, device="cpu")
    model.set_logger(configure(None, []))
    callback = ResumableEvalCallback(
        DummyVecEnv([silent]), n_eval_episodes=2, eval_freq=1, log_path=str(tmp_path), verbose=0
    )
    callback.init_callback(model)
    callback.on_step()
    callback.on_step()
    assert callback.evaluations_successes == [] and len(callback.evaluations_timesteps) == 2
    callback.eval_env = DummyVecEnv([SometimesSucceeds])
    callback.on_step()
    assert callback.evaluations_successes == [[False, False], [False, False], [False, True]]
    saved = np.load(tmp_path / "evaluations.npz")
    assert saved["successes"].shape == saved["results"].shape == (3, 2)
    # a file written the earlier way (a success row missing in front) is aligned on resume
    np.savez(tmp_path / "old.npz", **{**dict(saved), "successes": saved["successes"][2:]})
    resumed = ResumableEvalCallback(DummyVecEnv([silent]), n_eval_episodes=2)
    resumed.restore(tmp_path / "old.npz")
    assert resumed.evaluations_successes == [[False, False], [False, False], [False, True]]


def test_flip_rates_are_left_out_for_continuous_actions():
    """Masking any step moves a continuous action a little: no flip is counted, the mass still is."""
    make = lambda action_space: HistoryObservation(SometimesSucceeds(action_space), 4)  # noqa: E731
    kwargs = {"features_extractor_class": HistoryAttentionExtractor, "features_extractor_kwargs": SMALL}
    for action_space, flips in ((spaces.Box(-1, 1, (2,), np.float32), False), (spaces.Discrete(2), True)):
        model = PPO("MultiInputPolicy", make(action_space), n_steps=8, batch_size=8, policy_kwargs=kwargs, device="cpu")
        callback = AttentionLoggingCallback(make(action_space), n_episodes=2)
        callback.init_callback(model)
        scored = callback.measure()
        assert scored is not None and len(scored.faithfulness.decisions) == 2
        assert (scored.faithfulness.flip_rate("top") is not None) is flips
        assert (scored.faithfulness.flip_rate("random") is not None) is flips


class DictWithImage(gym.Env):
    """A Dict observation with an image among its keys, too large to code (kept as pixels in [0, 1])."""

    observation_space = spaces.Dict(
        {"image": spaces.Box(0, 255, (32, 32, 3), np.uint8), "speed": spaces.Box(-1, 1, (2,), np.float32)}
    )
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


class Drawn(gym.ObservationWrapper):
    """A wrapper that draws its env's observation as a 24 x 24 RGB picture (the env itself holds no image)."""

    def __init__(self, env):
        super().__init__(env)
        self.observation_space = spaces.Box(0, 255, (24, 24, 3), np.uint8)

    def observation(self, observation):
        return np.full((24, 24, 3), int(np.asarray(observation).flat[0]), np.uint8)


class OwnLimit(Steps):
    """An env with its own step limit (``max_steps``), as MiniGrid's."""

    max_steps = 50


def test_episode_caps_time_limits_and_image_histories_set_the_default_history():
    import warnings

    from agents.build import resolve
    from agents.cli import config_from_args
    from agents.config import ConfigError
    from agents.plan import preflight

    vector = spaces.Box(0, 9, (2,), np.float32)
    for name, make, steps in (
        ("NoCap", lambda: Steps(vector), None),
        ("OwnLimitShorterLimit", lambda: OwnLimit(vector), 10),
        ("Image200", lambda: Steps(CHANNEL_LAST), 200),
        ("DictImage200", DictWithImage, 200),
    ):
        if f"Own{name}-v0" not in gym.registry:
            gym.register(f"Own{name}-v0", entry_point=make, max_episode_steps=steps)
    uncapped = resolve(config_from_args(["--env", "OwnNoCap-v0"]))
    assert uncapped.history == 64
    with pytest.warns(UserWarning, match=r"OwnNoCap-v0 has no episode cap .*--env-kwargs max_episode_steps:N"):
        preflight(uncapped)  # training warns; resolving (a sweep's case, a replay) does not
    capped = resolve(config_from_args(["--env", "OwnNoCap-v0", "--env-kwargs", "max_episode_steps:12"]))
    assert capped.history == 12 and capped.env_kwargs == {"max_episode_steps": 12}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preflight(capped)
    assert resolve(config_from_args(["--env", "OwnOwnLimitShorterLimit-v0"])).history == 10  # not the env's 50
    image = resolve(config_from_args(["--env", "OwnImage200-v0"]))
    assert image.extractor == "spatiotemporal-attention" and image.history == 16  # frames, not 128 of them
    flat = resolve(config_from_args(["--env", "OwnDictImage200-v0"]))
    assert flat.extractor == "attention" and flat.history == 16  # an image inside a Dict, flattened into each step
    if "OwnRenderedImage200-v0" not in gym.registry:  # a vector env whose wrapper draws it: frames, as above
        gym.register("OwnRenderedImage200-v0", entry_point=lambda: Drawn(Steps(vector)), max_episode_steps=200)
    drawn = resolve(config_from_args(["--env", "OwnRenderedImage200-v0"]))
    assert drawn.extractor == "spatiotemporal-attention" and drawn.history == 16
    with pytest.raises(ConfigError, match=r"OwnDictImage200-v0 gives a Dict, flattened into one vector a step"):
        resolve(config_from_args(["--env", "OwnDictImage200-v0", "--extractor", "spatiotemporal-attention"]))


def test_a_replay_buffer_larger_than_the_memory_is_one_line_before_training(monkeypatch):
    import agents.plan as plan_module
    from agents.build import resolve
    from agents.cli import config_from_args
    from agents.config import ConfigError
    from agents.plan import preflight

    env_id = register("Vector", spaces.Box(0, 9, (2,), np.float32))
    args = ["--algo", "dqn", "--env", env_id, "--extractor", "mlp-stack", "-n", str(10**12), "-params"]
    huge = resolve(config_from_args([*args, "buffer_size:1000000000000"]))  # resolving alone does not look
    with pytest.raises(ConfigError, match=r"replay buffer of 1,000,000,000,000 transitions, 2 observations of 72 by"):
        preflight(huge)
    preflight(resolve(config_from_args([*args, "buffer_size:1000"])))
    short = resolve(config_from_args([*args[:-3], "-n", "1000", "-params", "buffer_size:1000000000000"]))
    monkeypatch.setattr(plan_module, "reservable_memory", lambda: None, raising=False)  # Linux's "always overcommit"
    preflight(short)  # a buffer larger than the run's steps holds only those
    # but SB3 reserves all of it up front: under Linux's heuristic each array (here the history's 48-byte
    # observations, beside its 24-byte mask) must fit RAM + swap, under strict accounting all of them the commit
    # limit left (observations and next observations: 2 x 72 bytes a transition)
    fits = resolve(config_from_args([*args[:-3], "-n", "1000", "-params", "buffer_size:1000000"]))  # 0.13 GiB
    for limit, needs in ((("each", 2**30), "an array of 44703.5 GiB"), (("all", 2**30), "134110.5 GiB of arrays")):
        monkeypatch.setattr(plan_module, "reservable_memory", lambda limit=limit: limit, raising=False)
        with pytest.raises(ConfigError) as refused:
            preflight(short)
        assert str(refused.value) == (
            f"--algo dqn on {env_id}: SB3 reserves the whole replay buffer up front (buffer_size 1,000,000,000,000 "
            f"transitions, observations of 72 bytes, history 6): {needs}, more than this machine lets be reserved "
            f"(1.0 GiB, {'RAM + swap' if limit[0] == 'each' else 'its commit limit left'}): lower -params "
            "buffer_size:N or --history K"
        )
        preflight(fits)
    monkeypatch.undo()
    here = plan_module.reservable_memory()  # this machine's: None under "always overcommit" or outside Linux
    assert here is None or (here[0] in ("each", "all") and here[1] >= 0)


def test_a_rollout_larger_than_the_memory_is_one_line_before_training():
    from agents.build import resolve
    from agents.cli import config_from_args
    from agents.config import ConfigError
    from agents.plan import preflight

    env_id = register("Vector", spaces.Box(0, 9, (2,), np.float32))
    args = ["--env", env_id, "--extractor", "attention", "--history", "1000", "--n-envs", "1000", "-params"]
    # 10**8 steps x 1,000 envs of a (1000, 2) history and its mask: 12 KB each, about 1.1 PiB
    with pytest.raises(ConfigError, match=r"rollout of 100,000,000 steps x 1000 envs, observations of 12,000 bytes"):
        preflight(resolve(config_from_args([*args, "n_steps:100000000", "batch_size:100"])))
    preflight(resolve(config_from_args([*args, "n_steps:8", "batch_size:100"])))


def test_errors_while_importing_the_users_module_are_one_line_naming_the_cause(tmp_path):
    (tmp_path / "needsmore.py").write_text("import nosuchpackage_for_rlattn\n")
    (tmp_path / "typo.py").write_text("import gymnasium as gym\ngym.register('Typo-v0', entry_point=Missing)\n")
    for env, cause in (
        ("needsmore:Foo-v0", "it imports 'nosuchpackage_for_rlattn', which is not installed"),
        ("typo:Typo-v0", "NameError: name 'Missing' is not defined"),
        ("nosuchmodule_for_rlattn:Foo-v0", "cannot import module 'nosuchmodule_for_rlattn': no such module"),
    ):
        done = train_py(tmp_path, "--env", env)
        assert done.returncode == 2 and cause in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_history_with_a_recurrent_algorithm_names_what_to_do():
    from agents.build import resolve
    from agents.cli import config_from_args
    from agents.config import ConfigError

    with pytest.raises(ConfigError, match=r"--history 8 does not go with --algo ppo_lstm, whose recurrent state"):
        resolve(config_from_args(["--algo", "ppo_lstm", "--history", "8"]))


class Sized(Steps):
    """Takes a tuple keyword and uses it as a dict key: a list in its place raises TypeError."""

    def __init__(self, size=(2,)):
        super().__init__(spaces.Box(0, 9, {(2,): (2,), (3,): (3,)}[size], np.float32))


def test_tuple_env_keywords_stay_tuples_when_a_run_is_resumed_or_replayed(tmp_path):
    import warnings

    from agents.build import resolve
    from agents.cli import config_from_args
    from agents.runfolder import as_started, load_run_config, write_run_info

    if "OwnSized-v0" not in gym.registry:
        gym.register("OwnSized-v0", entry_point=Sized, max_episode_steps=6)
    plan = resolve(config_from_args(["--env", "OwnSized-v0", "--env-kwargs", "size:(3,)", "-params", "n_steps:64"]))
    write_run_info(tmp_path, plan)
    saved = load_run_config(tmp_path, "--replay")
    assert saved.env_kwargs == {"size": (3,)} and saved.hyperparams == {"n_steps": 64}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "goes on with the settings it was started with" for a tuple read back
        again = as_started(resolve(saved), tmp_path)
    assert again.env_kwargs == {"size": (3,)}
    assert make_env("OwnSized-v0", **again.env_kwargs).observation_space.shape == (3,)
