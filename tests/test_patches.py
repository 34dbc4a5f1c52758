"""Patch-attention extractors: shapes, padding, pixel scaling, what the readout attends to, bad input."""

import numpy as np
import pytest
import torch
from gymnasium import spaces

from rlattn import (
    HistoryAttentionExtractor,
    HistoryFlattenExtractor,
    PatchAttentionExtractor,
    SpatioTemporalAttentionExtractor,
)
from rlattn.history import pixel_scale
from rlattn.overlay import box_mass, overlay
from rlattn.patches import sincos_grid

IMAGE = spaces.Box(0, 255, (3, 32, 32), np.uint8)
K = 5
HISTORY = spaces.Dict(
    {"obs": spaces.Box(0, 255, (K, 3, 32, 32), np.uint8), "valid": spaces.Box(0, 1, (K,), np.float32)}
)


def histories(batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    valid = torch.zeros(batch, K)
    for i, n in enumerate(torch.randint(1, K + 1, (batch,), generator=g).tolist()):
        valid[i, K - n :] = 1
    frames = torch.randint(0, 256, (batch, K, 3, 32, 32), generator=g).float() * valid[..., None, None, None]
    return {"obs": frames, "valid": valid}


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"attention": "neighbourhood"},
        {"attention": "neighbourhood", "radius": 2},
        {"readout": "summary"},
        {"n_layers": 0},
        {"top_k": 1, "block_size": 4},
    ],
)
def test_patch_extractor_shapes_and_maps(kwargs):
    torch.manual_seed(0)
    extractor = PatchAttentionExtractor(IMAGE, features_dim=16, patch_size=8, embed_dim=32, n_heads=4, **kwargs)
    x = torch.rand(3, 3, 32, 32)
    out = extractor(x)
    assert out.shape == (3, 16) and torch.isfinite(out).all()
    maps = extractor.attention_maps(x)
    heads = 4 if kwargs.get("readout") == "summary" else 1
    assert maps.shape == (3, heads, 4, 4)
    # each head's map sums to 1 (the summary token's weight on itself, no place in the frame, is left out:
    # entropies and target masses read these maps as distributions over the patches)
    torch.testing.assert_close(maps.sum(dim=(-1, -2)), torch.ones(3, heads))
    torch.testing.assert_close(extractor(x), out)  # stateless


def test_sparse_patch_attention_routes_row_blocks_and_trains_every_patch():
    """top_k routes blocks of patches (row-major); the compressed branch reaches the blocks not chosen."""
    torch.manual_seed(0)
    sparse = PatchAttentionExtractor(
        IMAGE, features_dim=16, patch_size=4, embed_dim=32, n_heads=4, top_k=1, block_size=8
    )
    attn = sparse.encoder.blocks[0].attn
    assert (attn.top_k, attn.block_size, attn.compress_gate is not None) == (1, 8, True)  # 64 patches, 8 blocks
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    tokens = sparse.encoder.embed(x).flatten(2).transpose(1, 2) + sparse.encoder.position
    y, _ = sparse.encoder.blocks[0](tokens, torch.ones(2, 64, dtype=torch.bool), n_queries=8)  # the last row of patches
    (grad,) = torch.autograd.grad(y.square().sum(), tokens)
    assert (grad[0].abs().sum(-1) > 0).all()  # every patch, through the chosen blocks or the block means


def test_pixels_are_scaled_once():
    assert pixel_scale(IMAGE) == 1.0  # SB3 scales single uint8 images itself
    assert pixel_scale(spaces.Box(0, 255, (2, 3, 8, 8), np.uint8)) == pytest.approx(1 / 255)
    assert pixel_scale(spaces.Box(0, 1, (3, 8, 8), np.float32)) == 1.0
    extractor = SpatioTemporalAttentionExtractor(HISTORY, embed_dim=16, n_heads=2)
    assert extractor.scale == pytest.approx(1 / 255)


def test_sincos_grid_gives_every_patch_its_own_position():
    table = sincos_grid(4, 6, 32)
    assert table.shape == (24, 32)
    assert torch.cdist(table, table).add(torch.eye(24) * 10).min() > 0.1


