"""The attention primitive and blocks against the plain references in tests/reference.py.

Every computation (dense mask, chunked local, tiled neighbourhood, explicit) must give the
reference's numbers, forward and backward; block-routed sparse attention is in test_block_sparse.py.
"""

import pytest
import torch

from rlattn.attention import (
    MultiHeadAttention,
    attention_mask,
    chunked_local_attention,
    grid_mask,
    structure_mask,
    tiled_neighbourhood_attention,
)
from rlattn.blocks import GRUGate, TransformerBlock
from tests.reference import reference_attention, reference_grid_mask, reference_mask

torch.manual_seed(0)
TOL = dict(rtol=1e-5, atol=1e-5)


def random_valid(B, K):
    """Valid suffixes of random length (newest step always valid), as the wrapper makes them."""
    lengths = torch.randint(1, K + 1, (B,))
    return torch.arange(K)[None, :] >= (K - lengths)[:, None]


def random_holes(B, N, p=0.3):
    """Any pattern at all: each key invalid with probability p."""
    return torch.rand(B, N) > p


def qkv(B, H, Q, K, d, requires_grad=True):
    tensors = torch.randn(B, H, Q, d), torch.randn(B, H, K, d), torch.randn(B, H, K, d)
    return [t.requires_grad_(requires_grad) for t in tensors]


