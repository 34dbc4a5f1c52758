"""The SB3 extractor contract: shapes, padding invariance, gradients, save/load, short learns."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, DQN, PPO

import envs  # noqa: F401  (registers the ids)
from rlattn import HistoryAttentionExtractor, HistoryFlattenExtractor, HistoryObservation, extractors

K, D = 6, 3
SPACE = spaces.Dict({"obs": spaces.Box(-1, 1, (K, D), np.float32), "valid": spaces.Box(0, 1, (K,), np.float32)})
VARIANTS = [
    {},
    {"attention": "local", "window": 2, "n_layers": 3},
    {"gate": "residual", "n_layers": 1},
    {"top_k": 1, "block_size": 2, "n_layers": 2},
]


def batch(B=4, space=SPACE, seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = {key: torch.rand((B, *s.shape), generator=g) for key, s in space.spaces.items()}
    lengths = torch.randint(1, K + 1, (B,), generator=g)
    obs["valid"] = (torch.arange(K)[None] >= (K - lengths)[:, None]).float()
    return obs


@pytest.mark.parametrize("kwargs", VARIANTS)
def test_output_shape_and_padding_invariance(kwargs):
    extractor = HistoryAttentionExtractor(SPACE, features_dim=20, embed_dim=16, n_heads=2, **kwargs)
    obs = batch()
    out = extractor(obs)
    assert out.shape == (4, 20) and extractor.features_dim == 20
    changed = {**obs, "obs": torch.where(obs["valid"][..., None] > 0, obs["obs"], torch.randn_like(obs["obs"]) * 100)}
    torch.testing.assert_close(extractor(changed), out)


def test_all_padding_but_newest_is_finite_and_equals_a_one_step_history():
    extractor = HistoryAttentionExtractor(SPACE, embed_dim=16, n_heads=2)
    obs = batch()
    obs["valid"] = torch.zeros_like(obs["valid"])
    short_space = spaces.Dict(
        {"obs": spaces.Box(-1, 1, (1, D), np.float32), "valid": spaces.Box(0, 1, (1,), np.float32)}
    )
    short = HistoryAttentionExtractor(short_space, embed_dim=16, n_heads=2)
    state = extractor.state_dict()
    state["position"] = state["position"][-1:]  # the same age-0 position vector
    short.load_state_dict(state)
    out = extractor(obs)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, short({"obs": obs["obs"][:, -1:], "valid": torch.ones(4, 1)}))


@pytest.mark.parametrize("kwargs", VARIANTS)
def test_gradients_reach_every_parameter(kwargs):
    extractor = HistoryAttentionExtractor(SPACE, embed_dim=16, n_heads=2, **kwargs)
    extractor(batch(B=8)).square().sum().backward()
    for name, param in extractor.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    for block in extractor.blocks:  # queries, keys and values each take part (not only the values)
        for part in block.attn.qkv.weight.grad.chunk(3):
            assert part.abs().sum() > 0


def test_long_local_history_runs_chunked_and_matches_the_dense_path():
    """K = 400 with a window of 8 takes the chunked path; forcing dense gives the same features."""
    long_k = 400
    space = spaces.Dict(
        {"obs": spaces.Box(-1, 1, (long_k, D), np.float32), "valid": spaces.Box(0, 1, (long_k,), np.float32)}
    )
    extractor = HistoryAttentionExtractor(space, embed_dim=16, n_heads=2, n_layers=3, attention="local", window=8)
    g = torch.Generator().manual_seed(0)
    obs = {"obs": torch.rand(3, long_k, D, generator=g), "valid": torch.ones(3, long_k)}
    obs["valid"][0, :350] = 0
    assert extractor.blocks[0].attn._chunked(long_k, long_k)
    chunked = extractor(obs)
    for block in extractor.blocks:
        block.attn.chunk = 0
    torch.testing.assert_close(extractor(obs), chunked, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs", VARIANTS)
def test_features_of_a_history_do_not_depend_on_the_rest_of_the_batch(kwargs):
    """Steps that are padding in every history of a batch are dropped before the math: exact."""
    extractor = HistoryAttentionExtractor(SPACE, embed_dim=16, n_heads=2, **kwargs)
    short = batch(B=3)
    short["valid"] = torch.zeros(3, K)
    short["valid"][:, -2:] = 1  # every history two steps long: four padding columns to drop
    full = batch(B=1, seed=5)
    full["valid"] = torch.ones(1, K)
    mixed = {key: torch.cat([short[key], full[key]]) for key in short}
    torch.testing.assert_close(extractor(short), extractor(mixed)[:3], rtol=1e-5, atol=1e-5)
    maps = extractor.attention_maps(short)
    assert maps.shape[-1] == K and torch.all(maps[..., : K - 2] == 0)


@pytest.mark.parametrize("kwargs", VARIANTS)
def test_large_batches_in_length_groups_give_the_same_features_and_gradients(kwargs, monkeypatch):
    """Batches of 128+ long histories run sorted by valid length, in groups: same numbers as one pass."""
    monkeypatch.setattr(extractors, "LENGTH_GROUP_MIN_STEPS", 2)
    torch.manual_seed(0)
    extractor = HistoryAttentionExtractor(SPACE, embed_dim=16, n_heads=2, **kwargs)
    observations = batch(B=200, seed=3)
    passes = count_passes(extractor)
    grouped = extractor(observations)
    assert len(passes) == 3  # 200 histories: three groups
    whole = extractor._forward(observations)
    torch.testing.assert_close(grouped, whole, rtol=1e-5, atol=1e-5)
    probe = torch.randn_like(whole)
    params = [p for p in extractor.parameters() if p.requires_grad]
    for a, b in zip(
        torch.autograd.grad((grouped * probe).sum(), params, allow_unused=True),
        torch.autograd.grad((whole * probe).sum(), params, allow_unused=True),
        strict=True,
    ):
        if a is None or b is None:
            assert a is None and b is None
        else:
            # each gradient sums 200 histories in another order: float32 rounding reaches ~2e-5 (seen in CI)
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def count_passes(extractor: HistoryAttentionExtractor) -> list[int]:
    """The batch size of every pass through the blocks, recorded as the extractor runs."""
    passes: list[int] = []
    inner = extractor._forward

    def recorded(observations: dict[str, torch.Tensor]) -> torch.Tensor:
        passes.append(len(observations["valid"]))
        return inner(observations)

    extractor._forward = recorded  # type: ignore[method-assign]
    return passes


def test_short_histories_run_in_one_pass_however_large_the_batch():
    """Grouping costs more passes than it saves padding below LENGTH_GROUP_MIN_STEPS valid steps."""
    long_space = spaces.Dict(
        {"obs": spaces.Box(-1, 1, (80, D), np.float32), "valid": spaces.Box(0, 1, (80,), np.float32)}
    )
    extractor = HistoryAttentionExtractor(long_space, embed_dim=16, n_heads=2)
    passes = count_passes(extractor)
    observations = {key: torch.rand((256, *s.shape)) for key, s in long_space.spaces.items()}
    observations["valid"] = torch.zeros(256, 80)
    observations["valid"][:, -(extractors.LENGTH_GROUP_MIN_STEPS - 1) :] = 1
    extractor(observations)
    assert passes == [256]
    observations["valid"][0, -extractors.LENGTH_GROUP_MIN_STEPS :] = 1  # one history long enough
    extractor(observations)
    assert passes[1:] == [64, 64, 64, 64]


@pytest.mark.parametrize("kwargs", VARIANTS)
def test_an_older_valid_step_changes_the_features(kwargs):
    """The history is read: changing one older real step changes that history's output, and no other."""
    extractor = HistoryAttentionExtractor(SPACE, embed_dim=16, n_heads=2, **kwargs)
    obs = batch()
    obs["valid"][0] = 1.0  # history 0 is full; its oldest step is at most ``window`` - 1 blocks away
    changed = {**obs, "obs": obs["obs"].clone()}
    changed["obs"][0, -2] += 10.0
    out, new = extractor(obs), extractor(changed)
    assert (out[0] - new[0]).abs().max() > 1e-5  # exactly 0 if steps saw only themselves
    torch.testing.assert_close(out[1:], new[1:])
    maps = extractor.attention_maps(obs)
    assert maps[0, -1, :, : K - 1].sum() > 0  # the readout puts weight on past steps


