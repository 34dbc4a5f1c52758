"""AttentionPPO: the SB3 contract (learn, predict with state, save/load, evaluate_policy), its training pass, its errors.

The learning test (slow) states its budget and the seeds it was measured on.
"""

import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import FakeImageEnv, SimpleMultiObsEnv
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnvWrapper

import envs  # noqa: F401  (registers the ids)
from rlattn import AttentionPPO, EpisodicMemory

SMALL = {"features_dim": 16, "embed_dim": 16, "n_heads": 2, "n_layers": 2}
TOL = dict(rtol=1e-5, atol=1e-5)


def tmaze(length=4, **kwargs):
    return gym.make("rlattn/TMaze-v0", corridor_length=length, **kwargs)


def small_model(env, **kwargs):
    settings = dict(memory=4, memory_kwargs=SMALL, n_steps=16, seed=0, device="cpu", policy_kwargs={"net_arch": [16]})
    return AttentionPPO("MlpPolicy", env, **{**settings, **kwargs})


def check_training_pass(model, n_envs: int = 3) -> None:
    """Two rollouts; at each update, the buffer's whole-env sequences re-encoded with the rollout's
    weights must give the rollout's values and log-probs, then every weight moves, as an update would
    move it. The second rollout carries memory in."""
    checked = []

    def check() -> None:
        batch = model.rollout_buffer.sequences(np.arange(n_envs))
        with torch.no_grad():
            values, log_prob, _ = model.policy.evaluate_sequences(
                batch.observations, batch.actions.long().flatten(), batch.extras, batch.positions,
                batch.episode_starts, batch.carried,
            )  # fmt: skip
        torch.testing.assert_close(values.flatten(), batch.old_values, **TOL)
        torch.testing.assert_close(log_prob, batch.old_log_prob, **TOL)
        checked.append(bool(batch.carried.valid.any()))
        with torch.no_grad():
            for param in model.policy.parameters():
                param.add_(torch.randn_like(param) * 0.1)

    model.train = check  # type: ignore[method-assign]
    model.learn(96)
    assert checked == [False, True]


@pytest.mark.parametrize(
    "include, chunk",
    [({}, None), ({"include_action": True, "include_reward": True}, None), ({}, 3)],
    ids=["plain", "action-reward", "chunked"],
)
def test_training_pass_reproduces_the_rollouts_values_and_log_probs(include, chunk):
    """The buffer's whole-env sequences, re-encoded with the rollout's weights, give the rollout's numbers.

    Two rollouts: the second carries memory in; episodes (at most 5 steps) end inside rollouts and
    outgrow the window of 4. Between them every weight moves, as an update would move it: the memory
    carried in was cached under the old weights, and the rollout must still act as training computes.
    """
    model = small_model(make_vec_env(lambda: tmaze(), n_envs=3, seed=1), batch_size=48, **include)
    model.policy.memory_net.chunk_steps = chunk  # 3: the 16-step rollouts are encoded in chunks of 3 queries
    check_training_pass(model)


def cued_search(**kwargs):
    """A small cued search: 16 x 16 frames, a 4 x 4 grid (16 cells, 16 actions), delay 2."""
    return gym.make("rlattn/CuedVisualSearch-v0", image_size=16, grid=4, set_size=3, delay=2, **kwargs)


FRAMES = {"patch_size": 4, "embed_dim": 16, "n_heads": 2, "look_dim": 8}


def patch_model(env, **kwargs):
    settings = dict(memory=3, memory_kwargs=SMALL, n_steps=16, seed=0, device="cpu")
    return AttentionPPO("PatchPolicy", env, policy_kwargs={"features_extractor_kwargs": FRAMES}, **settings, **kwargs)


def test_patch_policy_training_pass_reproduces_the_rollouts():
    """The same check with frames as patches and a look after the memory: every frame's patches are
    encoded once in the rollout and again in training, and the look reads the same frame both times."""
    check_training_pass(patch_model(make_vec_env(cued_search, n_envs=3, seed=1), batch_size=48))