def test_spatiotemporal_ignores_padding_and_the_rest_of_the_batch():
    torch.manual_seed(0)
    extractor = SpatioTemporalAttentionExtractor(HISTORY, features_dim=8, embed_dim=16, n_heads=2)
    obs = histories()
    out = extractor(obs)
    assert out.shape == (4, 8) and torch.isfinite(out).all()
    noise = torch.rand_like(obs["obs"]) * 255
    changed = {**obs, "obs": torch.where(obs["valid"][..., None, None, None] > 0, obs["obs"], noise)}
    torch.testing.assert_close(extractor(changed), out)
    for i in range(4):
        alone = extractor({key: value[i : i + 1] for key, value in obs.items()})
        torch.testing.assert_close(alone, out[i : i + 1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("frame_readout", ["max", "pool", "summary"])
def test_every_frame_readout_sees_a_lone_item(frame_readout):
    """One lit patch among 15 dark ones changes the frame token, whichever readout makes it."""
    extractor = SpatioTemporalAttentionExtractor(HISTORY, embed_dim=16, n_heads=2, frame_readout=frame_readout)
    frames = torch.zeros(2, 3, 32, 32)
    frames[1, 0, 8:16, 8:16] = 1.0
    patches = extractor.encoder(frames)
    tokens, _ = extractor.frame_readout(patches)
    assert tokens.shape == (2, 16) and not torch.allclose(tokens[0], tokens[1])


def test_spatiotemporal_encodes_only_valid_frames():
    extractor = SpatioTemporalAttentionExtractor(HISTORY, embed_dim=16, n_heads=2)
    seen = []
    extractor.encoder.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    obs = histories(batch=6, seed=3)
    extractor(obs)
    assert seen == [int(obs["valid"].sum())]


def test_spatiotemporal_without_temporal_blocks_reads_the_newest_frame():
    extractor = SpatioTemporalAttentionExtractor(HISTORY, features_dim=8, embed_dim=16, n_heads=2, temporal_layers=0)
    obs = histories()
    changed = {**obs, "obs": obs["obs"].clone()}
    changed["obs"][:, :-1] = 255.0  # every frame but the newest
    torch.testing.assert_close(extractor(changed), extractor(obs))
    assert extractor.temporal_maps(obs).shape == (4, 0, 1, K)


def test_spatiotemporal_reads_older_frames_through_its_temporal_blocks():
    extractor = SpatioTemporalAttentionExtractor(
        HISTORY, features_dim=8, embed_dim=16, n_heads=2, temporal_layers=1, gate="residual"
    )
    obs = histories()
    obs["valid"][0] = 1.0
    changed = {**obs, "obs": obs["obs"].clone()}
    changed["obs"][0, 0] = 255.0 - changed["obs"][0, 0]  # the oldest frame of history 0
    out, new = extractor(obs), extractor(changed)
    assert (out[0] - new[0]).abs().max() > 1e-5  # exactly 0 if frames were read alone
    torch.testing.assert_close(out[1:], new[1:])


def test_spatiotemporal_maps():
    extractor = SpatioTemporalAttentionExtractor(HISTORY, embed_dim=16, n_heads=2, temporal_layers=2)
    obs = histories()
    spatial = extractor.attention_maps(obs)
    assert spatial.shape == (4, 1, 4, 4)
    torch.testing.assert_close(spatial.sum(dim=(-1, -2)), torch.ones(4, 1))
    temporal = extractor.temporal_maps(obs)
    assert temporal.shape == (4, 2, 2, K)
    torch.testing.assert_close(temporal.sum(-1), torch.ones(4, 2, 2))
    assert torch.all(temporal * (1 - obs["valid"][:, None, None]) == 0)


def lit_patches(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """16 x 16 two-channel images of 4 x 4 patches: one target lit in channel 0, five distractors in channel 1."""
    order = torch.rand(batch, 16, generator=generator).argsort(dim=1)[:, :6]  # distinct cells; the first is the target
    grid = torch.zeros(batch, 2, 16)
    grid[torch.arange(batch), 0, order[:, 0]] = 1.0
    grid[torch.arange(batch)[:, None], 1, order[:, 1:]] = 1.0
    images = grid.view(batch, 2, 4, 4).repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    return images + 0.2 * torch.rand(images.shape, generator=generator), order[:, 0]


@pytest.mark.parametrize("n_layers", [0, 1])
def test_a_pointer_learns_to_look_at_the_target(n_layers):
    """Where the target is, among distractors, is the label and the pointer's log-weights are the
    logits: after a short fit (fixed seeds, about 2 s) the readout looks at the target's patch.

    A plain pool does not have to: it can encode the target's place by looking everywhere else,
    and with these seeds it did (0.01-0.02 of its weight on the target, at 100% accuracy).
    """
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    extractor = PatchAttentionExtractor(
        spaces.Box(0, 1, (2, 16, 16), np.float32), 8, patch_size=4, embed_dim=32, n_layers=n_layers, readout="pointer"
    )
    optimizer = torch.optim.Adam(extractor.parameters(), lr=3e-3)
    for _ in range(150):
        x, cells = lit_patches(64, generator)
        loss = torch.nn.functional.cross_entropy(extractor(x)[:, :16], cells)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, cells = lit_patches(256, generator)
    maps = extractor.attention_maps(x)[:, 0].flatten(1)  # (256, 16)
    assert (maps.argmax(-1) == cells).float().mean() > 0.95
    assert maps[torch.arange(256), cells].mean() > 0.9


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda: PatchAttentionExtractor(IMAGE, patch_size=6),
            "patch_size=6 does not divide the 32x32 image: allowed are 1, 2, 4, 8, 16, 32",
        ),
        (
            lambda: PatchAttentionExtractor(spaces.Box(0, 1, (7,)), patch_size=1),
            "is not an image: PatchAttentionExtractor needs",
        ),
        (
            lambda: PatchAttentionExtractor(IMAGE, readout="newest"),
            "readout='newest' is invalid: allowed are pool, pointer, summary",
        ),
        (
            lambda: PatchAttentionExtractor(IMAGE, attention="local"),
            "attention='local' is invalid: allowed are global, neighbourhood",
        ),
        (lambda: PatchAttentionExtractor(IMAGE, radius=2), "radius=2 is invalid with attention='global'"),
        (
            lambda: PatchAttentionExtractor(IMAGE, attention="neighbourhood", top_k=2),
            "top_k=2 is invalid with attention='neighbourhood'",
        ),
        (lambda: PatchAttentionExtractor(IMAGE, embed_dim=30, n_heads=4), "embed_dim=30 is invalid"),
        (lambda: SpatioTemporalAttentionExtractor(IMAGE), "expected a Dict with 'obs'"),
        (
            lambda: SpatioTemporalAttentionExtractor(HISTORY, frame_readout="mean"),
            "frame_readout='mean' is invalid: allowed are max, pool, summary",
        ),
        (lambda: HistoryAttentionExtractor(HISTORY), "are images: HistoryAttentionExtractor embeds vectors"),
        (lambda: HistoryFlattenExtractor(HISTORY), "are images: HistoryFlattenExtractor embeds vectors"),
    ],
)
def test_bad_input_is_one_line_naming_the_value(make, match):
    with pytest.raises(ValueError, match=match) as error:
        make()
    assert len(str(error.value).splitlines()) == 1


