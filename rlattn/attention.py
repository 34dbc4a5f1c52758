"""The one attention primitive: which keys each query may see, and three ways to compute it.

Shape letters: B batch, H heads, Q queries, K keys, N grid cells, E embedding, d = E/H per head.

Sequences (histories) hold the newest step last; when only the newest Q steps query, query i sits
at position K - Q + i. Patterns (True = may attend):

- ``global``: every valid key.
- ``local``: the ``window`` steps ending at the query (ages 0 .. window-1).
- ``neighbourhood``: on a (rows, cols) grid of tokens in row-major order, the cells at most
  ``radius`` rows and columns away (a (2r+1) x (2r+1) square).

A query always sees itself, so no row is ever empty; padded keys (``valid`` False) are never seen by
another query. Three computations give the same numbers (tests hold this, forward and backward):

- **dense**: one boolean mask into ``scaled_dot_product_attention``. Cost Q x K however sparse the
  mask: on CPU a mask saves no work.
- **chunked** (local and neighbourhood): queries in blocks, each against only the keys its block can
  see (``unfold``). Cost and memory grow linearly with the sequence length for a fixed window.
  Chosen automatically when it does less work than dense.
- **explicit**: softmax written out, returning the weights (for TensorBoard, only when asked) and
  supporting top-k sparsity: each query keeps only its ``top_k`` highest-scoring allowed keys.

One query (the readout of a history's last block) has a cheaper form of the same numbers:
:func:`single_query_attention` folds the key and value projections into the query's side, so the K
keys are never projected (cost K x E x H instead of K x E x 2E).

Positions can enter inside attention instead of being added to the tokens: with ``positions``,
queries and keys are rotated by their positions (rotary embeddings, RoPE: Su et al. 2021,
https://arxiv.org/abs/2104.09864, section 3.2), so a score depends only on the difference of the two
positions. A key rotated once by its step's absolute position stays valid as the step ages, which is
what lets :meth:`MultiHeadAttention.step` attend to a cache of keys.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlattn.validation import check_choice, check_int

ATTENTION_KINDS = ("global", "local", "neighbourhood")
SEQUENCE_KINDS = ("global", "local")


def check_pattern(
    kind: str,
    window: int | None = None,
    grid: tuple[int, int] | None = None,
    radius: int | None = None,
    top_k: int | None = None,
) -> None:
    """One-line ValueError for a pattern that cannot be built."""
    check_choice("attention", kind, ATTENTION_KINDS)
    if kind == "local":
        check_int("window", window)
    if kind == "neighbourhood":
        try:
            if not isinstance(grid, (tuple, list)) or len(grid) != 2:
                raise ValueError
            for n in grid:
                check_int("grid", n)
        except ValueError:
            raise ValueError(
                f"grid={grid!r} is invalid for neighbourhood attention: must be (rows, cols), each an integer >= 1"
            ) from None
        check_int("radius", radius, 0)
    if top_k is not None:
        check_int("top_k", top_k)


def structure_mask(
    n_keys: int, kind: str = "global", window: int | None = None, n_queries: int | None = None
) -> Tensor:
    """Which key each of the newest ``n_queries`` (default all) steps may see, ignoring validity: (Q, K) bool."""
    check_pattern(kind, window)
    check_choice("attention", kind, SEQUENCE_KINDS)
    n_queries = n_keys if n_queries is None else n_queries
    if kind == "global":
        return torch.ones(n_queries, n_keys, dtype=torch.bool)
    age = torch.arange(n_keys - n_queries, n_keys)[:, None] - torch.arange(n_keys)[None, :]
    return (age >= 0) & (age < window)  # type: ignore[operator]


def grid_mask(rows: int, cols: int, radius: int) -> Tensor:
    """(N, N) bool for N = rows * cols cells in row-major order: True within ``radius`` rows and columns."""
    r, c = torch.arange(rows).repeat_interleave(cols), torch.arange(cols).repeat(rows)
    return ((r[:, None] - r[None, :]).abs() <= radius) & ((c[:, None] - c[None, :]).abs() <= radius)


def attention_mask(structure: Tensor, valid: Tensor) -> Tensor:
    """Combine a (Q, K) structure with (B, K) validity into a (B, 1, Q, K) mask.

    The newest Q keys are the queries; each may see a valid key its structure allows, and always
    itself: padded queries see only themselves and valid queries never see padding.
    """
    Q, K = structure.shape
    return ((structure.to(valid.device) & valid[:, None, :]) | _own_keys(Q, K, valid.device))[:, None]


@functools.lru_cache(maxsize=64)
def _own_keys(n_queries: int, n_keys: int, device: torch.device) -> Tensor:
    """(Q, K) bool: each of the newest Q positions is its own key (a few shapes recur: cached, read-only)."""
    return torch.arange(n_keys - n_queries, n_keys, device=device)[:, None] == torch.arange(n_keys, device=device)


ROTARY_BASE = 10_000.0
_ROTARY_TABLES: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}
"""(N, 2, d/2) cos and sin of positions 0 .. N-1 per head size, device and dtype: derived values, never state"""


def rotary_tables(positions: Tensor, head_dim: int, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotary angles: integer positions (...) -> (..., d/2) each.

    The angles are computed in float64 and cast (at position 10^5 float32 angles would be off by
    ~0.004 rad), once per position: a table grown by doubling, then looked up (fewer ops per step).
    """
    key = (head_dim, positions.device, dtype)
    table = _ROTARY_TABLES.get(key)
    needed = int(positions.max()) + 1 if positions.numel() else 1
    if table is None or len(table) < needed:
        size = max(1024, 1 << (needed - 1).bit_length())
        half = head_dim // 2
        freq = ROTARY_BASE ** (-torch.arange(half, dtype=torch.float64, device=positions.device) / half)
        angles = torch.arange(size, dtype=torch.float64, device=positions.device)[:, None] * freq
        table = _ROTARY_TABLES[key] = torch.stack([angles.cos(), angles.sin()], dim=1).to(dtype)
    cos, sin = table[positions].unbind(-2)
    return cos, sin


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x_i, x_{i+d/2}) by the angles: x (..., d), cos and sin broadcastable to (..., d/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def explicit_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, top_k: int | None = None
) -> tuple[Tensor, Tensor]:
    """Softmax attention with its weights: (B, H, Q, d), (B, H, K, d) x2, mask (B, 1, Q, K) -> out, weights.

    With ``top_k``, each query keeps only its ``top_k`` highest-scoring allowed keys (all of them if
    fewer are allowed); gradients flow through the kept scores.
    """
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, Q, K)
    scores = scores.masked_fill(~mask, float("-inf"))
    if top_k is not None and top_k < scores.shape[-1]:
        kept = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, scores.topk(top_k, dim=-1).indices, True)
        scores = scores.masked_fill(~kept, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


def single_query_attention(
    x: Tensor, allowed: Tensor, weight: Tensor, bias: Tensor, n_heads: int
) -> tuple[Tensor, Tensor]:
    """Attention of the newest token only, with the qkv projection folded in: x (B, K, E), allowed (B, K) bool.

    ``weight`` (3E, E) and ``bias`` (3E,) are the fused q, k, v projection. Returns the attended
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


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and one of the patterns above.

    The computation is picked per call: explicit when weights are asked for or ``top_k`` is set,
    chunked for local/neighbourhood patterns where that does less work than dense, dense otherwise.

    :param embed_dim: token size E, divisible by ``n_heads``.
    :param n_heads: number of heads H.
    :param attention: ``"global"``, ``"local"`` or ``"neighbourhood"``.
    :param window: local window in steps (``local`` only).
    :param grid: (rows, cols) of the token grid (``neighbourhood`` only).
    :param radius: neighbourhood radius in cells (``neighbourhood`` only).
    :param top_k: keep only each query's ``top_k`` strongest keys (sparse attention); None keeps all.
    :param chunk: query block size (cells per tile side for grids) of the chunked path; None picks
        one from the window. ``0`` forces the dense path.
    """

    def __init__(
        self,
        embed_dim: int,
        n_heads: int,
        attention: str = "global",
        window: int | None = None,
        grid: tuple[int, int] | None = None,
        radius: int | None = None,
        top_k: int | None = None,
        chunk: int | None = None,
    ):
        super().__init__()
        if embed_dim % n_heads:
            raise ValueError(f"embed_dim={embed_dim} is invalid: must be divisible by n_heads={n_heads}")
        check_pattern(attention, window, grid, radius, top_k)
        if chunk is not None:
            check_int("chunk", chunk, 0)
        self.n_heads = n_heads
        self.attention = attention
        self.window = window
        self.grid = tuple(grid) if grid is not None else None
        self.radius = radius
        self.top_k = top_k
        self.chunk = chunk
        self._structures: dict[tuple, Tensor] = {}  # derived from the pattern, never state
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)

    def mask(self, valid: Tensor, n_queries: int) -> Tensor:
        """The dense (B, 1, Q, K) mask of this pattern for the newest ``n_queries`` of K = valid.shape[1]."""
        K = valid.shape[1]
        key = (n_queries, K, valid.device)
        if key not in self._structures:  # a few (Q, K) pairs recur: rollouts, minibatches, the last block
            if self.attention == "neighbourhood":
                rows, cols = self.grid  # type: ignore[misc]
                structure = grid_mask(rows, cols, self.radius)[K - n_queries :]  # type: ignore[arg-type]
            else:
                structure = structure_mask(K, self.attention, self.window, n_queries)
            if len(self._structures) >= 64:
                self._structures.clear()
            self._structures[key] = structure.to(valid.device)
        return attention_mask(self._structures[key], valid)

    def forward(
        self,
        x: Tensor,
        valid: Tensor,
        n_queries: int | None = None,
        need_weights: bool = False,
        positions: Tensor | None = None,
        mask: Tensor | None = None,
    ):
        """(B, K, E), valid (B, K) bool -> (B, Q, E) for the newest Q steps, and (B, H, Q, K) weights if asked.

        ``positions`` (K,) or (B, K) integers: rotate queries and keys by them (rotary positions).
        ``mask`` (B, 1, Q, K) bool: who may see whom, replacing the pattern (episodic sequences,
        where episode boundaries and ages decide); every row must allow at least one key.
        """
        B, K, E = x.shape
        full = K
        Q = K if n_queries is None else n_queries
        if self.attention == "neighbourhood" and (self.grid[0] * self.grid[1] != K):  # type: ignore[index]
            raise ValueError(f"{K} tokens do not fill grid={self.grid}: expected rows * cols tokens")
        if self.attention == "local" and mask is None:
            keep = min(K, Q + self.window - 1)  # type: ignore[operator]  # older keys are out of every query's reach
            x, valid = x[:, K - keep :], valid[:, K - keep :]
            positions = positions[..., K - keep :] if positions is not None else None
            K = keep
        plain = positions is None and mask is None  # the folded single query cannot rotate or take a mask
        if Q == 1 and plain and not need_weights and self.top_k is None and self.attention != "neighbourhood":
            # the readout of a history: the window (if any) is already cut, so every valid key is allowed
            allowed = valid.clone()
            allowed[:, -1] = True
            out, _ = single_query_attention(x, allowed, self.qkv.weight, self.qkv.bias, self.n_heads)
            return self.proj(out[:, None]), None
        if Q < K:  # project queries only where they are asked
            weight, bias = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, K - Q :], weight[:E], bias[:E])
            k, v = F.linear(x, weight[E:], bias[E:]).split(E, dim=-1)
        else:
            q, k, v = self.qkv(x).split(E, dim=-1)
        q = q.reshape(B, Q, self.n_heads, -1).transpose(1, 2)  # (B, H, Q, d)
        k = k.reshape(B, K, self.n_heads, -1).transpose(1, 2)  # (B, H, K, d)
        v = v.reshape(B, K, self.n_heads, -1).transpose(1, 2)
        if positions is not None:
            cos, sin = rotary_tables(positions, q.shape[-1], q.dtype)  # (K, d/2) or (B, K, d/2)
            if positions.dim() == 2:
                cos, sin = cos[:, None], sin[:, None]  # (B, 1, K, d/2): the same angles for every head
            q, k = rotate(q, cos[..., K - Q :, :], sin[..., K - Q :, :]), rotate(k, cos, sin)
        out, weights = self.attend(q, k, v, valid, need_weights, mask)
        out = out.transpose(1, 2).reshape(B, Q, E)
        if weights is not None and K < full:
            weights = F.pad(weights, (full - K, 0))  # keys out of reach weigh 0
        return self.proj(out), weights if need_weights else None

    def step(
        self,
        x: Tensor,
        position: Tensor,
        keys: Tensor,
        values: Tensor,
        slot: Tensor,
        valid: Tensor,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """One new token per sequence against a key/value cache: x (B, E) -> (B, E), and (B, H, W) weights if asked.

        ``keys`` and ``values`` (B, H, W, d) hold W cached steps, keys rotated by their own positions;
        the token's rotated key and value are written into ``slot`` (B,) first (in place: it attends
        to itself), then its query, rotated by ``position`` (B,), attends to the slots ``valid`` (B, W)
        allows, which must include ``slot``.
        """
        B, E = x.shape
        H = self.n_heads
        qkv = self.qkv(x).view(B, 3 * H, E // H)
        cos, sin = rotary_tables(position, E // H, x.dtype)
        q, k = rotate(qkv[:, : 2 * H], cos[:, None], sin[:, None]).split(H, dim=1)  # (B, H, d) each
        rows = torch.arange(B, device=x.device)
        keys[rows, :, slot] = k
        values[rows, :, slot] = qkv[:, 2 * H :]
        mask = valid[:, None, None, :]  # (B, 1, 1, W)
        if need_weights:
            out, weights = explicit_attention(q[:, :, None], keys, values, mask)
            return self.proj(out.reshape(B, E)), weights[:, :, 0]
        out = F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=mask)
        return self.proj(out.reshape(B, E)), None

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, valid: Tensor, need_weights: bool = False, mask: Tensor | None = None
    ):
        """The pattern on split heads: (B, H, Q, d), (B, H, K, d) x2, valid (B, K) -> out (B, H, Q, d), weights or None.

        The queries are the newest Q of the K positions. A given ``mask`` (B, 1, Q, K) replaces the pattern.
        """
        Q, K = q.shape[2], k.shape[2]
        if mask is not None:
            if need_weights or self.top_k is not None:
                return explicit_attention(q, k, v, mask, self.top_k)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None
        if need_weights or self.top_k is not None:
            return explicit_attention(q, k, v, self.mask(valid, Q), self.top_k)
        if self.attention == "local" and self._chunked(Q, K):
            return chunked_local_attention(q, k, v, valid, self.window, self._chunk_size()), None  # type: ignore[arg-type]
        if self.attention == "neighbourhood" and Q == K and self._chunked(Q, K):
            grid, radius = self.grid, self.radius
            return tiled_neighbourhood_attention(q, k, v, valid, grid, radius, self._chunk_size()), None  # type: ignore[arg-type]
        if self.attention == "global" and bool(valid.all()):
            return F.scaled_dot_product_attention(q, k, v), None  # nothing to hide
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask(valid, Q)), None

    def _chunk_size(self) -> int:
        if self.chunk:
            return self.chunk
        if self.attention == "local":
            return max(32, self.window or 1)
        return max(4, 2 * self.radius + 1)  # type: ignore[operator]

    def _chunked(self, Q: int, K: int) -> bool:
        """Chunk when blocks do clearly less work than one dense Q x K product."""
        if self.chunk == 0:
            return False
        if self.chunk:
            return True
        c = self._chunk_size()
        if self.attention == "local":
            return Q * (c + self.window - 1) * 2 <= Q * K  # type: ignore[operator]
        return (c + 2 * self.radius) ** 2 * 2 <= K  # type: ignore[operator]