def test_patch_policy_save_load_round_trip_gives_identical_actions(tmp_path):
    model = patch_model(cued_search())
    model.learn(64)
    model.save(tmp_path / "patches")
    loaded = AttentionPPO.load(tmp_path / "patches", device="cpu")
    assert loaded.policy.features_extractor.look_kwargs["readout"] == "pointer"
    env = cued_search()
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        state_a = state_b = None
        for _ in range(4):  # the cue, 2 blank frames, the display
            a, state_a = model.predict(obs[None], state=state_a, deterministic=True)
            b, state_b = loaded.predict(obs[None], state=state_b, deterministic=True)
            assert (a == b).all()
            obs, *_ = env.step(int(a[0]))


def test_patch_policy_points_when_each_action_is_a_patch():
    """16 actions on a 4 x 4 patch grid: a pointer, and the first policy is the look's weights; 3 actions: a pool."""
    model = patch_model(cued_search())
    policy = model.policy
    assert policy.look_net.pointer_size == 16 and policy.net_arch == {"pi": [], "vf": [64]}
    obs, _ = cued_search().reset(seed=3)
    _, state = model.predict(obs[None])
    with torch.no_grad():
        features, _ = policy.memory_net.rerun(state)
        _, weights = policy.look_net(state.frame, features, need_weights=True)
        latent_pi, _ = policy.mlp_extractor(policy.read(features, state.frame))
        probs = torch.softmax(policy.action_net(latent_pi), dim=-1)
    torch.testing.assert_close(probs, weights[:, 0], **TOL)
    other = patch_model(FakeImageEnv(screen_height=16, screen_width=16, n_channels=3))  # Discrete(3) actions
    assert other.policy.look_net.pointer_size == 0 and other.policy.features_extractor.look_kwargs["readout"] == "pool"


@pytest.mark.parametrize(
    "make_env, policy",
    [
        (lambda: tmaze(), "MlpPolicy"),
        (lambda: gym.make("FrozenLake-v1"), "MlpPolicy"),
        (lambda: gym.make("Pendulum-v1"), "MlpPolicy"),
        (lambda: FakeImageEnv(screen_height=36, screen_width=36), "CnnPolicy"),
        (lambda: SimpleMultiObsEnv(), "MultiInputPolicy"),
        (lambda: FakeImageEnv(screen_height=32, screen_width=32, n_channels=3), "PatchPolicy"),
        (lambda: cued_search(), "PatchPolicy"),
    ],
    ids=["box-obs", "discrete-obs", "box-actions", "cnn", "multi-input", "patches-pool", "patches-pointer"],
)
def test_short_learn_changes_every_part_and_predicts(make_env, policy):
    env = make_vec_env(make_env, n_envs=2, seed=0)
    model = AttentionPPO(
        policy, env, memory=8, include_action=True, memory_kwargs=SMALL, n_steps=64, batch_size=64, n_epochs=2,
        seed=0, device="cpu", policy_kwargs={"net_arch": [16]},
    )  # fmt: skip
    before = {name: p.detach().clone() for name, p in model.policy.named_parameters()}
    model.learn(512)
    changed = {name.split(".")[0] for name, p in model.policy.named_parameters() if not torch.equal(p, before[name])}
    assert {"features_extractor", "memory_net", "mlp_extractor", "action_net", "value_net"} <= changed | {
        "features_extractor"  # FlattenExtractor has no parameters
    }
    if policy == "PatchPolicy":
        assert {"features_extractor", "look_net"} <= changed
    obs = env.reset()
    actions, state = model.predict(obs, deterministic=True)
    assert actions.shape[0] == 2 and isinstance(state, EpisodicMemory)
    assert env.action_space.contains(actions[0])


def play(model, n_steps=12, seed=0):
    """Deterministic actions of a user's own loop over two envs, memory carried through predict."""
    env = make_vec_env(lambda: tmaze(), n_envs=2, seed=seed)
    obs, state, starts, actions = env.reset(), None, np.ones(2, dtype=bool), []
    for _ in range(n_steps):
        action, state = model.predict(obs, state=state, episode_start=starts, deterministic=True)
        actions.append(action)
        obs, _, starts, _ = env.step(action)
    return np.stack(actions)


