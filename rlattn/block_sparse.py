"""Block-routed sparse attention: each block of queries attends only to its top-k blocks of keys and its own.

Shape letters: B batch, H heads, Q queries, K keys, d per head, S block size, n key blocks,
c query blocks, m blocks attended per query block (``top_k`` + 1).

As MoBA (Lu et al. 2025, https://arxiv.org/abs/2502.13189, section 2): keys are cut into blocks of
S aligned at the newest end (the oldest block is the short one, filled with padding, as a history
is). A block's summary is the mean of its valid keys. Per head, each block of queries scores every
summary with its newest query and keeps the ``top_k`` best other blocks plus its own; those m blocks
are gathered and the queries attend to them with ``scaled_dot_product_attention`` (True = may
attend: the valid keys of the chosen blocks, one mask row shared by a block's queries). The other
blocks are never computed: work and memory Q x m S, linear in K, plus the router's c x n. When a gradient
is wanted, :mod:`rlattn.block_sparse_grad` does the same without keeping the gathered copies.

- **Why the newest query routes its block**: any newest-Q part of a sequence (the readout, Q = 1)
  then routes exactly as the whole sequence, so the readout equals the last row of the full pass.
- **Padding**: a summary averages valid keys only; a block without a valid key ranks below every
  other and is taken only as filler when a row has fewer valid blocks than ``top_k``, where its
  masked keys add nothing. A padded query sees only itself (its output is its value), so no row is
  empty; the dense mask also lets it see valid keys, but no valid query ever reads that output.
- **What trains the router**: the top-k choice is discrete and passes no gradient. On its own
  (MoBA's parameter-free gate) the summaries are means of the same keys, scored by the same queries,
  that the loss trains through the attention inside the chosen blocks; a block never chosen learns
  nothing from its own content (tests/test_block_sparse.py holds that unchosen keys get none).
  :func:`compressed_attention` adds NSA's compressed branch (Yuan et al. 2025,
  https://arxiv.org/abs/2502.11089, sections 3.3.1 and 3.3.2, with mean pooling as the compression):
  every query also attends to every other block's summary (its mean key and mean value), and that
  output enters through a learned gate, so the loss trains the very scores the router ranks (a
  block's newest query against the mean keys) on every block, chosen or not. Its cost is Q x n
  (n = K / S blocks), a 1/S share of dense attention's, run through the fused kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rlattn.block_sparse_grad import gather_blocks, gathered_attention, lean_applies


def key_blocks(k: Tensor, valid: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """(B, H, K, d), valid (B, K) -> keys (B, H, n, S, d) and validity (B, n, S), padded at the old end."""
    B, H, K, d = k.shape
    n = -(-K // block_size)
    pad = n * block_size - K
    kb = _pad_old(k, pad).reshape(B, H, n, block_size, d)
    return kb, F.pad(valid, (pad, 0), value=False).view(B, n, block_size)


def _pad_old(x: Tensor, pad: int) -> Tensor:
    """(B, H, K, d) -> (B, H, pad + K, d), zeros at the old end; no copy when there is nothing to pad."""
    return F.pad(x, (0, 0, pad, 0)) if pad else x


def route(q: Tensor, kb: Tensor, valid_b: Tensor, top_k: int) -> Tensor:
    """Chosen key blocks per query block: q (B, H, Q, d), keys (B, H, n, S, d), valid (B, n, S) -> (B, H, c, m).

    The queries are the newest Q positions; a query block's own block comes last. No gradient.
    """
    B, H, Q, d = q.shape
    n, S = kb.shape[2], kb.shape[3]
    c = -(-Q // S)
    with torch.no_grad():
        count = valid_b.sum(-1)  # (B, n)
        summary = torch.einsum("bhnsd,bns->bhnd", kb, valid_b.to(kb.dtype)) / count.clamp(min=1)[:, None, :, None]
        newest = q.index_select(2, Q - 1 - S * torch.arange(c - 1, -1, -1, device=q.device))  # (B, H, c, d)
        scores = newest @ summary.transpose(-1, -2)  # (B, H, c, n)
        scores = scores.masked_fill((count == 0)[:, None, None, :], torch.finfo(scores.dtype).min)
        own = torch.arange(n - c, n, device=q.device)  # (c,)
        is_own = own[:, None] == torch.arange(n, device=q.device)  # (c, n)
        others = scores.masked_fill(is_own, float("-inf")).topk(min(top_k, n - 1), dim=-1).indices
    return torch.cat([others, own.expand(B, H, c)[..., None]], dim=-1)


def block_sparse_attention(q: Tensor, k: Tensor, v: Tensor, valid: Tensor, top_k: int, block_size: int) -> Tensor:
    """Routed attention: (B, H, Q, d), (B, H, K, d) x2, valid (B, K) -> (B, H, Q, d) for the newest Q keys."""
    B, H, Q, d = q.shape
    K, S = k.shape[2], block_size
    kb, valid_b = key_blocks(k, valid, S)
    n = kb.shape[2]
    chosen = route(q, kb, valid_b, top_k)  # (B, H, c, m)
    c, m = chosen.shape[2:]
    rows = Q if c == 1 else S  # a lone partial block (the readout) is not padded to S queries
    extra = c * rows - Q  # queries padded at the old end to whole blocks
    qb = _pad_old(q, extra).reshape(B * H * c, rows, d)
    flat = (torch.arange(B * H, device=q.device).view(B, H, 1, 1) * n + chosen).view(B * H * c, m)
    valid_k = valid_b[:, None].expand(B, H, n, S).reshape(B * H * n, S)
    vb = _pad_old(v, n * S - K).reshape(B * H * n, S, d)
    keys = chosen_keys(valid_k, flat)  # (B H c, m S)
    # plain path when there is no backward pass to save memory for, or no fused CPU op to run
    attend = gathered_attention if lean_applies(q, k, v) else _gathered_attention
    out = attend(qb, kb.reshape(B * H * n, S, d), vb, keys, flat)  # (B H c, rows, d)
    out = out.view(B, H, c * rows, d)[:, :, extra:]
    return torch.where(valid[:, None, K - Q :, None], out, v[:, :, K - Q :])  # a padded query sees only itself


def chosen_keys(valid: Tensor, flat: Tensor) -> Tensor:
    """Which gathered keys a query block may see: valid (N, S), index (P, m) -> (P, m S).

    The queries of a block share one mask row (an R-fold smaller mask, and a faster kernel): the valid
    keys, or the whole own (last) block if it has none, so no row is empty.
    """
    S = valid.shape[1]
    m = flat.shape[1]
    keys = valid.index_select(0, flat.flatten()).view(-1, m * S)
    own = torch.arange(m * S, device=valid.device) >= (m - 1) * S  # (m S,)
    return keys | (~keys[:, -S:].any(-1, keepdim=True) & own)


def _gathered_attention(q: Tensor, k: Tensor, v: Tensor, keys: Tensor, flat: Tensor) -> Tensor:
    """Plain path: q (P, R, d) against m gathered blocks, index (P, m) into k, v (N, S, d), keys (P, m S) -> (P, R, d).

    Rows of padded queries are the caller's to replace.
    """
    ks, vs = gather_blocks(k, v, flat)  # (P, 1, m S, d)
    return F.scaled_dot_product_attention(q[:, None], ks, vs, attn_mask=keys[:, None, None])[:, 0]


def routed_mask(q: Tensor, k: Tensor, valid: Tensor, top_k: int, block_size: int) -> Tensor:
    """The dense (B, H, Q, K) mask of the routed pattern, for the explicit path (weights, zero where not chosen)."""
    B, H, Q, d = q.shape
    K = k.shape[2]
    kb, valid_b = key_blocks(k, valid, block_size)
    n = kb.shape[2]
    chosen = route(q, kb, valid_b, top_k)  # (B, H, c, m)
    c = chosen.shape[2]
    picked = torch.zeros(B, H, c, n, dtype=torch.bool, device=q.device).scatter_(-1, chosen, True)
    keys = picked.repeat_interleave(block_size, dim=-1)[..., n * block_size - K :]  # (B, H, c, K)
    query_block = (torch.arange(K - Q, K, device=q.device) + n * block_size - K) // block_size - (n - c)  # (Q,)
    own = torch.arange(K - Q, K, device=q.device)[:, None] == torch.arange(K, device=q.device)  # (Q, K)
    seen = keys.index_select(2, query_block) & valid[:, None, None, :] & valid[:, None, K - Q :, None]
    return seen | own


def compressed_attention(q: Tensor, k: Tensor, v: Tensor, valid: Tensor, block_size: int) -> Tensor:
    """NSA's compressed branch: (B, H, Q, d), (B, H, K, d) x2, valid (B, K) -> (B, H, Q, d) for the newest Q keys.

    Each query attends to the summaries (mean valid key, mean valid value) of every block but its own
    (the selected branch reads that one whole) and to a null slot (key and value zero), so a query
    with no other valid block gets zeros and no row is empty. Padded queries get zeros. Gradients
    reach every valid key and value through the means.
    """
    B, H, Q, d = q.shape
    K, S = k.shape[2], block_size
    kb, valid_b = key_blocks(k, valid, S)  # (B, H, n, S, d), (B, n, S)
    vb = _pad_old(v, kb.shape[2] * S - K).reshape(kb.shape)
    n = kb.shape[2]
    count = valid_b.sum(-1)  # (B, n)
    share = valid_b.to(q.dtype) / count.clamp(min=1)[..., None]  # (B, n, S)
    null = q.new_zeros(B, H, 1, d)
    keys = torch.cat([null, torch.einsum("bhnsd,bns->bhnd", kb, share)], dim=2)  # (B, H, 1 + n, d)
    values = torch.cat([null, torch.einsum("bhnsd,bns->bhnd", vb, share)], dim=2)
    own = (torch.arange(K - Q, K, device=q.device) + n * S - K) // S  # (Q,) each query's block
    seen = (own[:, None] != torch.arange(n, device=q.device)) & (count > 0)[:, None, :]  # (B, Q, n)
    allowed = F.pad(seen, (1, 0), value=True)[:, None]  # (B, 1, Q, 1 + n)
    bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill_(~allowed, float("-inf"))
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias)  # additive: the fused CPU kernel, 2x faster
    return out * valid[:, None, K - Q :, None]
