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
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from agents.plan import make_env
from rlattn import (
    AttentionLoggingCallback,
    AttentionPPO,
    ChannelFirst,
    HistoryAttentionExtractor,
    HistoryFlattenExtractor,
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