def test_predict_carries_memory_and_episode_start_resets_it():
    model = small_model(tmaze())
    env = tmaze()
    obs, _ = env.reset(seed=0)
    first, state = model.predict(obs, deterministic=True)  # one env, no batch dimension
    assert first.shape == () and state.t.tolist() == [1]
    model.predict(obs, state=state, deterministic=True)
    assert state.t.tolist() == [2] and state.valid.sum() == 2
    _, state = model.predict(obs, state=state, episode_start=np.array([True]), deterministic=True)
    assert state.t.tolist() == [1] and state.valid.sum() == 1
    fresh = model.policy.initial_memory(1)
    model.predict(obs, state=fresh, episode_start=np.array([True]), deterministic=True)
    assert torch.equal(state.valid, fresh.valid) and torch.equal(state.t, fresh.t)
    for name in ("hidden", "keys", "values"):  # the one valid slot; stale slots are masked, never read
        torch.testing.assert_close(getattr(state, name)[..., 0, :], getattr(fresh, name)[..., 0, :], **TOL)


def test_value_gives_acts_values_and_draws_nothing_from_torchs_random_stream():
    """Bootstrapping (a truncated episode's last observation, the step after a rollout) needs the value
    only: as SB3's predict_values, it draws no action, so the rollout's random stream is the actions'."""
    model = small_model(make_vec_env(lambda: tmaze(), n_envs=3, seed=0), include_action=True)
    obs = model.policy.obs_to_tensor(model.env.reset())[0]
    memory = model.policy.initial_memory(3)
    again = memory.clone()
    before = torch.get_rng_state()
    with torch.no_grad():
        values = model.policy.value(obs, memory)
        assert torch.equal(torch.get_rng_state(), before)
        _, acted, _ = model.policy.act(obs, again)
    assert values.shape == (3, 1)
    torch.testing.assert_close(values, acted, **TOL)
    assert torch.equal(memory.t, again.t)  # the step is remembered alike


def test_rollouts_bootstrap_with_value_and_draw_actions_only_to_act():
    """One act per env step; the value after the rollout (and of truncated episodes) from policy.value."""
    model = small_model(make_vec_env(lambda: gym.make("CartPole-v1", max_episode_steps=5), n_envs=2, seed=0), n_steps=8)
    calls = {"act": 0, "value": 0}
    act, value = model.policy.act, model.policy.value

    def counted(name, call):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return call(*args, **kwargs)

        return wrapper

    model.policy.act, model.policy.value = counted("act", act), counted("value", value)
    model.learn(16)
    truncated = calls["value"] - 1  # the rest: episodes cut by max_episode_steps
    assert calls["act"] == 8 and truncated >= 1


def test_save_load_round_trip_gives_identical_actions(tmp_path):
    model = small_model(make_vec_env(lambda: tmaze(), n_envs=2, seed=0), include_action=True, batch_size=32)
    model.learn(64)
    model.save(tmp_path / "model")
    loaded = AttentionPPO.load(tmp_path / "model", device="cpu")
    assert loaded.memory == 4 and loaded.include_action and loaded.policy.memory_net.window == 4
    assert np.array_equal(play(model), play(loaded))


def test_sb3s_memoryless_policy_calls_are_refused_in_one_line():
    """SB3's forward, predict_values, get_distribution and evaluate_actions would skip the memory: each is
    refused with one line naming the method and what to call instead (not a shape error, not a silent answer)."""
    model = small_model(tmaze())
    obs = model.policy.obs_to_tensor(tmaze().reset(seed=0)[0][None])[0]
    calls = {
        "forward": lambda: model.policy(obs),
        "predict_values": lambda: model.policy.predict_values(obs),
        "get_distribution": lambda: model.policy.get_distribution(obs),
        "evaluate_actions": lambda: model.policy.evaluate_actions(obs, torch.zeros(1)),
    }
    for name, call in calls.items():
        with pytest.raises(
            ValueError, match=rf"\.{name} is invalid without the episode's memory: use model\.predict"
        ) as error:
            call()
        assert "\n" not in str(error.value)
    actions, _ = model.predict(tmaze().reset(seed=0)[0])  # the memory's own path still acts
    assert model.action_space.contains(int(actions))


