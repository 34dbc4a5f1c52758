"""Plain, slow reference implementations that the fast paths are tested against."""

import math

import torch


def reference_attention(q, k, v, allowed):
    """Textbook softmax attention: (B, H, Q, E), (B, H, K, E) x2, allowed (B, 1, Q, K) bool.

    Computed in float64 (float32 batched products here were seen to differ by 1e-4 from run to run) and
    returned in the inputs' dtype.
    """
    dtype = q.dtype
    q, k, v = q.double(), k.double(), v.double()
    scores = torch.einsum("bhqe,bhke->bhqk", q, k) / math.sqrt(q.shape[-1])
    scores = torch.where(allowed, scores, torch.full_like(scores, -math.inf))
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    weights = weights / weights.sum(-1, keepdim=True)
    return torch.einsum("bhqk,bhke->bhqe", weights, v).to(dtype), weights.to(dtype)


def reference_mask(valid, kind, window=None, n_queries=None):
    """Element by element: query i (the newest Q steps) may see key j if the structure allows it and j is valid, or j == i."""
    B, K = valid.shape
    Q = K if n_queries is None else n_queries
    allowed = torch.zeros(B, 1, Q, K, dtype=torch.bool)
    for b in range(B):
        for qi in range(Q):
            i = K - Q + qi
            for j in range(K):
                structural = kind == "global" or (0 <= i - j < window)
                allowed[b, 0, qi, j] = (structural and bool(valid[b, j])) or i == j
    return allowed


def reference_grid_mask(valid, rows, cols, radius):
    """Element by element: cell (r, c) may see valid cells within ``radius`` rows and columns, and itself."""
    B, N = valid.shape
    allowed = torch.zeros(B, 1, N, N, dtype=torch.bool)
    for b in range(B):
        for i in range(N):
            for j in range(N):
                near = abs(i // cols - j // cols) <= radius and abs(i % cols - j % cols) <= radius
                allowed[b, 0, i, j] = (near and bool(valid[b, j])) or i == j
    return allowed
