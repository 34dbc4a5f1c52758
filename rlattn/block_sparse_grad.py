"""Gathered block attention that keeps no gathered copies for the backward pass.

Shape letters: P query blocks, R queries per block, N key blocks, S block size, d per head,
m blocks attended per query block, p query blocks in one chunk.

The plain path (``rlattn.block_sparse._gathered_attention``) gathers each query block's m key
blocks into new (P, m S, d) keys and values that autograd keeps, with their gradients, until the
backward pass: about 4 m copies of the keys' size. Here one ``autograd.Function`` runs the fused CPU
flash-attention kernel on a chunk of query blocks at a time, keeps only the output and its
log-sum-exp, and in the backward pass gathers the chunk again (a copy, no recomputed attention),
runs the fused backward kernel, and adds the gathered gradients back into the key blocks. Only one
chunk's gathered copies exist at a time, so the extra memory is a fixed budget, not m x K.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

# Private ops (present in torch >= 2.3): the kernel behind CPU scaled_dot_product_attention, with its log-sum-exp.
_FLASH: Any = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_BACKWARD: Any = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
CHUNK_ELEMENTS = 2**16  # gathered key elements per chunk: 256 KiB of float32 keys, as much for values and grads


def lean_applies(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether :func:`gathered_attention` can run: a gradient is wanted, on CPU, and the fused ops exist."""
    wanted = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    supported = q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64)
    return wanted and supported and _FLASH is not None and _FLASH_BACKWARD is not None


def gathered_attention(q: Tensor, k: Tensor, v: Tensor, keys: Tensor, flat: Tensor) -> Tensor:
    """q (P, R, d) against m gathered blocks, index (P, m) into k, v (N, S, d), keys (P, m S) -> (P, R, d).

    ``keys`` is the boolean mask (True = may attend) of the gathered keys, shared by a block's queries;
    no row may be all False.
    """
    return _GatheredAttention.apply(q, k, v, keys, flat)


class _GatheredAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, q: Tensor, k: Tensor, v: Tensor, keys: Tensor, flat: Tensor) -> Tensor:
        P, R, d = q.shape
        out, lse = q.new_empty(P, R, d), q.new_empty(P, R)
        for rows in _chunks(flat, k):
            ks, vs = gather_blocks(k, v, flat[rows])  # (p, 1, m S, d)
            o, o_lse = _FLASH(q[rows, None], ks, vs, attn_mask=_bias(keys[rows], q.dtype))  # (p, 1, R, d), (p, 1, R)
            out[rows], lse[rows] = o[:, 0], o_lse[:, 0]
        ctx.save_for_backward(q, k, v, keys, flat, out, lse)  # type: ignore[attr-defined]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        q, k, v, keys, flat, out, lse = ctx.saved_tensors  # type: ignore[attr-defined]
        S, d = k.shape[1:]
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for rows in _chunks(flat, k):
            ks, vs = gather_blocks(k, v, flat[rows])  # (p, 1, m S, d)
            inputs = (grad[rows, None], q[rows, None], ks, vs, out[rows, None], lse[rows, None])
            gq, gk, gv = _FLASH_BACKWARD(*inputs, 0.0, False, attn_mask=_bias(keys[rows], q.dtype))
            dq[rows] = gq[:, 0]
            index = flat[rows].flatten()  # a block chosen twice in the chunk gets both gradients
            dk.index_add_(0, index, gk.reshape(-1, S, d))
            dv.index_add_(0, index, gv.reshape(-1, S, d))
        return dq, dk, dv, None, None


def _chunks(flat: Tensor, k: Tensor) -> list[slice]:
    """Slices of the P query blocks, each gathering about CHUNK_ELEMENTS key elements."""
    P, m = flat.shape
    p = max(1, CHUNK_ELEMENTS // (m * k.shape[1] * k.shape[2]))
    return [slice(start, start + p) for start in range(0, P, p)]


def gather_blocks(k: Tensor, v: Tensor, flat: Tensor) -> tuple[Tensor, Tensor]:
    """The chosen blocks side by side: index (p, m) into (N, S, d) -> keys, values (p, 1, m S, d)."""
    p, m = flat.shape
    S, d = k.shape[1:]
    index = flat.flatten()
    return k.index_select(0, index).view(p, 1, m * S, d), v.index_select(0, index).view(p, 1, m * S, d)


def _bias(keys: Tensor, dtype: torch.dtype) -> Tensor:
    """Boolean keys (p, L) -> additive mask (p, 1, 1, L): the fused op takes no boolean mask."""
    return torch.zeros(keys.shape, dtype=dtype, device=keys.device).masked_fill_(~keys, float("-inf"))[:, None, None]
