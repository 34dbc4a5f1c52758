"""The attention primitive and blocks against the plain references in tests/reference.py."""

import pytest
import torch

from rlattn.attention import MultiHeadAttention, attention_mask, structure_mask
from rlattn.blocks import GRUGate, TransformerBlock
from tests.reference import reference_attention, reference_mask

torch.manual_seed(0)


def random_valid(B, K):
    """Valid suffixes of random length (newest step always valid), as the wrapper makes them."""
    lengths = torch.randint(1, K + 1, (B,))
    return torch.arange(K)[None, :] >= (K - lengths)[:, None]


@pytest.mark.parametrize("kind, window", [("global", None), ("local", 1), ("local", 3), ("local", 9)])
def test_masks_match_the_elementwise_reference(kind, window):
    valid = random_valid(5, 9)
    mask = attention_mask(structure_mask(9, kind, window), valid)
    assert torch.equal(mask, reference_mask(valid, kind, window))


@pytest.mark.parametrize("kind, window", [("global", None), ("local", 4)])
def test_multihead_attention_equals_explicit_softmax(kind, window):
    B, K, E, H = 4, 10, 16, 4
    attn = MultiHeadAttention(E, H)
    x = torch.randn(B, K, E)
    valid = random_valid(B, K)
    mask = attention_mask(structure_mask(K, kind, window), valid)
    out, _ = attn(x, mask)
    q, k, v = attn.qkv(x).split(E, dim=-1)
    split = lambda t: t.view(B, K, H, E // H).transpose(1, 2)  # noqa: E731
    ref, _ = reference_attention(split(q), split(k), split(v), reference_mask(valid, kind, window))
    ref = attn.proj(ref.transpose(1, 2).reshape(B, K, E))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_explicit_weights_path_gives_the_same_output_and_rows_sum_to_one():
    attn = MultiHeadAttention(16, 2)
    x, valid = torch.randn(3, 7, 16), random_valid(3, 7)
    mask = attention_mask(structure_mask(7), valid)
    fast, none = attn(x, mask)
    slow, weights = attn(x, mask, need_weights=True)
    assert none is None
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
    assert torch.all(weights.masked_select(~mask.expand_as(weights)) == 0)


@pytest.mark.parametrize("gate", ["residual", "gru"])
def test_newest_query_only_equals_last_row_of_the_full_block(gate):
    block = TransformerBlock(16, 4, gate=gate)
    x, valid = torch.randn(3, 8, 16), random_valid(3, 8)
    mask = attention_mask(structure_mask(8, "local", 3), valid)
    full, _ = block(x, mask)
    last, _ = block(x, mask, n_queries=1)
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-5)


def test_only_the_newest_step_valid_is_finite_and_ignores_padding():
    """All history but the newest step is padding: output equals that of the one-step history."""
    block = TransformerBlock(16, 4, gate="gru")
    x = torch.randn(2, 6, 16)
    valid = torch.zeros(2, 6, dtype=torch.bool)
    valid[:, -1] = True
    padded, _ = block(x, attention_mask(structure_mask(6), valid))
    alone, _ = block(x[:, -1:], attention_mask(structure_mask(1), valid[:, -1:]))
    assert torch.isfinite(padded).all()
    torch.testing.assert_close(padded[:, -1], alone[:, 0], rtol=1e-5, atol=1e-5)


def test_gru_gate_starts_near_the_identity():
    gate = GRUGate(32)
    x, y = torch.randn(64, 32), torch.randn(64, 32)
    moved = (gate(x, y) - x).norm() / x.norm()
    assert moved < 0.3
    with torch.no_grad():
        gate.gate_bias.fill_(-10.0)
    assert (gate(x, y) - x).norm() / x.norm() > 0.5


@pytest.mark.parametrize(
    "args, match",
    [
        ((4, "local", 0), "window=0"),
        ((4, "local", None), "window=None"),
        ((4, "banded", None), "attention='banded'"),
    ],
)
def test_bad_structures_name_the_value(args, match):
    with pytest.raises(ValueError, match=match):
        structure_mask(*args)


def test_heads_must_divide_embedding():
    with pytest.raises(ValueError, match="embed_dim=10"):
        MultiHeadAttention(10, 4)
