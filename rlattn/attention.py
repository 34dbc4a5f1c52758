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
- **explicit**: softmax written out, returning the weights (for TensorBoard, only when asked).

With ``top_k``, global attention is block-routed (:mod:`rlattn.block_sparse`, MoBA): keys in blocks
of ``block_size``, each block of queries attends only to its ``top_k`` best-scoring blocks and its
own, the rest never computed. With every block chosen it is global attention, number for number on
every valid query row (a padded query row, which no valid query reads, may differ).
With ``compress`` too, NSA's compressed branch (each query block's routing query over every other
block's mean key and value, shared by the block's queries) is added through a learned per-head gate,
which trains the scores the router ranks.

One query (the readout of a history's last block) has a cheaper form of the same numbers:
:func:`single_query_attention` folds the key and value projections into the query's side, so the K
keys are never projected (cost K x E x H instead of K x E x 2E).

With ``length_scale``, each head's logits are multiplied by ``s_h log n``, n the number of keys
the query may see and s_h learned (Scalable-Softmax, Nakanishi 2025, https://arxiv.org/abs/2501.19399,
section 3): with plain softmax the weight a fixed score gap buys falls as 1/n, so one step among a
thousand fades; with the scaling a head that keeps a gap keeps its weight at any length.

Positions can enter inside attention instead of being added to the tokens: with ``positions``,
queries and keys are rotated by their positions (rotary embeddings, RoPE: Su et al. 2021,
https://arxiv.org/abs/2104.09864, section 3.2), so a score depends only on the difference of the two
positions. A key rotated once by its step's absolute position stays valid as the step ages, which is
what lets :meth:`MultiHeadAttention.step` attend to a cache of keys.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlattn.attention_paths import (
    chunked_local_attention,
    explicit_attention,
    single_query_attention,
    tiled_neighbourhood_attention,
)
from rlattn.block_sparse import block_sparse_attention, compressed_attention, routed_mask
from rlattn.rotary import rotary_tables, rotate
from rlattn.validation import check_choice, check_int

ATTENTION_KINDS = ("global", "local", "neighbourhood")
LENGTH_SCALE_NEUTRAL = 16
"""with ``length_scale``, each head starts at s = 1 / log(16): logits unchanged where a query sees 16 keys"""
SEQUENCE_KINDS = ("global", "local")


def check_pattern(
    kind: str,
    window: int | None = None,
    grid: tuple[int, int] | None = None,
    radius: int | None = None,
    top_k: int | None = None,
    block_size: int = 64,
) -> None:
    """One-line ValueError for a pattern that cannot be built."""
    check_choice("attention", kind, ATTENTION_KINDS)
    check_int("block_size", block_size)
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
        if kind != "global":
            raise ValueError(f"top_k={top_k!r} is invalid with attention={kind!r}: routing needs attention='global'")


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
    itself: valid queries never see padding (a padded query sees the valid keys its structure allows
    too; no valid query reads its output, so that only changes the padded rows themselves).
    """
    Q, K = structure.shape
    return ((structure.to(valid.device) & valid[:, None, :]) | _own_keys(Q, K, valid.device))[:, None]


@functools.lru_cache(maxsize=64)
def _own_keys(n_queries: int, n_keys: int, device: torch.device) -> Tensor:
    """(Q, K) bool: each of the newest Q positions is its own key (a few shapes recur: cached, read-only)."""
    return torch.arange(n_keys - n_queries, n_keys, device=device)[:, None] == torch.arange(n_keys, device=device)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and one of the patterns above.

    The computation is picked per call: explicit when weights are asked for, block-routed with
    ``top_k``, chunked for local/neighbourhood patterns where that does less work than dense, dense otherwise.

    :param embed_dim: token size E, divisible by ``n_heads``.
    :param n_heads: number of heads H.
    :param attention: ``"global"``, ``"local"`` or ``"neighbourhood"``.
    :param window: local window in steps (``local`` only).
    :param grid: (rows, cols) of the token grid (``neighbourhood`` only).
    :param radius: neighbourhood radius in cells (``neighbourhood`` only).
    :param top_k: block-routed sparse attention (``global`` only): each block of queries attends to its
        ``top_k`` best-scoring key blocks plus its own; None attends to every key.
    :param block_size: keys per block S with ``top_k`` (default 64: one block is a single fused
        product on CPU, and at K = 4096 top_k = 2 sees 3 of 64 blocks); 1 routes every key alone.
    :param chunk: query block size (cells per tile side for grids) of the chunked path; None picks
        one from the window. ``0`` forces the dense path.
    :param length_scale: multiply each head's logits by ``s_h log n`` (n: keys the query may see;
        s_h learned, starting at 1 / log 16). Not with ``neighbourhood``.
    :param compress: with ``top_k``, add the compressed branch
        (:func:`~rlattn.block_sparse.compressed_attention`) through a per-head gate
        ``sigmoid(Linear(x))``: what lets the router learn blocks it does not choose.
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
        block_size: int = 64,
        compress: bool = False,
        length_scale: bool = False,
    ):
        super().__init__()
        if embed_dim % n_heads:
            raise ValueError(f"embed_dim={embed_dim} is invalid: must be divisible by n_heads={n_heads}")
        check_pattern(attention, window, grid, radius, top_k, block_size)
        if not isinstance(compress, bool):
            raise ValueError(f"compress={compress!r} is invalid: must be True or False")
        if not isinstance(length_scale, bool):
            raise ValueError(f"length_scale={length_scale!r} is invalid: must be True or False")
        if length_scale and attention == "neighbourhood":
            raise ValueError("length_scale=True is invalid with attention='neighbourhood': it scales sequences only")
        if compress and top_k is None:
            raise ValueError("compress=True is invalid without top_k: the compressed branch belongs to block routing")
        if chunk is not None:
            check_int("chunk", chunk, 0)
        self.n_heads = n_heads
        self.attention = attention
        self.window = window
        self.grid = tuple(grid) if grid is not None else None
        self.radius = radius
        self.top_k = top_k
        self.block_size = block_size
        self.chunk = chunk
        self._structures: dict[tuple, Tensor] = {}  # derived from the pattern, never state
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.compress_gate = nn.Linear(embed_dim, n_heads) if compress else None
        self.length_scale = (
            nn.Parameter(torch.full((n_heads,), 1 / math.log(LENGTH_SCALE_NEUTRAL))) if length_scale else None
        )

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
        where episode boundaries and ages decide); padded keys (``valid`` False) stay unseen under it
        too, and each query always sees itself.
        """
        B, K, E = x.shape
        full = K
        Q = K if n_queries is None else n_queries
        if mask is not None:
            mask = (mask & valid[:, None, None, :]) | _own_keys(Q, K, valid.device)
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
            scale = self.logit_scale(valid, 1)
            scale = scale[:, :, 0] if scale is not None else None
            out, _ = single_query_attention(x, allowed, self.qkv.weight, self.qkv.bias, self.n_heads, scale)
            return self.proj(out[:, None]), None
        if Q < K:  # project queries only where they are asked
            weight, bias = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, K - Q :], weight[:E], bias[:E])
            k, v = F.linear(x, weight[E:], bias[E:]).split(E, dim=-1)
        else:
            q, k, v = self.qkv(x).split(E, dim=-1)
        d = E // self.n_heads  # given, not inferred: a batch of 0 has nothing to infer it from
        q = q.reshape(B, Q, self.n_heads, d).transpose(1, 2)  # (B, H, Q, d)
        k = k.reshape(B, K, self.n_heads, d).transpose(1, 2)  # (B, H, K, d)
        v = v.reshape(B, K, self.n_heads, d).transpose(1, 2)
        if positions is not None:
            cos, sin = rotary_tables(positions, q.shape[-1], q.dtype)  # (K, d/2) or (B, K, d/2)
            if positions.dim() == 2:
                cos, sin = cos[:, None], sin[:, None]  # (B, 1, K, d/2): the same angles for every head
            q, k = rotate(q, cos[..., K - Q :, :], sin[..., K - Q :, :]), rotate(k, cos, sin)
        scale = self.logit_scale(valid, Q, mask)
        if scale is not None:
            q = q * scale[..., None]
        gate = None
        if self.compress_gate is not None and mask is None:
            gate = torch.sigmoid(self.compress_gate(x[:, K - Q :])).transpose(1, 2)[..., None]  # (B, H, Q, 1)
        out, weights = self.attend(q, k, v, valid, need_weights, mask, gate)
        out = out.transpose(1, 2).reshape(B, Q, E)
        if weights is not None and K < full:
            weights = F.pad(weights, (full - K, 0))  # keys out of reach weigh 0
        return self.proj(out), weights if need_weights else None

    def step(
        self,
        x: Tensor,
        position: Tensor | None,
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
        allows, which must include ``slot``. ``position`` None: nothing is rotated (no positions).
        """
        B, E = x.shape
        H = self.n_heads
        qkv = self.qkv(x).view(B, 3 * H, E // H)
        if position is None:
            q, k = qkv[:, : 2 * H].split(H, dim=1)
        else:
            cos, sin = rotary_tables(position, E // H, x.dtype)
            q, k = rotate(qkv[:, : 2 * H], cos[:, None], sin[:, None]).split(H, dim=1)  # (B, H, d) each
        mask = valid[:, None, None, :]  # (B, 1, 1, W)
        scale = self.logit_scale(valid, 1, mask)  # (B, H, 1): n = the slots the query sees
        if scale is not None:
            q = q * scale
        rows = torch.arange(B, device=x.device)
        keys[rows, :, slot] = k
        values[rows, :, slot] = qkv[:, 2 * H :]
        if need_weights:
            out, weights = explicit_attention(q[:, :, None], keys, values, mask)
            return self.proj(out.reshape(B, E)), weights[:, :, 0]
        out = F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=mask)
        return self.proj(out.reshape(B, E)), None

    def logit_scale(self, valid: Tensor, n_queries: int, mask: Tensor | None = None) -> Tensor | None:
        """With ``length_scale``: s_h log n for the newest Q queries, (B, H, Q) or (B, H, 1); None without.

        n counts the valid keys in the query's range: the mask's row (when given), all of them (global,
        and block-routed, whose range is global), or those in the window ending at the query (local).
        A padded query's n does not matter: it sees only itself.
        """
        if self.length_scale is None:
            return None
        if mask is not None:
            n = mask.sum(-1).to(self.length_scale.dtype)  # (B, 1, Q)
        elif self.attention == "local":
            K = valid.shape[1]
            total = F.pad(valid.cumsum(-1), (1, 0))  # (B, K + 1): valid keys before each position
            end = torch.arange(K - n_queries + 1, K + 1, device=valid.device)
            n = (total[:, end] - total[:, (end - self.window).clamp(min=0)])[:, None].to(self.length_scale.dtype)  # type: ignore[operator]
        else:
            n = valid.sum(-1).to(self.length_scale.dtype)[:, None, None]  # (B, 1, 1)
        return self.length_scale[:, None] * n.clamp(min=1).log()

    def keys_values(self, x: Tensor, positions: Tensor | None) -> tuple[Tensor, Tensor]:
        """Keys and values of tokens x (B, W, E) as :meth:`step` caches them: (B, H, W, d) each, keys
        rotated by ``positions`` (B, W) (None: not rotated)."""
        B, W, E = x.shape
        k, v = F.linear(x, self.qkv.weight[E:], self.qkv.bias[E:]).split(E, dim=-1)
        k = k.reshape(B, W, self.n_heads, -1).transpose(1, 2)
        v = v.reshape(B, W, self.n_heads, -1).transpose(1, 2)
        if positions is not None:
            cos, sin = rotary_tables(positions, k.shape[-1], k.dtype)
            k = rotate(k, cos[:, None], sin[:, None])
        return k, v

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        valid: Tensor,
        need_weights: bool = False,
        mask: Tensor | None = None,
        gate: Tensor | None = None,
    ):
        """The pattern on split heads: (B, H, Q, d), (B, H, K, d) x2, valid (B, K) -> out (B, H, Q, d), weights or None.

        The queries are the newest Q of the K positions. A given ``mask`` (B, 1, Q, K) replaces the
        pattern and the routing. Weights are zero on keys not attended (with ``top_k``, unchosen blocks;
        with ``compress``, they are the selected branch's). ``gate`` (B, H, Q, 1) in [0, 1] weighs the
        compressed branch (with ``compress``; required then).
        """
        Q, K = q.shape[2], k.shape[2]
        if mask is not None:
            if need_weights:
                return explicit_attention(q, k, v, mask)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None
        if self.top_k is not None:
            if self.compress_gate is not None and gate is None:
                raise ValueError(
                    "gate=None is invalid with compress=True: pass the (B, H, Q, 1) gate forward() computes"
                )
            if not need_weights:
                return block_sparse_attention(q, k, v, valid, self.top_k, self.block_size, gate), None
            out, weights = explicit_attention(q, k, v, routed_mask(q, k, valid, self.top_k, self.block_size))
            if gate is not None:
                out = out + gate * compressed_attention(q, k, v, valid, self.block_size)
            return out, weights
        if need_weights:
            return explicit_attention(q, k, v, self.mask(valid, Q))
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
