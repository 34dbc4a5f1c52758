"""Rotary positions (RoPE: Su et al. 2021, https://arxiv.org/abs/2104.09864, section 3.2).

Queries and keys are rotated pair by pair by their positions, so a score depends only on the
difference of the two positions: a key rotated once by its step's absolute position stays valid as
the step ages (what lets an episodic memory cache keys).
"""

from __future__ import annotations

import torch
from torch import Tensor

ROTARY_BASE = 10_000.0
_ROTARY_TABLES: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}
"""(N, 2, d/2) cos and sin of positions 0 .. N-1 per head size, device and dtype: derived values, never state"""
ROTARY_TABLE_MAX = 1 << 16
"""the table's rows at most; positions past it (an episode of more steps, a task with no time limit)
get their angles computed on each call instead, so the table's memory stays bounded (8 MiB at d = 32)"""


def rotary_tables(positions: Tensor, head_dim: int, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotary angles: integer positions (...) -> (..., d/2) each.

    The angles are computed in float64 and cast (at position 10^5 float32 angles would be off by
    ~0.004 rad), once per position: a table grown by doubling, then looked up (fewer ops per step),
    up to ``ROTARY_TABLE_MAX`` positions.
    """
    key = (head_dim, positions.device, dtype)
    table = _ROTARY_TABLES.get(key)
    needed = int(positions.max()) + 1 if positions.numel() else 1
    # float64 on the CPU, then cast and moved: some devices (Apple's MPS) have no float64
    if needed > ROTARY_TABLE_MAX:  # a very long episode: these positions' angles only, the table stays bounded
        angles = positions.cpu().to(torch.float64)[..., None] * _frequencies(head_dim)
        return angles.cos().to(positions.device, dtype), angles.sin().to(positions.device, dtype)
    if table is None or len(table) < needed:
        size = max(1024, 1 << (needed - 1).bit_length())
        angles = torch.arange(size, dtype=torch.float64)[:, None] * _frequencies(head_dim)
        table = _ROTARY_TABLES[key] = torch.stack([angles.cos(), angles.sin()], dim=1).to(positions.device, dtype)
    cos, sin = table[positions].unbind(-2)
    return cos, sin


def _frequencies(head_dim: int) -> Tensor:
    """(d/2,) float64 rotation frequencies, base^(-2i/d), on the CPU."""
    half = head_dim // 2
    return ROTARY_BASE ** (-torch.arange(half, dtype=torch.float64) / half)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x_i, x_{i+d/2}) by the angles: x (..., d), cos and sin broadcastable to (..., d/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
