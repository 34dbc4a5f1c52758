"""AttentionLoggingCallback: episodes played side by side in a VecEnv are the episodes played one at a time."""

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

import envs  # noqa: F401  (registers the rlattn/ ids)
from rlattn import AttentionLoggingCallback, HistoryAttentionExtractor, HistoryObservation


def maze() -> gym.Env:
    # mixed corridor lengths with slack: episodes of different lengths, so envs finish at different steps
    return HistoryObservation(gym.make("rlattn/TMaze-v0", corridor_length=6, min_corridor_length=1, slack=3), 10)


@pytest.fixture(scope="module")
def model():
    policy_kwargs = dict(
        features_extractor_class=HistoryAttentionExtractor,
        features_extractor_kwargs=dict(features_dim=16, embed_dim=16, n_heads=2, n_layers=1),
        ortho_init=False,
    )
    return PPO("MultiInputPolicy", DummyVecEnv([maze]), n_steps=16, batch_size=16, policy_kwargs=policy_kwargs, seed=0)


def decisions(model, env, n_episodes: int) -> list:
    callback = AttentionLoggingCallback(env, n_episodes=n_episodes, target_key="cue_step", seed=7)
    callback.init_callback(model)
    return callback._decisions()


@pytest.mark.parametrize("n_envs", [3, 8])
def test_side_by_side_episodes_are_the_one_at_a_time_episodes(model, n_envs):
    alone = decisions(model, maze(), 8)
    together = decisions(model, DummyVecEnv([maze] * n_envs), 8)
    assert len(alone) == len(together) == 8
    assert len({t for _, t, _ in alone}) > 1  # the episodes differ in length
    for obs, t, info in alone:  # the last observation acted on, not the one after the reset
        assert obs["valid"].sum() == min(t + 1, 10) and info["cue_step"] == 0
    for (obs_a, t_a, info_a), (obs_b, t_b, info_b) in zip(alone, together, strict=True):
        assert t_a == t_b and info_a["cue_step"] == info_b["cue_step"] and info_a["goal"] == info_b["goal"]
        for key in obs_a:
            np.testing.assert_array_equal(obs_a[key], obs_b[key])


def test_each_round_replays_the_same_episodes(model):
    env = DummyVecEnv([maze] * 4)
    first, second = decisions(model, env, 6), decisions(model, env, 6)
    assert [(t, info["goal"]) for _, t, info in first] == [(t, info["goal"]) for _, t, info in second]


def test_target_mass_is_the_readouts_weight_on_the_cue_step(model):
    """On the passive maze the cue is the episode's first step: the oldest valid slot of a short history."""
    from stable_baselines3.common.logger import Logger

    from rlattn.callbacks import find_attention_extractor, policy_input

    recorded: dict = {}
    logger = Logger(None, [])
    logger.record = lambda key, value, exclude=None: recorded.__setitem__(key, value)  # type: ignore[method-assign]
    model.set_logger(logger)
    callback = AttentionLoggingCallback(maze(), n_episodes=4, target_key="cue_step", seed=7)
    callback.init_callback(model)
    extractor = find_attention_extractor(model.policy)
    expected = []
    for obs, _, _ in callback._decisions():
        first_valid = int(np.flatnonzero(obs["valid"])[0])
        maps = extractor.attention_maps(policy_input(model.policy, obs))[0]  # (layers, H, K)
        expected.append(float(maps[-1, :, first_valid].mean()))
    callback._on_step()
    assert recorded["attention/target_mass"] == pytest.approx(np.mean(expected))
    assert 0.0 < recorded["attention/target_mass"] < 1.0 and "attention/heatmap" in recorded


