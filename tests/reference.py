"""Plain, slow reference implementations that the fast paths are tested against."""

import math

import torch


def reference_attention(q, k, v, allowed):
    """Loop-free textbook softmax attention: (B, H, Q, E), (B, H, K, E) x2, allowed (B, 1, Q, K) bool."""
    scores = torch.einsum("bhqe,bhke->bhqk", q, k) / math.sqrt(q.shape[-1])
    scores = torch.where(allowed, scores, torch.full_like(scores, -math.inf))
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    weights = weights / weights.sum(-1, keepdim=True)
    return torch.einsum("bhqk,bhke->bhqe", weights, v), weights


def reference_mask(valid, kind, window=None):
    """Element by element: query i may see key j if the structure allows it and j is valid, or j == i."""
    B, K = valid.shape
    allowed = torch.zeros(B, 1, K, K, dtype=torch.bool)
    for b in range(B):
        for i in range(K):
            for j in range(K):
                structural = kind == "global" or (0 <= i - j < window)
                allowed[b, 0, i, j] = (structural and bool(valid[b, j])) or i == j
    return allowed
