"""The one attention primitive, and the boolean masks it takes (True = may attend).

Shape letters: B batch, H heads, Q queries, K keys (history steps), E embedding, E/H per head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ATTENTION_KINDS = ("global", "local")


def structure_mask(n_keys: int, kind: str = "global", window: int | None = None) -> Tensor:
    """Which key each query may see, ignoring validity: (K, K) bool, newest step last.

    ``global`` lets every step see every step; ``local`` lets step i see steps i-window+1 .. i.
    """
    if kind == "global":
        return torch.ones(n_keys, n_keys, dtype=torch.bool)
    if kind == "local":
        if window is None or window < 1:
            raise ValueError(f"window={window!r} is invalid for local attention: must be an integer >= 1")
        age = torch.arange(n_keys)[:, None] - torch.arange(n_keys)[None, :]  # query minus key index
        return (age >= 0) & (age < window)
    raise ValueError(f"attention={kind!r} is invalid: allowed are {', '.join(ATTENTION_KINDS)}")


def attention_mask(structure: Tensor, valid: Tensor) -> Tensor:
    """Combine a (K, K) structure with (B, K) validity into a (B, 1, K, K) mask.

    A query may see a valid key its structure allows, and always itself, so no row is ever empty:
    padded queries see only themselves and valid queries never see padding.
    """
    eye = torch.eye(structure.shape[0], dtype=torch.bool, device=valid.device)
    return ((structure.to(valid.device) & valid[:, None, :]) | eye)[:, None]


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Attention with its weights, for inspection: (B, H, Q, E/H) x3, mask (B, 1, Q, K) -> out, weights."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, Q, K)
    weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return weights @ v, weights


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention on ``scaled_dot_product_attention`` with a fused qkv projection.

    :param embed_dim: token size E, divisible by ``n_heads``.
    :param n_heads: number of heads H.
    """

    def __init__(self, embed_dim: int, n_heads: int):
        super().__init__()
        if embed_dim % n_heads:
            raise ValueError(f"embed_dim={embed_dim} is invalid: must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: Tensor, mask: Tensor, n_queries: int | None = None, need_weights: bool = False):
        """(B, K, E), mask (B, 1, K, K) -> (B, Q, E), and (B, H, Q, K) weights if asked.

        Only the newest ``n_queries`` steps query (all when None): the readout needs one.
        """
        B, K, E = x.shape
        q, k, v = self.qkv(x).split(E, dim=-1)
        if n_queries is not None:
            q, mask = q[:, -n_queries:], mask[..., -n_queries:, :]
        Q = q.shape[1]
        q = q.view(B, Q, self.n_heads, -1).transpose(1, 2)  # (B, H, Q, E/H)
        k = k.view(B, K, self.n_heads, -1).transpose(1, 2)  # (B, H, K, E/H)
        v = v.view(B, K, self.n_heads, -1).transpose(1, 2)  # (B, H, K, E/H)
        if need_weights:
            out, weights = explicit_attention(q, k, v, mask)
        else:
            out, weights = F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None
        out = out.transpose(1, 2).reshape(B, Q, E)  # (B, Q, E)
        return self.proj(out), weights
