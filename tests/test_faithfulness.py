"""Flip rates: masking the step (patch) a decision depends on flips it, masking another does not; and
the callback logs them to TensorBoard beside the target mass."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import DummyVecEnv
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import envs  # noqa: F401  (registers the rlattn/ ids)
from envs.tmaze import DOWN, RIGHT, UP
from rlattn import AttentionLoggingCallback, AttentionPPO, HistoryAttentionExtractor, HistoryObservation
from rlattn.faithfulness import (
    Faithfulness,
    background_patch,
    history_decision,
    look_decision,
    mask_patch,
    mask_step,
    memory_actions,
    patch_decision,
    pick,
)

K = 6


def maze(length: int = 4, **kwargs) -> gym.Env:
    return HistoryObservation(gym.make("rlattn/TMaze-v0", corridor_length=length, **kwargs), K)


class CueReader(BaseFeaturesExtractor):
    """Reads the cue entries summed over the valid steps: (B, K, 3), valid (B, K) -> (B, 2)."""

    def __init__(self, observation_space: spaces.Dict):
        super().__init__(observation_space, 2)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        return (observations["obs"][..., :2] * observations["valid"][..., None]).sum(dim=1)


def cue_policy() -> PPO:
    """Turns up on a remembered up-cue, down on a down-cue, right with no cue: the decision depends on one step."""
    kwargs = dict(features_extractor_class=CueReader, net_arch=[], ortho_init=False)
    model = PPO("MultiInputPolicy", DummyVecEnv([maze]), n_steps=16, batch_size=16, policy_kwargs=kwargs, seed=0)
    with torch.no_grad():
        model.policy.action_net.weight.zero_()
        model.policy.action_net.bias.zero_()
        model.policy.action_net.bias[RIGHT] = 0.5
        model.policy.action_net.weight[UP, 0] = model.policy.action_net.weight[DOWN, 1] = 10.0
    return model


def junction(seed: int, length: int = 4) -> dict[str, np.ndarray]:
    env = maze(length)
    obs, _ = env.reset(seed=seed)
    for _ in range(length):
        obs, *_ = env.step(RIGHT)
    return obs


def peaked(slot: int) -> np.ndarray:
    """(H, K) weights, most on ``slot``."""
    weights = np.full((2, K), 0.05)
    weights[:, slot] = 0.75
    return weights


@pytest.mark.parametrize("seed", range(4))
def test_masking_the_cue_flips_the_decision_and_another_step_does_not(seed):
    policy, obs = cue_policy().policy, junction(seed)
    cue = K - 1 - 4  # the first step of a 5-step history
    assert int(policy.predict(obs, deterministic=True)[0]) in (UP, DOWN)
    decision = history_decision(policy, obs, peaked(cue), cue, np.random.default_rng(seed))
    assert decision.top_flip is True and decision.random_flip is False and not decision.newest_top
    assert decision.target_mass == pytest.approx(0.75)
    on_corridor = history_decision(policy, obs, peaked(cue + 2), None, np.random.default_rng(seed))
    assert on_corridor.top_flip is False and on_corridor.target_mass is None


def test_a_random_step_is_never_the_top_padding_or_the_newest():
    obs = junction(0, length=2)  # 3 valid steps in a history of 6
    rng = np.random.default_rng(0)
    valid = obs["valid"] > 0.5
    maskable = valid & (np.arange(K) != K - 1)
    draws = {pick(peaked(K - 3).mean(0), maskable, maskable, rng) for _ in range(50)}
    assert draws == {(K - 3, K - 2)}  # the only other maskable step
    assert pick(np.ones(K), np.zeros(K, bool), maskable, rng) == (None, None)


def test_newest_step_with_the_most_weight_is_counted_not_masked():
    policy, obs = cue_policy().policy, junction(1)
    decision = history_decision(policy, obs, peaked(K - 1), K - 5, np.random.default_rng(0))
    assert decision.newest_top and decision.top_flip is not None  # the most weighted of the older steps was masked


def test_a_masked_step_is_padding_to_the_extractor():
    """mask_step leaves the step out exactly as padding is left out: its content no longer matters."""
    space = maze().observation_space
    extractor = HistoryAttentionExtractor(space, features_dim=8, embed_dim=8, n_heads=2, n_layers=2)
    up, down = (next(junction(s) for s in range(20) if junction(s)["obs"][K - 5, goal] == 1) for goal in (0, 1))
    obs, other = mask_step(up, K - 5), mask_step(down, K - 5)  # the two goals' cues in the masked slot
    as_tensor = [{k: torch.as_tensor(v)[None] for k, v in o.items()} for o in (obs, other)]
    torch.testing.assert_close(extractor(as_tensor[0]), extractor(as_tensor[1]))


class RedPicker:
    """A stand-in policy over one frame: chooses the cell whose pixels are reddest (red minus green)."""

    def __init__(self, display):
        self.display = display

    def predict(self, frames, deterministic=True):
        redness = frames[:, 0].astype(float) - frames[:, 1]
        cells = [self.display.blocks(np.stack([r] * 3))[0].sum(axis=(1, 3)).reshape(-1) for r in redness]
        return np.array([int(np.argmax(c)) for c in cells]), None


@pytest.mark.parametrize("seed", range(3))
def test_masking_the_target_patch_flips_the_choice_and_a_distractor_does_not(seed):
    env = gym.make("rlattn/VisualSearch-v0", set_size=6)
    frame, info = env.reset(seed=seed)
    search = env.unwrapped
    grid, cell = search.grid, search.display.cell
    weights = np.full((grid, grid), 0.1 / (grid * grid - 1))
    weights.reshape(-1)[info["target_cell"]] = 0.9
    decision = patch_decision(
        RedPicker(search.display), frame, weights, cell, info["target_box"], np.random.default_rng(seed)
    )
    assert decision.top_flip is True and decision.random_flip is False
    assert decision.target_mass == pytest.approx(0.9)
    masked = mask_patch(frame, info["target_cell"], cell, grid)
    assert (
        masked[:, info["target_box"][0] : info["target_box"][2], info["target_box"][1] : info["target_box"][3]].max()
        == 0
    )
    assert frame.max() > 0 and (masked != frame).sum() > 0


def test_rates_count_only_what_was_masked():
    from rlattn.faithfulness import Decision

    scored = Faithfulness((Decision(0.5, True, False), Decision(None, False, None), Decision(0.9, True, True, True)))
    record = scored.record()
    assert record["flip_rate_top"] == pytest.approx(2 / 3) and (record["top_flips"], record["top_n"]) == (2, 3)
    assert record["flip_rate_random"] == pytest.approx(0.5) and record["random_n"] == 2
    assert record["target_mass"] == pytest.approx(0.7) and record["target_mass_n"] == 2 and record["newest_top"] == 1


def scalars(folder) -> dict[str, list[float]]:
    run = next(p.parent for p in folder.rglob("events.out.tfevents.*"))
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


FLIP_TAGS = {"attention/flip_rate_top", "attention/flip_rate_random", "attention/target_mass"}


def test_flip_rates_are_logged_beside_the_target_mass(tmp_path):
    kwargs = dict(
        features_extractor_class=HistoryAttentionExtractor,
        features_extractor_kwargs=dict(features_dim=16, embed_dim=16, n_heads=2, n_layers=1),
        ortho_init=False,
    )
    env = DummyVecEnv([lambda: maze(4, slack=2)])
    model = PPO(
        "MultiInputPolicy", env, n_steps=32, batch_size=32, policy_kwargs=kwargs, seed=0, tensorboard_log=str(tmp_path)
    )
    attention = AttentionLoggingCallback(
        DummyVecEnv([lambda: maze(4)] * 4), n_episodes=4, target_key="cue_step", seed=5
    )
    evaluation = EvalCallback(
        DummyVecEnv([lambda: maze(4)]), eval_freq=32, n_eval_episodes=2, callback_after_eval=attention
    )
    model.learn(96, callback=evaluation)
    logged = scalars(tmp_path)
    assert FLIP_TAGS <= set(logged)
    assert all(0.0 <= v <= 1.0 for tag in FLIP_TAGS for v in logged[tag])
    measured = attention.measure()
    assert measured is not None and measured.faithfulness.record()["top_n"] == 4
    assert logged["attention/flip_rate_top"][-1] == pytest.approx(measured.faithfulness.flip_rate("top"))


def test_attention_ppo_flip_rates_are_logged(tmp_path):
    model = AttentionPPO(
        "MlpPolicy",
        DummyVecEnv([lambda: gym.make("rlattn/TMaze-v0", corridor_length=4)] * 2),
        memory=8,
        memory_kwargs={"features_dim": 16, "embed_dim": 16, "n_heads": 2, "n_layers": 1},
        n_steps=16,
        seed=0,
        tensorboard_log=str(tmp_path),
    )
    attention = AttentionLoggingCallback(
        DummyVecEnv([lambda: gym.make("rlattn/TMaze-v0", corridor_length=4)] * 2), n_episodes=4, target_key="cue_step"
    )
    model.learn(
        64,
        callback=EvalCallback(
            DummyVecEnv([lambda: gym.make("rlattn/TMaze-v0", corridor_length=4)]),
            eval_freq=16,
            n_eval_episodes=1,
            callback_after_eval=attention,
        ),
    )
    assert FLIP_TAGS <= set(scalars(tmp_path))


def test_memory_action_recomputed_is_the_predicted_action():
    env = gym.make("rlattn/TMaze-v0", corridor_length=4)
    model = AttentionPPO("MlpPolicy", env, memory=8, n_steps=16, seed=0, memory_kwargs={"n_layers": 2})
    obs, _ = env.reset(seed=0)
    state, done = None, False
    while not done:
        action, state = model.predict(obs[None], state=state, deterministic=True)
        recomputed = memory_actions(model.policy, state, [None, None])
        assert (recomputed == action).all()
        obs, _, done, _, _ = env.step(int(action[0]))


def test_memory_action_recomputed_with_a_look_after_the_memory():
    """A patch policy reads the current frame after the memory: the memory keeps that frame's patches."""
    env = gym.make("rlattn/CuedVisualSearch-v0", image_size=16, grid=4, set_size=3, delay=2)
    frames = {"features_extractor_kwargs": {"patch_size": 4, "embed_dim": 16, "n_heads": 2}}
    model = AttentionPPO("PatchPolicy", env, memory=4, n_steps=16, seed=0, policy_kwargs=frames)
    with torch.no_grad():  # a look that depends on the frame: a random query rather than the zero one
        model.policy.look_net.look.pool.query.normal_()
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        state, done = None, False
        while not done:
            action, state = model.predict(obs[None], state=state, deterministic=True)
            assert (memory_actions(model.policy, state, [None]) == action).all()
            obs, _, done, _, _ = env.step(int(action[0]))


