"""Pre-norm transformer blocks with a plain residual or a GTrXL gate.

GTrXL: Parisotto et al. 2020, https://arxiv.org/abs/1910.06764, section 3 (identity map reordering
and the GRU-type gate, whose bias makes a fresh block start close to the identity).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from rlattn.attention import MultiHeadAttention
from rlattn.validation import check_choice

GATES = ("residual", "gru")


def sinusoidal_table(length: int, dim: int) -> Tensor:
    """(length, dim) sin/cos encoding of 0 .. length-1 (Vaswani et al. 2017, section 3.5)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10_000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table


def init_linear(module: nn.Module) -> None:
    """The transformer's own init for a Linear layer (``module.apply(init_linear)``): N(0, 0.02), zero bias."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _is_sb3_init(fn: Callable[[nn.Module], None]) -> bool:
    """SB3's ``ortho_init`` calls ``module.apply(partial(policy.init_weights, gain=...))``."""
    return isinstance(fn, functools.partial) and getattr(fn.func, "__name__", "") == "init_weights"


class KeepsOwnInit(nn.Module):
    """A module whose own initialisation survives SB3's ``ortho_init``.

    SB3's actor-critic policies re-initialise every Linear and Conv2d of the features extractor
    orthogonally unless ``ortho_init=False``; for a transformer that init is wrong (and forgetting the
    flag silently changed the model). Modules with this base skip SB3's ``init_weights``, so PPO and
    A2C build the same extractor whatever ``ortho_init`` says, while the MLP and heads still get it.
    Every other ``apply`` works as usual.
    """

    def apply(self, fn: Callable[[nn.Module], None]) -> KeepsOwnInit:
        if _is_sb3_init(fn):
            return self
        return super().apply(fn)


class FeedForward(nn.Module):
    """Position-wise MLP: (B, Q, E) -> (B, Q, E)."""

    def __init__(self, embed_dim: int, hidden_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(embed_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embed_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Residual(nn.Module):
    """``x + y``: the plain pre-norm transformer's skip connection."""

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return x + y


class GRUGate(nn.Module):
    """GTrXL's GRU-type gate g(x, y); ``bias`` > 0 keeps the update gate nearly shut at init.

    The bias is a bare Parameter so that SB3's ``ortho_init`` (which zeroes Linear biases) keeps it.
    """

    def __init__(self, embed_dim: int, bias: float = 2.0):
        super().__init__()
        self.w = nn.Linear(embed_dim, 3 * embed_dim, bias=False)  # W_r, W_z, W_g on y
        self.u = nn.Linear(embed_dim, 2 * embed_dim, bias=False)  # U_r, U_z on x
        self.u_g = nn.Linear(embed_dim, embed_dim, bias=False)
        self.gate_bias = nn.Parameter(torch.full((embed_dim,), bias))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        wr, wz, wg = self.w(y).chunk(3, dim=-1)
        ur, uz = self.u(x).chunk(2, dim=-1)
        r = torch.sigmoid(wr + ur)
        z = torch.sigmoid(wz + uz - self.gate_bias)
        h = torch.tanh(wg + self.u_g(r * x))
        return (1 - z) * x + z * h


class TransformerBlock(nn.Module):
    """``x = skip(x, attn(norm1(x)))`` then ``x = skip(x, mlp(norm2(x)))``.

    :param embed_dim: token size E.
    :param n_heads: attention heads.
    :param mlp_ratio: hidden size of the feed-forward part, as a multiple of E.
    :param gate: ``"residual"`` (x + y) or ``"gru"`` (GTrXL gate; ReLU on each sub-layer's output).
    :param attention_kwargs: the attention pattern (``attention``, ``window``, ``top_k``, ``block_size``, ...), passed
        to :class:`~rlattn.attention.MultiHeadAttention`.
    """

    def __init__(
        self, embed_dim: int, n_heads: int, mlp_ratio: float = 2.0, gate: str = "residual", **attention_kwargs: Any
    ):
        super().__init__()
        check_choice("gate", gate, GATES)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.attn = MultiHeadAttention(embed_dim, n_heads, **attention_kwargs)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.mlp = FeedForward(embed_dim, max(1, math.ceil(embed_dim * mlp_ratio)))
        self.gated = gate == "gru"
        self.skip1 = GRUGate(embed_dim) if self.gated else Residual()
        self.skip2 = GRUGate(embed_dim) if self.gated else Residual()

    def forward(
        self,
        x: Tensor,
        valid: Tensor,
        n_queries: int | None = None,
        need_weights: bool = False,
        positions: Tensor | None = None,
        mask: Tensor | None = None,
    ):
        """(B, K, E), valid (B, K) bool -> (B, Q, E) for the newest Q steps, and weights if asked.

        ``positions`` and ``mask`` as in :meth:`~rlattn.attention.MultiHeadAttention.forward`.
        """
        y, weights = self.attn(self.norm1(x), valid, n_queries, need_weights, positions, mask)
        if n_queries is not None:
            x = x[:, -n_queries:]
        return self.finish(x, y), weights

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
        """One new token against this block's key/value cache: x (B, E) -> (B, E), weights (B, H, W) if asked.

        See :meth:`~rlattn.attention.MultiHeadAttention.step` (writes the token into the cache).
        """
        y, weights = self.attn.step(self.norm1(x), position, keys, values, slot, valid, need_weights)
        return self.finish(x, y), weights

    def finish(self, x: Tensor, y: Tensor) -> Tensor:
        """The block after its attention: skip over the attention output ``y``, then the MLP. (..., E) -> (..., E)."""
        x = self.skip1(x, torch.relu(y) if self.gated else y)
        y = self.mlp(self.norm2(x))
        return self.skip2(x, torch.relu(y) if self.gated else y)