def test_previous_actions_are_the_policys_indices_whatever_the_spaces_start():
    """SB3 acts with indices 0 .. n-1 and hands them to the env unchanged, start or not: the memory's
    one-hot of the previous action takes them as they are (it raised on index 0 with start=1)."""
    from rlattn.episodic_policy import action_features

    for start in (1, -1, 0):
        features = action_features(gym.spaces.Discrete(3, start=start), torch.tensor([0, 2, 1]))
        assert torch.equal(features, torch.eye(3)[[0, 2, 1]])
    multi = gym.spaces.MultiDiscrete([2, 3], start=[1, 5])
    assert torch.equal(action_features(multi, torch.tensor([[1, 2]])), torch.tensor([[0.0, 1, 0, 0, 1]]))


def test_evaluate_policy_runs_with_the_memory():
    model = small_model(tmaze(), include_action=True)
    mean, std = evaluate_policy(model, make_vec_env(lambda: tmaze(), n_envs=2), n_eval_episodes=4)
    assert np.isfinite(mean) and np.isfinite(std)


def test_attention_maps_of_the_newest_step():
    model = small_model(tmaze(length=6), memory=8)
    env = tmaze(length=6)
    obs, _ = env.reset(seed=0)
    _, state = model.predict(obs[None])
    for action in (0, 0, 0):
        obs = env.step(action)[0]
        _, state = model.predict(obs[None], state=state)
    weights, positions = model.attention_maps(state)
    assert weights.shape == (1, 2, 2, 8)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, 2))
    assert sorted(positions[0][positions[0] >= 0].tolist()) == [0, 1, 2, 3]


def test_ortho_init_leaves_the_memory_alone():
    """SB3's ortho_init (on by default) re-initialises heads and MLP, never the transformer."""
    model = small_model(tmaze())
    policy = model.policy
    for block in policy.memory_net.blocks:
        assert block.attn.qkv.weight.std() < 0.03  # N(0, 0.02), not orthogonal (std ~ 1/sqrt(16) * sqrt(2))
        assert torch.all(block.skip1.gate_bias == 2.0)
    assert policy.action_net.weight.abs().max() < 0.05  # SB3's 0.01-gain init did run


def test_buffer_stores_one_observation_per_step():
    model = small_model(make_vec_env(lambda: tmaze(), n_envs=2), batch_size=32, include_action=True)
    model.learn(32)
    # 3 float32 of observation, an int64 action, 6 float32 SB3 arrays, an int64 position, 4 float32 extras;
    # the carried memory adds (L * W * E float32 + W int64 + W bool) per env and rollout of n_steps
    expected = 3 * 4 + 8 + 6 * 4 + 8 + 4 * 4 + (2 * 4 * 16 * 4 + 4 * 8 + 4 * 1) / 16
    assert model.rollout_buffer.nbytes_per_step() == pytest.approx(expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"memory": 0}, "memory=0"),
        ({"batch_size": 0}, "batch_size=0 is invalid"),
        ({"n_steps": 0}, "n_steps=0"),
        ({"use_sde": True}, "use_sde=True"),
        ({"memory_kwargs": {"width": 3}}, r"memory_kwargs keys \['width'\]"),
        ({"policy_kwargs": {"memory": 3}}, "policy_kwargs memory=3 differs from AttentionPPO's memory=4"),
        ({"policy_kwargs": {"rollout_buffer_class": None}}, "rollout_buffer_class in policy_kwargs"),
        ({"policy_kwargs": {"share_features_extractor": False}}, "share_features_extractor=False"),
        (
            {"policy_kwargs": {"memory_kwargs": {"n_layers": 1}}, "memory_kwargs": {"n_layers": 2}},
            r"memory_kwargs keys \['n_layers'\] are given twice, with different values",
        ),
    ],
)
def test_bad_arguments_name_the_value(kwargs, match):
    settings = {"memory": 4, "n_steps": 16, "device": "cpu", **kwargs}
    with pytest.raises(ValueError, match=match):
        AttentionPPO("MlpPolicy", tmaze(), **settings)


