"""Block-routed sparse attention against plain references: global attention when every block is
chosen, and dense attention under a routed mask built element by element here otherwise.

Shape letters: B batch, H heads, Q queries, K keys, d per head, S block size.
"""

import math

import numpy as np
import pytest
import torch
from gymnasium import spaces

from rlattn import block_sparse, block_sparse_grad
from rlattn.attention import MultiHeadAttention
from rlattn.block_sparse import block_sparse_attention, compressed_attention, routed_mask
from rlattn.extractors import HistoryAttentionExtractor
from rlattn.rotary import rotary_tables, rotate
from tests.reference import reference_attention, reference_mask
from tests.test_attention import assert_same_forward_and_backward, qkv, random_holes, random_valid, split_heads

torch.manual_seed(0)
TOL = dict(rtol=1e-5, atol=1e-5)


def reference_routing(q, k, valid, top_k, S):
    """Element by element, in float64: the (B, H, Q, K) mask of the routed pattern.

    Blocks of S keys end at the newest key. A query's block is scored by the block's newest query
    against each other block's mean valid key; a valid query may see the valid keys of the top_k best
    blocks and of its own block, a padded query only itself.
    """
    B, H, Q, _ = q.shape
    K = k.shape[2]
    pad = -K % S
    block = [(j + pad) // S for j in range(K)]
    n = block[-1] + 1
    allowed = torch.zeros(B, H, Q, K, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            means = {}
            for j_block in range(n):
                keys = [j for j in range(K) if block[j] == j_block and valid[b, j]]
                if keys:
                    means[j_block] = k[b, h, keys].double().mean(0)
            for qi in range(Q):
                i = K - Q + qi
                newest = (block[i] + 1) * S - 1 - pad  # the newest position of the query's block
                router = q[b, h, newest - (K - Q)].double()
                others = sorted((float(router @ m), j) for j, m in means.items() if j != block[i])
                chosen = {j for _, j in others[max(0, len(others) - top_k) :]} | {block[i]}
                for j in range(K):
                    allowed[b, h, qi, j] = (block[j] in chosen and bool(valid[b, j] and valid[b, i])) or j == i
    return allowed


@pytest.mark.parametrize("K, Q, S", [(37, 37, 8), (40, 40, 8), (37, 1, 8), (37, 11, 8), (9, 9, 16), (12, 12, 1)])
@pytest.mark.parametrize("holes", [False, True])
def test_every_block_chosen_equals_global_attention(K, Q, S, holes):
    q, k, v = qkv(3, 2, Q, K, 8)
    valid = random_holes(3, K) if holes else random_valid(3, K)
    fast = block_sparse_attention(q, k, v, valid, top_k=K, block_size=S)
    slow, _ = reference_attention(q, k, v, reference_mask(valid, "global", n_queries=Q))
    slow = torch.where(valid[:, None, K - Q :, None], slow, v[:, :, K - Q :])  # a padded query sees only itself
    assert_same_forward_and_backward(fast, slow, (q, k, v))


@pytest.mark.parametrize(
    "K, Q, S, top_k", [(40, 40, 8, 1), (37, 37, 8, 2), (37, 37, 4, 3), (50, 13, 8, 2), (23, 1, 4, 2)]
)
@pytest.mark.parametrize("holes", [False, True])
def test_fewer_blocks_equal_dense_attention_under_the_routed_mask(K, Q, S, top_k, holes):
    q, k, v = qkv(2, 2, Q, K, 8)
    valid = random_holes(2, K) if holes else random_valid(2, K)
    allowed = reference_routing(q.detach(), k.detach(), valid, top_k, S)
    assert torch.equal(routed_mask(q, k, valid, top_k, S), allowed)
    fast = block_sparse_attention(q, k, v, valid, top_k, S)
    slow, _ = reference_attention(q, k, v, allowed)
    assert_same_forward_and_backward(fast, slow, (q, k, v))


def test_sparse_really_skips_blocks_and_unchosen_keys_get_no_gradient():
    """What trains the router: the keys, through the attention of the blocks that chose them, only."""
    q, k, v = qkv(1, 1, 8, 64, 8)  # the newest block of 8 queries: its own block and 1 of the 7 others
    valid = torch.ones(1, 64, dtype=torch.bool)
    seen = routed_mask(q, k, valid, 1, 8).any(dim=2)[0, 0]  # (K,): keys some query attends to
    assert seen.sum() == 16
    block_sparse_attention(q, k, v, valid, 1, 8).square().sum().backward()
    assert (k.grad[0, 0, ~seen] == 0).all() and (v.grad[0, 0, ~seen] == 0).all()
    assert (k.grad[0, 0, seen].abs().sum(-1) > 0).all() and (q.grad.abs().sum(-1) > 0).all()


@pytest.mark.parametrize("K, Q, S", [(37, 37, 16), (37, 1, 16), (37, 37, 1), (37, 1, 1), (100, 100, 16)])
@pytest.mark.parametrize("holes", [False, True])
def test_lean_gradient_path_equals_the_plain_path(K, Q, S, holes, monkeypatch):
    """The fused, re-gathering autograd path against the plain gathered one, forward and backward."""
    monkeypatch.setattr(block_sparse_grad, "CHUNK_ELEMENTS", 2 * 3 * S * 8)  # 2 query blocks a chunk
    q, k, v = qkv(3, 2, Q, K, 8)
    valid = random_holes(3, K) if holes else random_valid(3, K)
    valid[0, : K // 2] = False  # fully padded blocks, chosen as filler
    assert block_sparse.lean_applies(q, k, v)
    fast = block_sparse_attention(q, k, v, valid, 2, S)
    monkeypatch.setattr(block_sparse, "lean_applies", lambda *tensors: False)
    slow = block_sparse_attention(q, k, v, valid, 2, S)
    assert_same_forward_and_backward(fast, slow, (q, k, v))


def module_reference(attn, x, valid, n_queries, positions=None):
    """The module's numbers from its own projections, rotated if asked, under the routed reference mask."""
    B, K, E = x.shape
    H = attn.n_heads
    q, k, v = (split_heads(t, H) for t in attn.qkv(x).split(E, dim=-1))
    if positions is not None:
        cos, sin = rotary_tables(positions, E // H, x.dtype)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    q = q[:, :, K - n_queries :]
    allowed = reference_routing(q.detach(), k.detach(), valid, attn.top_k, attn.block_size)
    out, weights = reference_attention(q, k, v, allowed)
    return attn.proj(out.transpose(1, 2).reshape(B, n_queries, E)), weights


@pytest.mark.parametrize("rotary", [False, True])
@pytest.mark.parametrize("n_queries", [30, 7, 1])
def test_module_equals_reference_with_and_without_rotary_positions(rotary, n_queries):
    attn = MultiHeadAttention(16, 2, top_k=1, block_size=4)
    x, valid = torch.randn(3, 30, 16, requires_grad=True), random_valid(3, 30)
    positions = torch.arange(30) if rotary else None
    out, _ = attn(x, valid, n_queries, positions=positions)
    ref, ref_weights = module_reference(attn, x, valid, n_queries, positions)
    assert_same_forward_and_backward(out, ref, (x, *attn.parameters()))
    slow, weights = attn(x, valid, n_queries, need_weights=True, positions=positions)
    torch.testing.assert_close(slow, ref, **TOL)
    torch.testing.assert_close(weights, ref_weights, **TOL)  # zero on unchosen keys


@pytest.mark.parametrize("rotary", [False, True])
def test_single_query_and_newest_rows_equal_the_full_pass(rotary):
    attn = MultiHeadAttention(16, 4, top_k=2, block_size=8)
    x, valid = torch.randn(3, 45, 16), random_valid(3, 45)
    positions = torch.arange(45) if rotary else None
    full, _ = attn(x, valid, positions=positions)
    for n_queries in (1, 5, 20):
        part, _ = attn(x, valid, n_queries, positions=positions)
        torch.testing.assert_close(part, full[:, -n_queries:], **TOL)


def test_padding_content_never_changes_the_output():
    attn = MultiHeadAttention(16, 2, top_k=1, block_size=4)
    x, valid = torch.randn(4, 33, 16), random_valid(4, 33)
    valid[:, :6] = False  # partly padded blocks: their summaries must ignore the padding
    noisy = torch.where(valid[..., None], x, 100 * torch.randn_like(x))
    for positions in (None, torch.arange(33)):
        clean, _ = attn(x, valid, positions=positions)
        dirty, _ = attn(noisy, valid, positions=positions)
        torch.testing.assert_close(clean[valid], dirty[valid], **TOL)


def test_the_extractor_routes_blocks_and_ignores_padding():
    space = spaces.Dict({"obs": spaces.Box(-1, 1, (40, 3), np.float32), "valid": spaces.Box(0, 1, (40,), np.float32)})
    extractor = HistoryAttentionExtractor(space, 16, embed_dim=16, n_heads=2, top_k=1, block_size=4)
    obs = {"obs": torch.randn(2, 40, 3), "valid": random_valid(2, 40).float()}
    noisy = {"obs": obs["obs"] + 50 * (1 - obs["valid"][..., None]), "valid": obs["valid"]}
    torch.testing.assert_close(extractor(obs), extractor(noisy), **TOL)
    assert all(block.attn.block_size == 4 and block.attn.top_k == 1 for block in extractor.blocks)


def reference_compressed(q, k, v, valid, S):
    """Element by element, in float64: each valid query gets what its block's newest query reads from a
    null slot (zeros) and the mean valid key and value of every block but its own that holds a valid
    key; padded queries get zeros."""
    B, H, Q, d = q.shape
    K = k.shape[2]
    pad = -K % S
    block = [(j + pad) // S for j in range(K)]
    rows = []
    for b in range(B):
        for h in range(H):
            for qi in range(Q):
                i = K - Q + qi
                keys, values = [torch.zeros(d, dtype=torch.float64)], [torch.zeros(d, dtype=torch.float64)]
                for j_block in sorted(set(block)):
                    members = [j for j in range(K) if block[j] == j_block and valid[b, j]]
                    if j_block != block[i] and members:
                        keys.append(k[b, h, members].double().mean(0))
                        values.append(v[b, h, members].double().mean(0))
                newest = (block[i] + 1) * S - 1 - pad  # the newest position of the query's block
                router = q[b, h, newest - (K - Q)].double()
                weights = torch.softmax(torch.stack(keys) @ router / math.sqrt(d), 0)
                rows.append(weights @ torch.stack(values) * float(valid[b, i]))
    return torch.stack(rows).view(B, H, Q, d).to(q.dtype)


@pytest.mark.parametrize("K, Q, S", [(37, 37, 8), (40, 40, 8), (37, 1, 8), (37, 11, 4), (20, 20, 16)])
@pytest.mark.parametrize("holes", [False, True])
def test_compressed_branch_equals_attention_over_block_means(K, Q, S, holes):
    q, k, v = qkv(3, 2, Q, K, 8)
    valid = random_holes(3, K) if holes else random_valid(3, K)
    valid[0, : K // 2] = False  # fully padded blocks: no summary
    assert_same_forward_and_backward(
        compressed_attention(q, k, v, valid, S), reference_compressed(q, k, v, valid, S), (q, k, v)
    )


@pytest.mark.parametrize("rotary", [False, True])
@pytest.mark.parametrize("n_queries", [30, 7, 1])
def test_module_with_compression_adds_the_gated_branch_on_every_path(rotary, n_queries):
    attn = MultiHeadAttention(16, 2, top_k=1, block_size=4, compress=True)
    x, valid = torch.randn(3, 30, 16, requires_grad=True), random_valid(3, 30)
    positions = torch.arange(30) if rotary else None
    out, _ = attn(x, valid, n_queries, positions=positions)
    selected, _ = module_reference(attn, x, valid, n_queries, positions)
    B, K, E = x.shape
    q, k, v = (split_heads(t, 2) for t in attn.qkv(x).split(E, dim=-1))
    if positions is not None:
        cos, sin = rotary_tables(positions, E // 2, x.dtype)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    gate = torch.sigmoid(attn.compress_gate(x[:, K - n_queries :])).transpose(1, 2)[..., None]
    branch = gate * reference_compressed(q[:, :, K - n_queries :], k, v, valid, 4)
    ref = selected + attn.proj(branch.transpose(1, 2).reshape(B, n_queries, E)) - attn.proj.bias
    assert_same_forward_and_backward(out, ref, (x, *attn.parameters()))
    slow, weights = attn(x, valid, n_queries, need_weights=True, positions=positions)
    torch.testing.assert_close(slow, out, **TOL)
    full, _ = attn(x, valid, positions=positions)
    torch.testing.assert_close(out, full[:, -n_queries:], **TOL)  # the newest rows route and compress as the whole


def test_compression_trains_the_keys_of_blocks_the_router_did_not_choose():
    """What makes the router learn: without the compressed branch an unchosen block's keys get no gradient."""
    attn = MultiHeadAttention(8, 1, top_k=1, block_size=8, compress=True)
    x, valid = torch.randn(1, 64, 8, requires_grad=True), torch.ones(1, 64, dtype=torch.bool)
    out, _ = attn(x, valid, 8)  # the newest block: its own block and 1 of the 7 others
    out.square().sum().backward()
    assert (x.grad[0].abs().sum(-1) > 0).all()  # every step, chosen or not
    attn.compress_gate = None
    x.grad = None
    attn(x, valid, 8)[0].square().sum().backward()
    assert (x.grad[0].abs().sum(-1) > 0).sum() == 16


def test_padding_content_never_changes_the_compressed_output():
    attn = MultiHeadAttention(16, 2, top_k=1, block_size=4, compress=True)
    x, valid = torch.randn(4, 33, 16), random_valid(4, 33)
    valid[:, :6] = False
    noisy = torch.where(valid[..., None], x, 100 * torch.randn_like(x))
    clean, _ = attn(x, valid)
    dirty, _ = attn(noisy, valid)
    torch.testing.assert_close(clean[valid], dirty[valid], **TOL)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(compress=True), "^compress=True is invalid without top_k"),
        (dict(top_k=2, compress="yes"), "^compress='yes' is invalid: must be True or False$"),
        (dict(top_k=0), "^top_k=0 is invalid: must be an integer >= 1$"),
        (dict(top_k=2, block_size=0), "^block_size=0 is invalid: must be an integer >= 1$"),
        (dict(top_k=2, block_size=2.5), "^block_size=2.5 is invalid"),
        (dict(top_k=2, attention="local", window=4), "^top_k=2 is invalid with attention='local'"),
    ],
)
def test_bad_arguments_give_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as error:
        MultiHeadAttention(16, 4, **kwargs)
    assert "\n" not in str(error.value)


def test_rotary_angles_past_the_table_are_computed_and_the_table_stays_bounded():
    """A task with no time limit takes positions past ``ROTARY_TABLE_MAX``: the same angles, no table for them."""
    from rlattn import rotary

    positions = torch.tensor([[3, rotary.ROTARY_TABLE_MAX + 5], [10_000_000, 0]])
    cos, sin = rotary_tables(positions, 8)
    freq = rotary.ROTARY_BASE ** (-torch.arange(4, dtype=torch.float64) / 4)
    angles = positions.to(torch.float64)[..., None] * freq
    assert torch.allclose(cos, angles.cos().float(), atol=1e-6) and torch.allclose(sin, angles.sin().float(), atol=1e-6)
    small_cos, _ = rotary_tables(torch.tensor([3]), 8)
    assert torch.allclose(small_cos[0], cos[0, 0])  # the table's angles and the computed ones agree
    assert all(len(table) <= rotary.ROTARY_TABLE_MAX for table in rotary._ROTARY_TABLES.values())


@pytest.mark.parametrize("pattern", [{}, {"top_k": 2, "block_size": 4}, {"attention": "local", "window": 3}])
def test_an_empty_batch_gives_an_empty_output(pattern):
    attn = MultiHeadAttention(8, 2, **pattern)
    out, _ = attn(torch.randn(0, 9, 8), torch.ones(0, 9, dtype=torch.bool), n_queries=4)
    assert out.shape == (0, 4, 8)


def test_half_precision_routing_never_prefers_an_empty_block_to_a_valid_one():
    """fp16 scores of a valid block can overflow to -inf: scored in float32 it still outranks empty blocks."""
    from rlattn.block_sparse import route

    newest = torch.full((1, 1, 1, 4), 200.0, dtype=torch.float16)
    summary = torch.tensor([[-200.0] * 4, [0.0] * 4, [-20.0] * 4], dtype=torch.float16)[None, None]
    count = torch.tensor([[4, 0, 4]])  # block 1 is empty (all its keys padding); block 2 is the query's own
    assert route(newest, summary, count, top_k=1)[0, 0, -1].tolist() == [0, 2]


def test_a_given_mask_still_hides_padded_keys():
    torch.manual_seed(0)
    attn = MultiHeadAttention(8, 2)
    valid = torch.tensor([[False, False, True, True, True, True]])
    mask = torch.ones(1, 1, 6, 6, dtype=torch.bool)
    x = torch.randn(1, 6, 8)
    changed = x.clone()
    changed[:, :2] = 100.0  # the padded steps' content
    out, _ = attn(x, valid, mask=mask)
    again, _ = attn(changed, valid, mask=mask)
    torch.testing.assert_close(out[:, 2:], again[:, 2:])