def test_is_stateless():
    extractor = HistoryAttentionExtractor(SPACE, embed_dim=16, n_heads=2)
    a, b = batch(seed=1), batch(seed=2)
    first = extractor(a)
    extractor(b)
    torch.testing.assert_close(extractor(a), first)


def test_attention_maps_are_distributions_over_valid_steps():
    extractor = HistoryAttentionExtractor(SPACE, embed_dim=16, n_heads=2, n_layers=2)
    obs = batch()
    maps = extractor.attention_maps(obs)
    assert maps.shape == (4, 2, 2, K)
    torch.testing.assert_close(maps.sum(-1), torch.ones(4, 2, 2))
    assert torch.all(maps * (1 - obs["valid"][:, None, None]) == 0)


def test_uint8_histories_are_scaled_to_unit_range():
    space = spaces.Dict({"obs": spaces.Box(0, 255, (K, 8), np.uint8), "valid": spaces.Box(0, 1, (K,), np.float32)})
    extractor = HistoryFlattenExtractor(space)
    steps, _ = extractor.step_features({"obs": torch.full((1, K, 8), 255.0), "valid": torch.ones(1, K)})
    assert steps.max() == 1.0


def test_flatten_baseline_ignores_padding():
    extractor = HistoryFlattenExtractor(SPACE, features_dim=8)
    obs = batch()
    changed = {**obs, "obs": torch.where(obs["valid"][..., None] > 0, obs["obs"], torch.randn_like(obs["obs"]))}
    torch.testing.assert_close(extractor(changed), extractor(obs))


