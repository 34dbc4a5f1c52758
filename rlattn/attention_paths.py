"""The computations behind :class:`~rlattn.attention.MultiHeadAttention`, each giving the numbers of
one dense masked softmax (tests hold this, forward and backward): explicit (with weights),
the single readout query with its projections folded in, and blocked local and neighbourhood
attention whose cost grows linearly with the sequence length.

Shape letters: B batch, H heads, Q queries, K keys, N grid cells, E embedding, d = E/H per head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax attention with its weights: (B, H, Q, d), (B, H, K, d) x2, mask (B, 1 or H, Q, K) -> out, weights."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, Q, K)
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


def single_query_attention(
    x: Tensor, allowed: Tensor, weight: Tensor, bias: Tensor, n_heads: int, scale: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Attention of the newest token only, with the qkv projection folded in: x (B, K, E), allowed (B, K) bool.

    ``weight`` (3E, E) and ``bias`` (3E,) are the fused q, k, v projection; ``scale`` (B, H), if
    given, multiplies each query (the length scaling of ``MultiHeadAttention``). Returns the attended
    values (B, E), heads concatenated as the unfused path makes them, and the weights (B, H, K).
    Exact algebra, not an approximation: with q = W_q x_K + b_q per head,

    - scores:  q . (W_k x_j + b_k) = x_j . (W_k^T q) + q . b_k  (the last term is the same for every key),
    - output:  sum_j w_j (W_v x_j + b_v) = W_v (sum_j w_j x_j) + b_v  (the weights sum to 1),

    so the K keys are touched by two batched products with H columns instead of a 2E-wide projection.
    """
    B, K, E = x.shape
    H = n_heads
    d = E // H
    w_q, w_k, w_v = weight.view(3, H, d, E).unbind(0)
    b_q, b_k, b_v = bias.view(3, H, d).unbind(0)
    q = (torch.einsum("be,hde->bhd", x[:, -1], w_q) + b_q) * d**-0.5  # (B, H, d)
    if scale is not None:
        q = q * scale[..., None]
    key_side = torch.einsum("bhd,hde->bhe", q, w_k)  # (B, H, E): W_k^T q per head
    scores = torch.bmm(key_side, x.transpose(1, 2)) + (q * b_k).sum(-1, keepdim=True)  # (B, H, K)
    scores = scores.masked_fill(~allowed[:, None, :], float("-inf"))
    weights = scores.softmax(dim=-1)
    mixed = torch.bmm(weights, x)  # (B, H, E): each head's weighted mean of the inputs
    out = torch.einsum("bhe,hde->bhd", mixed, w_v) + b_v
    return out.reshape(B, E), weights


def chunked_local_attention(q: Tensor, k: Tensor, v: Tensor, valid: Tensor, window: int, chunk: int) -> Tensor:
    """Local attention in query blocks of ``chunk``: (B, H, Q, d), (B, H, K, d) x2, valid (B, K) -> (B, H, Q, d).

    Block c's queries see at most ``span = chunk + window - 1`` keys, gathered once; work and memory
    are Q x span, linear in the sequence length.
    """
    B, H, Q, d = q.shape
    K = k.shape[2]
    n = -(-Q // chunk)
    Qp = n * chunk  # queries padded at the front to whole blocks
    span = chunk + window - 1
    # slot m of block c holds key position K - Qp - window + 1 + c * chunk + m; negative ones do not exist
    pos = (
        (K - Qp - window + 1) + torch.arange(n, device=q.device)[:, None] * chunk + torch.arange(span, device=q.device)
    )
    index = pos.clamp(min=0).flatten()
    kb = k.index_select(2, index).view(B, H, n, span, d)
    vb = v.index_select(2, index).view(B, H, n, span, d)
    valid_b = valid.index_select(1, index).view(B, n, span) & (pos >= 0)
    if Qp > Q:
        q = F.pad(q, (0, 0, Qp - Q, 0))
    j = torch.arange(chunk, device=q.device)[:, None]
    m = torch.arange(span, device=q.device)[None, :]
    band = (m >= j) & (m <= j + window - 1)  # query j of a block sees block slots j .. j + window - 1
    own = m == j + window - 1
    mask = (band & valid_b[:, :, None, :]) | own  # (B, n, chunk, span)
    # blocks go into the batch dimension: the fused CPU kernel takes 4-D inputs
    qb = q.view(B, H, n, chunk, d).transpose(1, 2).reshape(B * n, H, chunk, d)
    kb = kb.transpose(1, 2).reshape(B * n, H, span, d)
    vb = vb.transpose(1, 2).reshape(B * n, H, span, d)
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask.view(B * n, 1, chunk, span))
    return out.view(B, n, H, chunk, d).transpose(1, 2).reshape(B, H, Qp, d)[:, :, Qp - Q :]