class RecordingPicker(RedPicker):
    """RedPicker that keeps every batch of frames it was asked about."""

    def __init__(self, display):
        super().__init__(display)
        self.batches = []

    def predict(self, frames, deterministic=True):
        self.batches.append(np.array(frames))
        return super().predict(frames, deterministic)


@pytest.mark.parametrize("seed", range(3))
def test_on_a_noisy_display_a_masked_patch_becomes_background_noise_not_a_dark_square(seed):
    """With pixel noise the mask is the frame's emptiest patch (noise, no item), so the masked target is gone
    without leaving a black square that stands out; the choice still flips, a random other patch's does not."""
    env = gym.make("rlattn/VisualSearch-v0", set_size=6, noise=128)
    frame, info = env.reset(seed=seed)
    search = env.unwrapped
    grid, cell = search.grid, search.display.cell
    empty, fill = background_patch(frame, grid, grid, cell)
    occupied = search._scene.reshape(3, grid, cell, grid, cell).any(axis=(0, 2, 4)).reshape(-1)
    items = set(np.flatnonzero(occupied).tolist())
    assert empty not in items and info["target_cell"] in items
    assert 40 < fill.mean() < 90 and fill.max() > 100  # uniform noise in [0, 128], not a dark square
    masked = mask_patch(frame, info["target_cell"], cell, grid, fill)
    row, col = divmod(info["target_cell"], grid)
    np.testing.assert_array_equal(masked[:, row * cell : (row + 1) * cell, col * cell : (col + 1) * cell], fill)
    assert (masked != frame).any(axis=0).sum() <= cell * cell  # nothing outside the patch changed
    weights = np.full((grid, grid), 0.1 / (grid * grid - 1))
    weights.reshape(-1)[info["target_cell"]] = 0.9
    picker = RecordingPicker(search.display)
    decision = patch_decision(picker, frame, weights, cell, info["target_box"], np.random.default_rng(seed))
    assert decision.top_flip is True and decision.random_flip is False
    original, top_masked = picker.batches[0][:2]
    np.testing.assert_array_equal(original, frame)
    np.testing.assert_array_equal(top_masked, masked)  # the policy saw the background noise, not zeros
    weights_on_background = np.full((grid, grid), 0.5 / (grid * grid - 1))
    weights_on_background.reshape(-1)[empty] = 0.5
    skipped = patch_decision(picker, frame, weights_on_background, cell, None, np.random.default_rng(seed))
    assert skipped.top_flip is None  # the background patch itself: nothing to mask, not counted