def test_one_step_rollouts_train_in_minibatches_of_several_envs():
    """n_steps=1 with batch_size=8: SB3's PPO would refuse a batch of 1 (its own flat minibatches); ours are
    whole rollouts, 8 envs of one step each, and their advantages are normalised."""
    model = small_model(make_vec_env(lambda: tmaze(), n_envs=8, seed=0), n_steps=1, batch_size=8, n_epochs=1)
    assert model.normalize_advantage and model.env_groups()[0].size == 8
    seen: list[int] = []
    loss = model._loss

    def spy(batch, *args):
        seen.append(batch.advantages.numel())
        return loss(batch, *args)

    model._loss = spy
    model.learn(16)
    assert seen == [8, 8]
    assert not small_model(tmaze(), n_steps=1, normalize_advantage=False).normalize_advantage


def test_predict_asks_for_rewards_when_steps_hold_them():
    model = small_model(tmaze(), include_reward=True)
    obs, _ = tmaze().reset(seed=0)
    _, state = model.predict(obs)  # a fresh episode needs no reward
    with pytest.raises(ValueError, match="reward=None is invalid with include_reward=True"):
        model.predict(obs, state=state)
    model.predict(obs, state=state, reward=np.array([0.5]))
    assert state.extras[0, -1] == 0.0  # the reward was used for this step; the next one's is not known yet


def test_learn_refuses_an_eval_callback_that_could_not_pass_rewards_before_training(tmp_path):
    from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback, EvalCallback

    model = small_model(tmaze(), include_reward=True)
    nested = [CallbackList([CheckpointCallback(10**6, str(tmp_path)), EvalCallback(tmaze(), eval_freq=8)])]
    for callback in (EvalCallback(tmaze(), eval_freq=8), nested):
        with pytest.raises(ValueError, match="EvalCallback cannot evaluate an AttentionPPO with include_reward=True"):
            model.learn(16, callback=callback)
        assert model.num_timesteps == 0  # refused before any step
    model.learn(16, callback=CheckpointCallback(10**6, str(tmp_path)))  # other callbacks are fine
    small_model(tmaze()).learn(16, callback=EvalCallback(tmaze(), eval_freq=8, n_eval_episodes=1))


def test_predict_refuses_a_reset_tuple_in_one_line():
    model = small_model(tmaze())
    with pytest.raises(ValueError, match=r"predict got a tuple \(observation, info\), as a gymnasium env's reset"):
        model.predict(tmaze().reset(seed=0))


def test_a_trained_models_policy_kwargs_build_the_same_model():
    model = small_model(tmaze(), memory=6, include_action=True)
    again = AttentionPPO("MlpPolicy", tmaze(), memory=6, include_action=True, policy_kwargs=model.policy_kwargs)
    assert again.policy.memory_net.window == 6 and again.policy.include_action
    assert again.policy_kwargs == model.policy_kwargs
    # its memory_kwargs given again, the same values: accepted
    AttentionPPO(
        "MlpPolicy", tmaze(), memory=6, include_action=True, memory_kwargs=SMALL, policy_kwargs=model.policy_kwargs
    )


class StopAtEpisodeEnd:
    """A callback (SB3's names in ``self.locals``) that stops training at the first step an episode ends."""

    def __new__(cls):
        from stable_baselines3.common.callbacks import BaseCallback

        class Stop(BaseCallback):
            def _on_step(self) -> bool:
                assert self.locals["clipped_actions"].shape == (1,) and self.locals["n_steps"] >= 0
                assert "obs_tensor" in self.locals
                return not self.locals["dones"].any()

        return Stop()