def tiled_neighbourhood_attention(
    q: Tensor, k: Tensor, v: Tensor, valid: Tensor, grid: tuple[int, int], radius: int, tile: int
) -> Tensor:
    """Neighbourhood attention in ``tile`` x ``tile`` blocks of cells: (B, H, N, d) x3, valid (B, N) -> (B, H, N, d).

    Each block of queries sees the (tile + 2 radius)^2 cells around it: linear in the grid's area.
    """
    B, H, N, d = q.shape
    rows, cols = grid
    tr, tc = -(-rows // tile), -(-cols // tile)
    R, C = tr * tile, tc * tile  # grid padded to whole tiles
    span = tile + 2 * radius

    def to_grid(x: Tensor, pad_to_span: bool) -> Tensor:  # (B, H, N, d) -> (B, H, d, rows', cols')
        x = x.transpose(-1, -2).reshape(B, H, d, rows, cols)
        if pad_to_span:
            return F.pad(x, (radius, C - cols + radius, radius, R - rows + radius))
        return F.pad(x, (0, C - cols, 0, R - rows))

    qg = to_grid(q, False).reshape(B, H, d, tr, tile, tc, tile).permute(0, 1, 3, 5, 4, 6, 2)
    qg = qg.reshape(B, H, tr * tc, tile * tile, d)

    def blocks(x: Tensor) -> Tensor:  # (..., R + 2r, C + 2r) -> (..., tr * tc, span * span)
        x = x.unfold(-2, span, tile).unfold(-2, span, tile)  # (..., tr, tc, span, span)
        return x.reshape(*x.shape[:-4], tr * tc, span * span)

    kb = blocks(to_grid(k, True)).permute(0, 1, 3, 4, 2)  # (B, H, tiles, span^2, d)
    vb = blocks(to_grid(v, True)).permute(0, 1, 3, 4, 2)
    vg = F.pad(valid.view(B, rows, cols), (radius, C - cols + radius, radius, R - rows + radius), value=False)
    valid_b = blocks(vg)  # (B, tiles, span^2)
    i = torch.arange(tile, device=q.device)
    qi, qj = i.repeat_interleave(tile), i.repeat(tile)  # query cell within its tile
    s = torch.arange(span, device=q.device)
    ki, kj = s.repeat_interleave(span), s.repeat(span)  # key cell within its padded block
    near = ((ki[None, :] - qi[:, None] - radius).abs() <= radius) & (
        (kj[None, :] - qj[:, None] - radius).abs() <= radius
    )
    own = (ki[None, :] == qi[:, None] + radius) & (kj[None, :] == qj[:, None] + radius)
    mask = (near & valid_b[:, :, None, :]) | own  # (B, tiles, tile^2, span^2)
    T, t2, s2 = tr * tc, tile * tile, span * span
    fold = lambda x: x.transpose(1, 2).reshape(B * T, H, x.shape[-2], d)  # noqa: E731  (tiles into the batch)
    out = F.scaled_dot_product_attention(fold(qg), fold(kb), fold(vb), attn_mask=mask.view(B * T, 1, t2, s2))
    out = out.view(B, T, H, t2, d).transpose(1, 2)
    out = out.reshape(B, H, tr, tc, tile, tile, d).permute(0, 1, 2, 4, 3, 5, 6).reshape(B, H, R, C, d)
    return out[:, :, :rows, :cols].reshape(B, H, N, d)