def assert_same_forward_and_backward(fast, slow, inputs):
    """Outputs and the gradients of a random projection of them, w.r.t. every input, agree."""
    torch.testing.assert_close(fast, slow, **TOL)
    probe = torch.randn_like(slow)
    grads_fast = torch.autograd.grad((fast * probe).sum(), inputs)
    grads_slow = torch.autograd.grad((slow * probe).sum(), inputs)
    for a, b in zip(grads_fast, grads_slow, strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("kind, window", [("global", None), ("local", 1), ("local", 3), ("local", 9)])
@pytest.mark.parametrize("n_queries", [None, 1, 4])
def test_masks_match_the_elementwise_reference(kind, window, n_queries):
    valid = random_valid(5, 9)
    mask = attention_mask(structure_mask(9, kind, window, n_queries), valid)
    assert torch.equal(mask, reference_mask(valid, kind, window, n_queries))


def test_grid_mask_matches_the_elementwise_reference():
    valid = random_holes(3, 4 * 5)
    assert torch.equal(attention_mask(grid_mask(4, 5, 1), valid), reference_grid_mask(valid, 4, 5, 1))


@pytest.mark.parametrize(
    "K, Q, window, chunk",
    [
        (40, 40, 5, 8),  # queries fill whole blocks
        (37, 37, 5, 8),  # a partial block at the front
        (37, 37, 1, 4),  # window 1: each step sees itself only
        (37, 37, 37, 8),  # window as long as the sequence
        (50, 11, 7, 4),  # only the newest 11 steps query
        (9, 9, 4, 32),  # one block larger than the sequence
        (64, 64, 16, 16),
    ],
)
@pytest.mark.parametrize("holes", [False, True])
def test_chunked_local_equals_reference_forward_and_backward(K, Q, window, chunk, holes):
    B, H, d = 3, 2, 8
    q, k, v = qkv(B, H, Q, K, d)
    valid = random_holes(B, K) if holes else random_valid(B, K)
    fast = chunked_local_attention(q, k, v, valid, window, chunk)
    slow, _ = reference_attention(q, k, v, reference_mask(valid, "local", window, Q))
    assert_same_forward_and_backward(fast, slow, (q, k, v))


@pytest.mark.parametrize(
    "rows, cols, radius, tile",
    [(6, 6, 1, 3), (5, 7, 1, 2), (8, 8, 2, 4), (4, 4, 0, 2), (3, 5, 4, 4), (7, 3, 1, 8)],
)
def test_tiled_neighbourhood_equals_reference_forward_and_backward(rows, cols, radius, tile):
    B, H, d, N = 2, 2, 8, rows * cols
    q, k, v = qkv(B, H, N, N, d)
    valid = random_holes(B, N)
    fast = tiled_neighbourhood_attention(q, k, v, valid, (rows, cols), radius, tile)
    slow, _ = reference_attention(q, k, v, reference_grid_mask(valid, rows, cols, radius))
    assert_same_forward_and_backward(fast, slow, (q, k, v))


def split_heads(t, H):
    B, K, E = t.shape
    return t.view(B, K, H, E // H).transpose(1, 2)


@pytest.mark.parametrize(
    "pattern, K, n_queries",
    [
        (dict(attention="global"), 10, None),
        (dict(attention="global"), 10, 1),
        (dict(attention="local", window=4), 10, None),
        (dict(attention="local", window=4, chunk=3), 10, None),  # forced chunked
        (dict(attention="local", window=4, chunk=0), 10, 2),  # forced dense
        (dict(attention="local", window=8), 300, None),  # chunked chosen automatically
        (dict(attention="local", window=8), 300, 1),
    ],
)
def test_multihead_attention_equals_reference(pattern, K, n_queries):
    B, E, H = 3, 16, 4
    attn = MultiHeadAttention(E, H, **pattern)
    x = torch.randn(B, K, E, requires_grad=True)
    valid = random_valid(B, K)
    out, none = attn(x, valid, n_queries)
    assert none is None
    q, k, v = attn.qkv(x).split(E, dim=-1)
    Q = K if n_queries is None else n_queries
    allowed = reference_mask(valid, pattern["attention"], pattern.get("window"), Q)
    ref, ref_weights = reference_attention(split_heads(q[:, K - Q :], H), split_heads(k, H), split_heads(v, H), allowed)
    ref = attn.proj(ref.transpose(1, 2).reshape(B, Q, E))
    assert_same_forward_and_backward(out, ref, (x, *attn.parameters()))
    slow, weights = attn(x, valid, n_queries, need_weights=True)
    torch.testing.assert_close(slow, ref, **TOL)
    torch.testing.assert_close(weights, ref_weights, **TOL)  # over all K keys, even where local skips some


@pytest.mark.parametrize(
    "pattern, K, n_queries",
    [
        (dict(attention="global"), 10, None),
        (dict(attention="global"), 10, 1),  # the folded single query
        (dict(attention="local", window=4, chunk=3), 10, None),
        (dict(attention="local", window=4, chunk=0), 10, 2),
        (dict(attention="local", window=8), 300, None),
        (dict(attention="global", top_k=2, block_size=4), 30, None),  # every path scales by the same n
        (dict(attention="global", top_k=30, block_size=4), 30, 1),
    ],
)
def test_length_scaled_attention_equals_reference(pattern, K, n_queries):
    """Each head's logits times s_h log n, n the keys the query may see: every path gives the same numbers."""
    B, E, H = 3, 16, 4
    attn = MultiHeadAttention(E, H, length_scale=True, **pattern)
    with torch.no_grad():
        attn.length_scale.copy_(torch.rand(H) + 0.2)
    x, valid = torch.randn(B, K, E, requires_grad=True), random_valid(B, K)
    out, _ = attn(x, valid, n_queries)
    q, k, v = attn.qkv(x).split(E, dim=-1)
    Q = K if n_queries is None else n_queries
    if "top_k" in pattern and pattern["top_k"] < K:
        from tests.test_block_sparse import reference_routing

        q_, k_ = split_heads(q[:, K - Q :], H), split_heads(k, H)
        allowed = reference_routing(q_.detach(), k_.detach(), valid, pattern["top_k"], pattern["block_size"])
        seen = reference_mask(valid, "global", n_queries=Q)  # n counts the global range, not the routed blocks
    else:
        allowed = seen = reference_mask(valid, pattern["attention"], pattern.get("window"), Q)
    n = (seen & valid[:, None, None, :]).sum(-1, keepdim=True).float().clamp(min=1)  # (B, 1, Q, 1): valid keys in range
    scaled = split_heads(q[:, K - Q :], H) * attn.length_scale[:, None, None] * n.log()
    ref, ref_weights = reference_attention(scaled, split_heads(k, H), split_heads(v, H), allowed)
    ref = attn.proj(ref.transpose(1, 2).reshape(B, Q, E))
    assert_same_forward_and_backward(out, ref, (x, *attn.parameters()))
    slow, weights = attn(x, valid, n_queries, need_weights=True)
    torch.testing.assert_close(slow, ref, **TOL)
    torch.testing.assert_close(weights, ref_weights, **TOL)


def test_length_scaled_step_equals_the_masked_sequence():
    """The cached single step (episodic rollouts) scales by the valid slots, as a mask row does."""
    B, E, H, W = 3, 16, 4, 9
    attn = MultiHeadAttention(E, H, length_scale=True)
    with torch.no_grad():
        attn.length_scale.copy_(torch.rand(H) + 0.2)
    x, valid = torch.randn(B, W, E), random_valid(B, W)
    mask = attention_mask(structure_mask(W, n_queries=1), valid)  # the newest step's row
    ref, _ = attn(x, valid, 1, mask=mask)
    keys, values = attn.keys_values(x, None)
    slot = torch.full((B,), W - 1)
    out, _ = attn.step(x[:, -1], None, keys.clone(), values.clone(), slot, valid)
    torch.testing.assert_close(out, ref[:, 0], **TOL)


def test_length_scaling_keeps_one_key_s_weight_as_the_sequence_grows():
    """Plain softmax: a key whose score leads by a fixed gap loses weight as 1/n; scaled, it holds it."""
    E, gap = 8, 4.0
    masses = {}
    for scaled in (False, True):
        attn = MultiHeadAttention(E, 1, length_scale=scaled)
        with torch.no_grad():
            attn.qkv.bias.zero_()
            attn.qkv.weight.copy_(torch.cat([torch.eye(E) * (gap * E**0.5) ** 0.5] * 2 + [torch.eye(E)]))
        for K in (16, 1024):
            x = torch.zeros(1, K, E)
            x[0, 0, 0] = x[0, -1, 0] = 1.0  # the oldest key (and the query's own) score gap, the rest 0
            with torch.no_grad():
                _, weights = attn(x, torch.ones(1, K, dtype=torch.bool), 1, need_weights=True)
            masses[scaled, K] = weights[0, 0, 0, 0].item()
    assert masses[False, 1024] < masses[False, 16] / 5  # 0.048 against 0.44
    assert masses[True, 1024] >= masses[True, 16]  # 0.49 against 0.44 (s = 1 / log 16: unscaled at 16)


def test_neighbourhood_module_picks_tiles_for_large_grids_and_matches_reference():
    B, E, H, rows, cols = 2, 16, 2, 16, 16
    attn = MultiHeadAttention(E, H, attention="neighbourhood", grid=(rows, cols), radius=1)
    assert attn._chunked(rows * cols, rows * cols)
    x, valid = torch.randn(B, rows * cols, E, requires_grad=True), random_holes(B, rows * cols)
    out, _ = attn(x, valid)
    q, k, v = (split_heads(t, H) for t in attn.qkv(x).split(E, dim=-1))
    ref, _ = reference_attention(q, k, v, reference_grid_mask(valid, rows, cols, 1))
    ref = attn.proj(ref.transpose(1, 2).reshape(B, rows * cols, E))
    assert_same_forward_and_backward(out, ref, (x, *attn.parameters()))


def test_explicit_weights_rows_sum_to_one_and_skip_masked_keys():
    attn = MultiHeadAttention(16, 2)
    x, valid = torch.randn(3, 7, 16), random_valid(3, 7)
    _, weights = attn(x, valid, need_weights=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
    mask = attention_mask(structure_mask(7), valid)
    assert torch.all(weights.masked_select(~mask.expand_as(weights)) == 0)


@pytest.mark.parametrize("gate", ["residual", "gru"])
@pytest.mark.parametrize(
    "pattern", [dict(attention="local", window=3), dict(attention="global", top_k=1, block_size=2)]
)
def test_newest_query_only_equals_last_row_of_the_full_block(gate, pattern):
    block = TransformerBlock(16, 4, gate=gate, **pattern)
    x, valid = torch.randn(3, 8, 16), random_valid(3, 8)
    full, _ = block(x, valid)
    last, _ = block(x, valid, n_queries=1)
    torch.testing.assert_close(last[:, 0], full[:, -1], **TOL)


def test_only_the_newest_step_valid_is_finite_and_ignores_padding():
    """All history but the newest step is padding: output equals that of the one-step history."""
    block = TransformerBlock(16, 4, gate="gru")
    x = torch.randn(2, 6, 16)
    valid = torch.zeros(2, 6, dtype=torch.bool)
    valid[:, -1] = True
    padded, _ = block(x, valid)
    alone, _ = block(x[:, -1:], valid[:, -1:])
    assert torch.isfinite(padded).all()
    torch.testing.assert_close(padded[:, -1], alone[:, 0], **TOL)


def test_gru_gate_starts_near_the_identity():
    gate = GRUGate(32)
    x, y = torch.randn(64, 32), torch.randn(64, 32)
    moved = (gate(x, y) - x).norm() / x.norm()
    assert moved < 0.3
    with torch.no_grad():
        gate.gate_bias.fill_(-10.0)
    assert (gate(x, y) - x).norm() / x.norm() > 0.5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(attention="local", window=0), "window=0"),
        (dict(attention="local"), "window=None"),
        (dict(attention="banded"), "attention='banded'"),
        (dict(attention="neighbourhood", grid=(4, 0), radius=1), r"grid=\(4, 0\)"),
        (dict(attention="neighbourhood", grid=(4, 4), radius=-1), "radius=-1"),
        (dict(top_k=0), "top_k=0"),
        (dict(top_k=1, block_size=0), "block_size=0"),
        (dict(attention="local", window=3, top_k=1), "top_k=1 is invalid with attention='local'"),
        (dict(chunk=-1), "chunk=-1"),
        (dict(length_scale=1), "^length_scale=1 is invalid: must be True or False$"),
        (dict(attention="neighbourhood", grid=(2, 2), radius=1, length_scale=True), "length_scale=True is invalid"),
    ],
)
def test_bad_patterns_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiHeadAttention(16, 4, **kwargs)


def test_heads_must_divide_embedding():
    with pytest.raises(ValueError, match="embed_dim=10"):
        MultiHeadAttention(10, 4)


def test_grid_must_match_the_token_count():
    attn = MultiHeadAttention(16, 4, attention="neighbourhood", grid=(3, 3), radius=1)
    with pytest.raises(ValueError, match="10 tokens"):
        attn(torch.randn(1, 10, 16), torch.ones(1, 10, dtype=torch.bool))