@pytest.mark.parametrize(
    "space, match",
    [
        (spaces.Box(0, 1, (K, D)), "observation space Box"),
        (spaces.Dict({"obs": spaces.Box(0, 1, (K, D))}), "expected a Dict with 'obs'"),
        (spaces.Dict({"obs": spaces.Box(0, 1, (K, D)), "valid": spaces.Box(0, 1, (K + 1,))}), "observation key 'obs'"),
        (
            spaces.Dict(
                {"obs": spaces.Box(0, 1, (K, D)), "valid": spaces.Box(0, 1, (K,)), "extra": spaces.Box(0, 1, (K,))}
            ),
            "'extra'",
        ),
    ],
)
def test_unsupported_spaces_name_the_space(space, match):
    with pytest.raises(ValueError, match=match):
        HistoryAttentionExtractor(space)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"attention": "local", "window": K + 1}, f"window={K + 1}"),
        ({"attention": "local"}, "window=None"),
        ({"window": 3}, "window=3 is invalid with attention='global'"),
        ({"attention": "sparse"}, "attention='sparse'"),
        ({"attention": "local-global"}, "attention='local-global'"),
        ({"top_k": 0}, "top_k=0"),
        ({"n_layers": 0}, "n_layers=0"),
        ({"gate": "lstm"}, "gate='lstm'"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HistoryAttentionExtractor(SPACE, **kwargs)


@pytest.mark.parametrize("extractor", [HistoryAttentionExtractor, HistoryFlattenExtractor])
@pytest.mark.parametrize("features_dim", [0, -3, 2.5])
def test_a_bad_features_dim_is_named_before_sb3s_bare_assert(extractor, features_dim):
    with pytest.raises(ValueError, match=rf"^features_dim={features_dim!r} is invalid: must be an integer >= 1$"):
        extractor(SPACE, features_dim=features_dim)


def tmaze(length=4):
    return HistoryObservation(gym.make("rlattn/TMaze-v0", corridor_length=length), length + 1, include_action=True)


SMALL = {"features_dim": 16, "embed_dim": 16, "n_heads": 2, "n_layers": 1}


@pytest.mark.parametrize(
    "algo, kwargs",
    [
        (PPO, {"n_steps": 64, "batch_size": 32, "n_epochs": 2}),
        (A2C, {"n_steps": 8}),
        (DQN, {"buffer_size": 500, "learning_starts": 32, "batch_size": 16, "train_freq": 4}),
    ],
)
def test_short_learn_and_identical_predictions_after_save_load(algo, kwargs, tmp_path):
    policy_kwargs = {
        "features_extractor_class": HistoryAttentionExtractor,
        "features_extractor_kwargs": SMALL,
        "net_arch": [16],
    }
    if algo is not DQN:
        policy_kwargs["ortho_init"] = False
    model = algo("MultiInputPolicy", tmaze(), policy_kwargs=policy_kwargs, seed=0, device="cpu", **kwargs)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(128)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters(), strict=True))
    model.save(tmp_path / "model")
    loaded = algo.load(tmp_path / "model", device="cpu")
    env = tmaze()
    obs, _ = env.reset(seed=0)
    observations = [obs] + [env.step(a)[0] for a in (0, 0, 1, 0)]
    stacked = {key: np.stack([o[key] for o in observations]) for key in obs}
    assert np.array_equal(model.predict(stacked, deterministic=True)[0], loaded.predict(stacked, deterministic=True)[0])
    if algo is not DQN:
        values = lambda m: m.policy.predict_values(m.policy.obs_to_tensor(stacked)[0])  # noqa: E731
        torch.testing.assert_close(values(model), values(loaded))
