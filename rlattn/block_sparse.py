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
  https://arxiv.org/abs/2502.11089, sections 3.3.1 and 3.3.2, with mean pooling as the compression),
  read with the router's own scores: each block's newest query attends to every other block's
  summary (its mean key and mean value), and the block's queries add that output through a learned
  gate. So the loss trains the very scores the router ranks on every block, chosen or not. Its cost
  is c x n (query blocks x key blocks): K^2 / S^2, 4,096 scores per head at K = 4096, S = 64.
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


def block_means(xb: Tensor, valid_b: Tensor) -> tuple[Tensor, Tensor]:
    """Mean valid key (or value) per block: (B, H, n, S, d), valid (B, n, S) -> (B, H, n, d), and counts (B, n)."""
    count = valid_b.sum(-1)
    share = valid_b.to(xb.dtype) / count.clamp(min=1)[..., None]  # (B, n, S)
    return torch.einsum("bhnsd,bns->bhnd", xb, share), count


def newest_queries(q: Tensor, S: int) -> Tensor:
    """Each query block's newest query, oldest block first: (B, H, Q, d) -> (B, H, c, d)."""
    Q = q.shape[2]
    c = -(-Q // S)
    return q.index_select(2, Q - 1 - S * torch.arange(c - 1, -1, -1, device=q.device))


def route(newest: Tensor, summary: Tensor, count: Tensor, top_k: int) -> Tensor:
    """Chosen key blocks per query block: newest queries (B, H, c, d), summaries (B, H, n, d), counts (B, n) -> (B, H, c, m).

    The query blocks are the newest c of the n; a query block's own block comes last. No gradient.
    """
    B, H, c, _ = newest.shape
    n = summary.shape[2]
    with torch.no_grad():
        # scored in float32: in half precision a valid block's score may overflow to -inf and rank below empty ones
        scores = newest.float() @ summary.float().transpose(-1, -2)  # (B, H, c, n)
        scores = scores.masked_fill((count == 0)[:, None, None, :], torch.finfo(scores.dtype).min)
        own = torch.arange(n - c, n, device=newest.device)  # (c,)
        is_own = own[:, None] == torch.arange(n, device=newest.device)  # (c, n)
        others = scores.masked_fill(is_own, float("-inf")).topk(min(top_k, n - 1), dim=-1).indices
    return torch.cat([others, own.expand(B, H, c)[..., None]], dim=-1)


def block_sparse_attention(
    q: Tensor, k: Tensor, v: Tensor, valid: Tensor, top_k: int, block_size: int, gate: Tensor | None = None
) -> Tensor:
    """Routed attention: (B, H, Q, d), (B, H, K, d) x2, valid (B, K) -> (B, H, Q, d) for the newest Q keys.

    ``gate`` (B, H, Q, 1): add ``gate`` times the compressed branch (:func:`compressed_attention`),
    sharing the router's block means and queries.
    """
    B, H, Q, d = q.shape
    K, S = k.shape[2], block_size
    kb, valid_b = key_blocks(k, valid, S)
    n = kb.shape[2]
    newest = newest_queries(q, S)  # (B, H, c, d)
    summary, count = block_means(kb, valid_b) if gate is not None else _no_grad_means(kb, valid_b)
    chosen = route(newest, summary, count, top_k)  # (B, H, c, m)
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
    if gate is not None:
        means, _ = block_means(vb.view(B, H, n, S, d), valid_b)
        out = out + gate * _read_means(newest, summary, means, count, Q, S)  # padded rows are replaced below
    return torch.where(valid[:, None, K - Q :, None], out, v[:, :, K - Q :])  # a padded query sees only itself


def _no_grad_means(kb: Tensor, valid_b: Tensor) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        return block_means(kb, valid_b)


def _read_means(newest: Tensor, keys: Tensor, values: Tensor, count: Tensor, Q: int, S: int) -> Tensor:
    """Each query block's newest query (B, H, c, d) against a null slot and the other blocks' means
    (B, H, n, d) x2, shared by the block's Q queries: -> (B, H, Q, d)."""
    B, H, c, d = newest.shape
    n = keys.shape[2]
    null = newest.new_zeros(B, H, 1, d)
    own = torch.arange(n - c, n, device=newest.device)  # (c,)
    seen = (own[:, None] != torch.arange(n, device=newest.device)) & (count > 0)[:, None, :]  # (B, c, n)
    allowed = F.pad(seen, (1, 0), value=True)[:, None]  # (B, 1, c, 1 + n)
    read = F.scaled_dot_product_attention(
        newest, torch.cat([null, keys], dim=2), torch.cat([null, values], dim=2), attn_mask=allowed
    )  # (B, H, c, d)
    block_of = c - 1 - (Q - 1 - torch.arange(Q, device=newest.device)) // S  # (Q,) each query's block among the c
    return read.index_select(2, block_of)


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
    chosen = route(newest_queries(q, block_size), *_no_grad_means(kb, valid_b), top_k)  # (B, H, c, m)
    c = chosen.shape[2]
    picked = torch.zeros(B, H, c, n, dtype=torch.bool, device=q.device).scatter_(-1, chosen, True)
    keys = picked.repeat_interleave(block_size, dim=-1)[..., n * block_size - K :]  # (B, H, c, K)
    query_block = (torch.arange(K - Q, K, device=q.device) + n * block_size - K) // block_size - (n - c)  # (Q,)
    own = torch.arange(K - Q, K, device=q.device)[:, None] == torch.arange(K, device=q.device)  # (Q, K)
    seen = keys.index_select(2, query_block) & valid[:, None, None, :] & valid[:, None, K - Q :, None]
    return seen | own


def compressed_attention(q: Tensor, k: Tensor, v: Tensor, valid: Tensor, block_size: int) -> Tensor:
    """NSA's compressed branch, read by the router's queries: (B, H, Q, d), (B, H, K, d) x2, valid (B, K) -> (B, H, Q, d).

    Each block of queries, through its newest query (the one that routes it: see :func:`route`),
    attends to the summaries (mean valid key, mean valid value) of every block but its own (the
    selected branch reads that one whole) and to a null slot (key and value zero, so a block with no
    other valid block gets zeros and no row is empty); the block's queries share the result. The
    softmax is over the router's own scores, so the loss trains them on every block. Padded queries
    get zeros. Work c x n (query blocks x key blocks), small beside the selected branch's.
    :func:`block_sparse_attention` with a ``gate`` adds the same, sharing the router's work.
    """
    B, H, Q, d = q.shape
    K, S = k.shape[2], block_size
    kb, valid_b = key_blocks(k, valid, S)  # (B, H, n, S, d), (B, n, S)
    keys, count = block_means(kb, valid_b)
    values, _ = block_means(_pad_old(v, kb.shape[2] * S - K).reshape(kb.shape), valid_b)
    return _read_means(newest_queries(q, S), keys, values, count, Q, S) * valid[:, None, K - Q :, None]