def test_the_training_env_itself_is_refused_as_the_callbacks_env():
    env = maze()
    model = PPO(
        "MultiInputPolicy",
        env,
        n_steps=16,
        batch_size=16,
        policy_kwargs={"features_extractor_class": HistoryAttentionExtractor},
    )
    callback = AttentionLoggingCallback(env, n_episodes=1)
    with pytest.raises(ValueError, match="AttentionLoggingCallback's env is one of the training envs"):
        callback.init_callback(model)
    AttentionLoggingCallback(maze(), n_episodes=1).init_callback(model)  # an env of its own
    venv = DummyVecEnv([maze])  # the very VecEnv (a SubprocVecEnv's workers would be shared the same way)
    vec_model = PPO("MultiInputPolicy", venv, n_steps=16, batch_size=16, policy_kwargs=model.policy_kwargs)
    with pytest.raises(ValueError, match="one of the training envs"):
        AttentionLoggingCallback(venv, n_episodes=1).init_callback(vec_model)


def test_observation_statistics_of_training_reach_the_callbacks_env():
    from stable_baselines3.common.vec_env import VecNormalize

    kwargs = {"features_extractor_class": HistoryAttentionExtractor, "features_extractor_kwargs": {"features_dim": 16}}
    train = VecNormalize(DummyVecEnv([maze]), norm_obs_keys=["obs"])
    model = PPO("MultiInputPolicy", train, n_steps=16, batch_size=16, policy_kwargs=kwargs)
    with pytest.raises(ValueError, match="wrap it as VecNormalize\\(env, training=False, norm_reward=False\\)"):
        AttentionLoggingCallback(DummyVecEnv([maze]), n_episodes=1).init_callback(model)
    raw = VecNormalize(DummyVecEnv([maze]), norm_obs=False, norm_reward=False)  # would not normalise them
    with pytest.raises(ValueError, match="wrap it as VecNormalize"):
        AttentionLoggingCallback(raw, n_episodes=1).init_callback(model)
    own = VecNormalize(DummyVecEnv([maze]), norm_obs_keys=["obs"], norm_reward=False)
    callback = AttentionLoggingCallback(own, n_episodes=1, target_key="cue_step")
    callback.init_callback(model)
    train.obs_rms["obs"].mean[:] = 5.0
    assert callback.measure() is not None
    np.testing.assert_array_equal(own.obs_rms["obs"].mean, 5.0)  # training's, not its own initial zeros
    assert not own.training  # the round does not move them
    every_key = VecNormalize(DummyVecEnv([maze]), norm_reward=False)  # would normalise the valid mask too
    with pytest.raises(
        ValueError, match=r"normalising keys \['obs', 'valid'\].*keys \['obs'\].*norm_obs_keys=\['obs'\]$"
    ):
        AttentionLoggingCallback(every_key, n_episodes=1).init_callback(model)


def test_a_model_trained_on_history_normalize_needs_it_on_the_callbacks_env_too():
    """HistoryNormalize keeps one step's statistics: a VecNormalize on the callback's env normalised the
    history per slot with them (padding moved off 0), or failed with a bare KeyError where it also
    normalised the valid mask."""
    from stable_baselines3.common.vec_env import VecNormalize

    from rlattn import HistoryNormalize

    kwargs = {"features_extractor_class": HistoryAttentionExtractor, "features_extractor_kwargs": {"features_dim": 16}}
    model = PPO(
        "MultiInputPolicy", HistoryNormalize(DummyVecEnv([maze])), n_steps=16, batch_size=16, policy_kwargs=kwargs
    )
    for env in (DummyVecEnv([maze]), VecNormalize(DummyVecEnv([maze]), norm_obs_keys=["obs"], norm_reward=False)):
        with pytest.raises(ValueError, match=r"HistoryNormalize\(env, training=False, norm_reward=False\)$"):
            AttentionLoggingCallback(env, n_episodes=1).init_callback(model)
    own = HistoryNormalize(DummyVecEnv([maze]), training=False, norm_reward=False)
    callback = AttentionLoggingCallback(own, n_episodes=1, target_key="cue_step")
    callback.init_callback(model)
    assert callback.measure() is not None


class Endless(gym.Wrapper):
    """The maze, but no episode ever ends, and its cue step reported as None (a target the env lacks)."""

    def step(self, action):
        obs, reward, _, _, info = self.env.step(0)
        return obs, reward, False, False, {**info, "cue_step": None}