def test_a_callback_stopping_training_leaves_memory_and_next_observation_in_step():
    """Stopped on a step that ended an episode, a later learn() starts a new episode there: its first
    step is at position 0, with the episode-start flag (not the ended episode's observation again)."""
    model = small_model(tmaze())
    model.learn(1_000, callback=StopAtEpisodeEnd())
    assert model.num_timesteps < 1_000 and model._last_episode_starts.all()
    model.learn(16, reset_num_timesteps=False)
    assert model.rollout_buffer.positions[0, 0] == 0 and model.rollout_buffer.episode_starts[0, 0] == 1


def test_a_load_that_keeps_the_last_observations_starts_each_memory_as_an_episode(tmp_path):
    """The memory is not saved: loaded with force_reset=False, each env's next step begins its memory
    afresh and says so (episode start, position 0), not mid-episode with an empty memory."""
    model = small_model(make_vec_env(lambda: tmaze(20), n_envs=2, seed=0))
    model.learn(32)
    assert not model._last_episode_starts.any()  # both envs mid-episode (episodes of 20+ steps)
    model.save(tmp_path / "model")
    loaded = AttentionPPO.load(tmp_path / "model", env=model.get_env(), device="cpu", force_reset=False)
    assert loaded._last_obs is not None and loaded._last_episode_starts.all()
    loaded.learn(16, reset_num_timesteps=False)
    assert (loaded.rollout_buffer.episode_starts[0] == 1).all() and (loaded.rollout_buffer.positions[0] == 0).all()


@pytest.mark.parametrize(
    "given, refused",
    [
        ({"include_action": False}, "include_action=False differs from the saved model's include_action=True"),
        ({"include_reward": True}, "include_reward=True differs from the saved model's include_reward=False"),
        ({"memory": 8}, "memory=8 differs from the saved model's memory=4"),
        ({"memory_kwargs": {"n_layers": 1}}, "memory_kwargs {'n_layers': 1} differ from the saved model's"),
        ({"memory_kwargs": {"foo": 1}}, "memory_kwargs keys ['foo'] are not supported: allowed are"),
        ({"memory": 4, "include_action": True, "memory_kwargs": {"n_layers": 2}, "n_steps": 8}, None),
        ({"memory_kwargs": {"gate": "gru", "position": "rotary"}}, None),  # the defaults the model was built with
    ],
)
def test_load_refuses_keywords_the_trained_policy_was_not_built_with(tmp_path, given, refused):
    """SB3's load sets keywords as attributes and keeps the saved policy: a memory of another size, or
    extras the policy does not take, failed in the first rollout (or ran silently). Equal values are fine."""
    env = make_vec_env(lambda: tmaze(), n_envs=1, seed=0)
    small_model(env, include_action=True).save(tmp_path / "model")
    if refused is None:
        loaded = AttentionPPO.load(tmp_path / "model", env=env, device="cpu", **given)
        loaded.learn(8)
        assert loaded.n_steps == given.get("n_steps", 16) and loaded.policy.memory_net.window == 4
        return
    with pytest.raises(ValueError, match=re.escape(refused)):
        AttentionPPO.load(tmp_path / "model", env=env, device="cpu", **given)