def test_a_look_after_the_memory_is_scored_on_the_frame_it_reads(tmp_path):
    """An episodic memory with a look on one-step searches: entropy, flips and target mass are the
    look's over the frame's patches (the memory holds one step: its entropy is always 0), the overlay is
    the picture, and the unmasked decision is the predicted one."""
    env = gym.make("rlattn/VisualSearch-v0", image_size=16, grid=4, set_size=3)
    frames = {"features_extractor_kwargs": {"patch_size": 4, "embed_dim": 16, "n_heads": 2}}
    model = AttentionPPO("PatchPolicy", env, memory=4, n_steps=16, seed=0, policy_kwargs=frames)
    with torch.no_grad():  # a look that depends on the frame: a random query rather than the zero one
        model.policy.look_net.look.pool.query.normal_()
    rng = np.random.default_rng(0)
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        action, state = model.predict(obs[None], deterministic=True)
        weights = model.policy.look_maps(state)[0].mean(0).cpu().numpy()
        decision = look_decision(model.policy, state, obs, weights, None, rng)
        assert decision.top_flip is not None or decision.random_flip is not None
        empty, _ = background_patch(obs, *weights.shape, 4)
        on_background = np.zeros_like(weights)
        on_background.flat[empty] = 1.0  # the most attended patch is the background: masking it is not counted
        assert look_decision(model.policy, state, obs, on_background, None, rng).top_flip is None
    attention = AttentionLoggingCallback(
        DummyVecEnv([lambda: gym.make("rlattn/VisualSearch-v0", image_size=16, grid=4, set_size=3)] * 2),
        n_episodes=4,
        target_key="target_box",
    )
    model.set_logger(configure(str(tmp_path), ["tensorboard"]))
    attention.init_callback(model)
    measured = attention.measure()
    assert measured is not None and measured.image_key == "attention/overlay" and not measured.extra_images
    assert measured.entropy > 0.0  # over the patches, not the one-step memory
    assert measured.faithfulness.record()["top_n"] + measured.faithfulness.record()["random_n"] > 0
    assert measured.faithfulness.target_mass is not None