def test_a_round_of_episodes_that_never_end_is_scored_at_max_steps(model):
    callback = AttentionLoggingCallback(Endless(maze()), n_episodes=2, target_key="cue_step", max_steps=30)
    callback.init_callback(model)
    with pytest.warns(UserWarning, match="an episode did not end within max_steps=30 steps"):
        scored = callback.measure()
    assert scored is not None and len(scored.faithfulness.decisions) == 2
    assert scored.faithfulness.target_mass is None  # a None target is no step
    with pytest.raises(ValueError, match="max_steps=0"):
        AttentionLoggingCallback(maze(), max_steps=0)


def test_float_frames_in_0_1_are_drawn_as_intensities():
    from rlattn.overlay import frame_rgb

    assert frame_rgb(np.full((3, 4, 4), 0.5, np.float32)).max() == 127
    assert frame_rgb(np.full((3, 4, 4), 200.0, np.float32)).max() == 200  # 0..255 floats as they are
    assert frame_rgb(np.full((1, 4, 4), 9, np.uint8)).shape == (4, 4, 3)


class Flash(gym.Env):
    """Grey 16 x 16 frames, channel first: black at the reset, bright after; two steps an episode."""

    observation_space = gym.spaces.Box(0, 255, (1, 16, 16), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros((1, 16, 16), np.uint8), {}

    def step(self, action):
        self.t += 1
        return np.full((1, 16, 16), 200, np.uint8), 0.0, self.t >= 2, False, {}


def test_overlays_of_stacked_frames_draw_the_newest_frame():
    from stable_baselines3.common.vec_env import VecFrameStack

    from rlattn import PatchAttentionExtractor

    stacked = lambda: VecFrameStack(DummyVecEnv([Flash]), 4, channels_order="first")  # noqa: E731
    kwargs = {"features_extractor_class": PatchAttentionExtractor, "features_extractor_kwargs": {"patch_size": 8}}
    model = PPO("CnnPolicy", stacked(), n_steps=8, batch_size=8, policy_kwargs=kwargs)
    callback = AttentionLoggingCallback(stacked(), n_episodes=1)
    callback.init_callback(model)
    scored = callback.measure()
    assert scored is not None
    frame = scored.image[:, :64]  # the frame half of the overlay (16 pixels drawn 4x), before the white gap
    assert frame.min() == 200  # the bright newest frame (the three oldest, drawn before, were black)


class Fixed(gym.Env):
    """Episodes of exactly ``horizon`` steps, whatever the actions."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, horizon: int):
        self.horizon, self.t = horizon, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.full(2, self.t / self.horizon, np.float32), 0.0, self.t >= self.horizon, False, {}


def test_an_episodic_memorys_heatmap_is_as_wide_as_its_window_however_long_the_episodes():
    """The memory holds the last W steps: columns for older ages were always empty, and the picture's width
    followed each round's longest episode past the window too (so it changed from one evaluation to the next);
    now it has at most W columns (fewer only while every episode is shorter than W)."""
    from stable_baselines3.common.env_util import make_vec_env

    from rlattn import AttentionPPO

    model = AttentionPPO(
        "MlpPolicy", make_vec_env(lambda: Fixed(5), n_envs=1), memory=4, n_steps=16, seed=0, device="cpu",
        memory_kwargs={"features_dim": 16, "embed_dim": 16, "n_heads": 2, "n_layers": 1},
    )  # fmt: skip
    widths = []
    for horizon in (40, 60):  # 12 pixels an age: 480 and 720 wide when the columns followed the episodes
        callback = AttentionLoggingCallback(make_vec_env(lambda h=horizon: Fixed(h), n_envs=1), n_episodes=2, seed=7)
        callback.init_callback(model)
        scored = callback.measure()
        assert scored is not None and scored.image_key == "attention/heatmap"
        widths.append(scored.image.shape[1])
    assert widths == [384, 384]  # the window's 4 ages, drawn at the picture's least width