class MovesOnAnImage(gym.Env):
    """A 16 x 16 image and four moves: as many actions as the frame has patches of 8 x 8, by chance."""

    observation_space = gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)
    action_space = gym.spaces.Discrete(4)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def test_patch_policy_says_when_it_takes_the_actions_for_patches_and_keeps_its_choice(tmp_path, recwarn):
    """Discrete(4) on a frame of 4 patches: the look points, a warning names readout='pool' for actions that are
    not patches; the choice is saved, so loading builds the same policy without saying it again."""
    env = make_vec_env(MovesOnAnImage, n_envs=1)
    model = AttentionPPO("PatchPolicy", env, memory=4, n_steps=16, device="cpu")
    said = [str(w.message) for w in recwarn if "taken as the frame's patches" in str(w.message)]
    assert len(said) == 1 and "readout='pool'" in said[0]
    assert model.policy.features_extractor.look_kwargs["readout"] == "pointer"
    model.save(tmp_path / "model")
    recwarn.clear()
    loaded = AttentionPPO.load(tmp_path / "model", env=env, device="cpu")
    assert loaded.policy_kwargs["features_extractor_kwargs"]["readout"] == "pointer"  # saved, not chosen again
    assert loaded.policy.features_extractor.look_kwargs["readout"] == "pointer"
    assert not [w for w in recwarn if "taken as the frame's patches" in str(w.message)]
    kwargs = {"features_extractor_kwargs": {"readout": "pool"}}
    pooled = AttentionPPO("PatchPolicy", env, memory=4, n_steps=16, device="cpu", policy_kwargs=kwargs)
    assert pooled.policy.features_extractor.look_kwargs["readout"] == "pool"
    assert not [w for w in recwarn if "taken as the frame's patches" in str(w.message)]
    # an env that says its actions are patches (the search envs: one action per cell) is not warned about
    search = make_vec_env(
        lambda: gym.make("rlattn/VisualSearch-v0", image_size=32, grid=4),
        n_envs=2,
        vec_env_cls=SubprocVecEnv,
        vec_env_kwargs={"start_method": "fork"},
    )
    pointing = AttentionPPO("PatchPolicy", search, memory=4, n_steps=16, device="cpu")
    assert pointing.policy.features_extractor.look_kwargs["readout"] == "pointer"
    assert not [w for w in recwarn if "taken as the frame's patches" in str(w.message)]
    search.close()


class IntegerDones(VecEnvWrapper):
    """A VecEnv whose dones are 0/1 int8, as some VecEnvs return them."""

    def reset(self):
        return self.venv.reset()

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        return obs, rewards, dones.astype(np.int8), infos


def test_integer_dones_train_and_callbacks_read_numpy_actions():
    seen = []

    class Record(BaseCallback):
        def _on_step(self) -> bool:
            seen.append(self.locals["actions"])
            return True

    model = small_model(IntegerDones(make_vec_env(lambda: tmaze(), n_envs=2, seed=0)))
    model.learn(64, callback=Record())
    assert model.num_timesteps == 64 and model.rollout_buffer.episode_starts.any()
    assert all(isinstance(a, np.ndarray) and a.shape == (2,) for a in seen)


BUDGET = 60_000
"""env steps of the learning test (about 35 s on one thread)"""