def test_box_mass_and_overlay():
    weights = np.zeros((4, 4))
    weights[1, 2] = 0.7
    weights[3, 3] = 0.3
    assert box_mass(weights, (32, 32), (8, 16, 16, 24)) == pytest.approx(0.7)
    assert box_mass(weights, (32, 32), (0, 0, 32, 32)) == pytest.approx(1.0)
    frame = np.zeros((3, 32, 32), dtype=np.uint8)
    image = overlay(frame, weights, (8, 16, 16, 24), scale=2)
    assert image.shape == (64, 2 * 64 + 4, 3) and image.dtype == np.uint8
    assert (image[16, 32:48] == 255).all()  # the target's box outlined on the plain frame
    right = image[:, 68:]
    assert right[2 * 8 + 5, 2 * 16 + 5].sum() > right[5, 5].sum()  # more attention, brighter


def test_pointer_features_lead_and_the_head_starts_as_the_attention():
    """With the pointer readout and identity-initialised action logits, the first policy is the attention."""
    import gymnasium as gym
    from stable_baselines3 import PPO

    import envs  # noqa: F401  (registers the ids)
    from rlattn.patches import init_pointer_head

    kwargs = {
        "features_extractor_class": PatchAttentionExtractor,
        "ortho_init": False,
        "net_arch": {"pi": [], "vf": [16]},
    }
    kwargs["features_extractor_kwargs"] = {"patch_size": 8, "readout": "pointer", "n_layers": 0, "features_dim": 8}
    env = gym.make("rlattn/VisualSearch-v0", image_size=32, grid=4, set_size=3)
    model = PPO("CnnPolicy", env, policy_kwargs=kwargs, n_steps=16, device="cpu", seed=0)
    extractor = model.policy.features_extractor
    assert extractor.features_dim == 16 + 8 and extractor.pointer_size == 16
    with torch.no_grad():
        extractor.readout.pool.query.normal_()  # a non-uniform look
    assert init_pointer_head(model.policy)
    pixels = torch.randint(0, 256, (2, 3, 32, 32)).float()
    distribution = model.policy.get_distribution(pixels).distribution.probs  # SB3 scales to [0, 1] first
    looked = extractor.attention_maps(pixels / 255)[:, 0].flatten(1)
    torch.testing.assert_close(distribution, looked, rtol=1e-4, atol=1e-6)
    hidden = PPO("CnnPolicy", model.env, policy_kwargs={**kwargs, "net_arch": [16]}, n_steps=16, device="cpu")
    assert not init_pointer_head(hidden.policy)  # a hidden layer between features and actions: left alone