@pytest.mark.slow
def test_attention_ppo_solves_the_passive_tmaze():
    """Corridor 10, trained on corridors 1..10 with 1 step of slack (the shipped presets' mix), W = 16, 1 layer.

    Measured with this configuration (eval success on 40 plain corridor-10 episodes every 10,240
    steps, to 81,920; 2026-12-07, after bootstrapping stopped drawing actions, which moved the seeds'
    random streams): seeds 0, 1 and 2 first reached 1.00 at 40,960, 51,200 and 30,720 and held it to the
    end (before that change: 31k, 31k and 20k), so the 60k budget leaves about 19k steps of room for seed 0.
    """
    seed = 0
    env = make_vec_env(lambda: tmaze(10, min_corridor_length=1, slack=1), n_envs=8, seed=seed)
    model = AttentionPPO(
        "MlpPolicy", env, memory=16, memory_kwargs={"features_dim": 64, "embed_dim": 64, "n_heads": 4, "n_layers": 1},
        n_steps=128, batch_size=256, n_epochs=4, ent_coef=0.03, target_kl=0.02, seed=seed, device="cpu",
        policy_kwargs={"net_arch": [64]},
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: a second thread costs more than it saves (118 s with 2 under load)
    try:
        model.learn(BUDGET)
    finally:
        torch.set_num_threads(threads)
    eval_env = make_vec_env(lambda: tmaze(10), n_envs=4, seed=100 + seed)
    successes: list[bool] = []
    obs, state, starts = eval_env.reset(), None, np.ones(4, dtype=bool)
    while len(successes) < 40:
        action, state = model.predict(obs, state=state, episode_start=starts, deterministic=True)
        obs, _, starts, infos = eval_env.step(action)
        successes += [info["is_success"] for info, done in zip(infos, starts, strict=True) if done]
    assert np.mean(successes) >= 0.9


@pytest.mark.parametrize(
    "n_envs, batch_size, sizes",
    [
        (8, 256, [2, 2, 2, 2]),
        (3, 256, [2, 1]),
        (2, 1000, [2]),
        (4, 10, [1, 1, 1, 1]),
        (5, 128, [1, 1, 1, 1, 1]),
        (10, 512, [4, 3, 3]),  # ceil(10 / 4) = 3 groups, as even as they go
    ],
)
def test_minibatches_are_groups_of_whole_env_rollouts(n_envs, batch_size, sizes):
    """About batch_size / n_steps envs per minibatch (n_steps 128), every env once per epoch."""
    model = AttentionPPO("MlpPolicy", make_vec_env(lambda: tmaze(), n_envs=n_envs), n_steps=128, batch_size=batch_size)
    groups = model.env_groups()
    assert sorted(len(g) for g in groups) == sorted(sizes) and sorted(np.concatenate(groups)) == list(range(n_envs))


@pytest.mark.parametrize(
    "n_envs, n_steps, batch_size, warned",
    [
        (1, 2048, 64, True),  # SB3's and the Zoo's usual pair: one rollout of 2,048 steps, not 32 of 64
        (4, 128, 10, True),
        (2, 128, 1000, False),  # two envs hold 256 steps: the whole rollout is as near as it gets
        (4, 32, 256, False),  # this package's preset on 4 envs (--n-envs 4)
        (1, 2048, 2048, False),
        (8, 128, 256, False),
        (10, 128, 512, False),
        (4, 128, None, False),  # left to its default: one env rollout
    ],
)
def test_a_batch_size_that_whole_rollouts_cannot_give_is_said_so(n_envs, n_steps, batch_size, warned, recwarn):
    env = make_vec_env(lambda: tmaze(), n_envs=n_envs)
    AttentionPPO("MlpPolicy", env, n_steps=n_steps, batch_size=batch_size, _init_setup_model=False)
    said = [str(w.message) for w in recwarn if "whole env rollout" in str(w.message)]
    assert len(said) == int(warned)
    if batch_size == 64:
        assert said[0].startswith("AttentionPPO: batch_size 64 gives minibatches of 2048 steps (1 whole env rollout")


def test_patch_policy_learns_to_point_at_the_target():
    """Visual search on 32 x 32 frames, a 4 x 4 grid, 4 items: the pointer look learns to find the red square.

    Measured with this configuration (8 envs x 32 steps, deterministic eval on 100 searches): before
    training 0.00-0.04 (seeds 0-2); 1.00 after 512 steps on seeds 0, 1 and 2, and after 2,048 on
    seeds 0-4. The 2,048-step budget leaves 4x room.
    """
    search = dict(image_size=32, grid=4, set_size=4)
    env = make_vec_env(lambda: gym.make("rlattn/VisualSearch-v0", **search), n_envs=8, seed=0)
    model = AttentionPPO(
        "PatchPolicy", env, memory=1, memory_kwargs={"n_layers": 1, "gate": "residual"}, n_steps=32, batch_size=64,
        seed=0, device="cpu", policy_kwargs={"features_extractor_kwargs": {"patch_size": 8}},
    )  # fmt: skip
    eval_env = gym.make("rlattn/VisualSearch-v0", **search)
    before, _ = evaluate_policy(model, eval_env, n_eval_episodes=100, deterministic=True)
    model.learn(2_048)
    after, _ = evaluate_policy(model, eval_env, n_eval_episodes=100, deterministic=True)
    assert before <= 0.2 and after >= 0.9
