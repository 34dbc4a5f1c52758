"""Building blocks for attention over image patches: patch embedding with 2-D positions, attention
pooling, readouts, and the pointer head that makes the policy the attention.

Shape letters: M images in a batch, C channels, N patches (a rows x cols grid), E embedding, H heads.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import Tensor, nn

from rlattn.attention import explicit_attention
from rlattn.blocks import TransformerBlock, init_linear, sinusoidal_table
from rlattn.validation import check_choice, check_int
from rlattn.wrappers import channel_last_frame

IMAGE_ATTENTION = ("global", "neighbourhood")
IMAGE_READOUTS = ("pool", "pointer", "summary")
FRAME_READOUTS = ("max", "pool", "summary")


def image_shape(space: spaces.Space, who: str, what: str | None = None) -> tuple[int, int, int]:
    """(C, H, W) of a channel-first image Box; a one-line ValueError for anything else, ``what`` naming it
    (default: the observation space).

    A Box that reads as channel-last (:func:`rlattn.wrappers.channel_last_frame`: its last axis its
    smallest and a channel count) is refused: SB3 moves the channels of uint8 images itself, but not of
    float ones (a ``VecNormalize``'d image, a float frame), which would be read with the height as
    channels and the channels as width."""
    what = what or f"observation space {space}"
    if isinstance(space, spaces.Box) and len(space.shape) == 2:
        raise ValueError(
            f"{what} has two axes, no channel axis: {who} needs channel-first (C, H, W) images; "
            "if it is a frame (H, W), rlattn.ChannelFirst(env) gives it one, (1, H, W); vector observations go to "
            "HistoryAttentionExtractor or HistoryFlattenExtractor"
        )
    if not isinstance(space, spaces.Box) or len(space.shape) != 3:
        raise ValueError(
            f"{what} is not an image: {who} needs channel-first (C, H, W) images; "
            "vector observations go to HistoryAttentionExtractor or HistoryFlattenExtractor (AttentionPPO: "
            "MlpPolicy; Dict ones: MultiInputPolicy)"
        )
    C, H, W = (int(n) for n in space.shape)
    if channel_last_frame(space):
        raise ValueError(
            f"{what} looks channel-last (its smallest axis, {W}, is the last): {who} reads channel-first "
            "(C, H, W) images; move the channels first on the env, before VecNormalize or a frame stack "
            "(rlattn.ChannelFirst(env))"
        )
    return C, H, W


def check_patch_size(patch_size: object, height: int, width: int) -> int:
    """``patch_size`` if it divides both sides of the image, else a one-line ValueError listing those that do."""
    side = math.gcd(height, width)
    allowed = [str(p) for p in range(1, side + 1) if side % p == 0]
    try:
        check_int("patch_size", patch_size)
        fits = height % patch_size == 0 and width % patch_size == 0  # type: ignore[operator]
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"patch_size={patch_size!r} does not divide the {height}x{width} image: allowed are {', '.join(allowed)}"
        )
    return int(patch_size)  # type: ignore[call-overload]


def sincos_grid(rows: int, cols: int, dim: int) -> Tensor:
    """(rows * cols, dim) 2-D position: half the channels encode the row, half the column."""
    half = dim // 2
    row = sinusoidal_table(rows, half).repeat_interleave(cols, dim=0)
    col = sinusoidal_table(cols, dim - half).repeat(rows, 1)
    return torch.cat([row, col], dim=-1)


class PatchEncoder(nn.Module):
    """``(M, C, H, W)`` pixels in [0, 1] -> patch tokens ``(M, N, E)``.

    A linear embedding of each patch (a strided convolution), a learned 2-D position (started from a
    sin/cos grid) and pre-norm transformer blocks with global, block-routed sparse (``top_k``: blocks
    of ``block_size`` patches in row-major order, each block attending to its ``top_k`` best and its
    own, with NSA's compressed branch) or neighbourhood attention.
    """

    def __init__(
        self,
        image: tuple[int, int, int],
        patch_size: int,
        embed_dim: int,
        n_heads: int,
        n_layers: int,
        attention: str,
        radius: int | None,
        gate: str,
        mlp_ratio: float,
        top_k: int | None = None,
        block_size: int = 16,
    ):
        super().__init__()
        C, H, W = image
        self.patch_size = check_patch_size(patch_size, H, W)
        self.grid = (H // patch_size, W // patch_size)
        check_choice("attention", attention, IMAGE_ATTENTION)
        pattern: dict[str, Any] = {"attention": attention}
        if attention == "neighbourhood":
            pattern |= {"grid": self.grid, "radius": 1 if radius is None else radius}
        elif radius is not None:
            raise ValueError(f"radius={radius!r} is invalid with attention='global': use attention='neighbourhood'")
        if top_k is not None:  # block-routed over the patches in row-major order, with the compressed branch
            pattern |= {"top_k": top_k, "block_size": block_size, "compress": True}
        self.embed = nn.Conv2d(C, embed_dim, patch_size, stride=patch_size)
        self.position = nn.Parameter(sincos_grid(*self.grid, embed_dim) * 0.5)
        self.blocks = nn.ModuleList(
            TransformerBlock(embed_dim, n_heads, mlp_ratio, gate, **pattern) for _ in range(n_layers)
        )
        self.blocks.apply(init_linear)

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def forward(self, pixels: Tensor) -> Tensor:
        """(M, C, H, W) -> (M, N, E), patches in row-major order."""
        x = self.embed(pixels).flatten(2).transpose(1, 2) + self.position  # (M, N, E)
        valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        for block in self.blocks:
            x, _ = block(x, valid)
        return x


class AttentionPool(nn.Module):
    """Readout: one query per head attends over the tokens: ``(M, N, E) -> (M, E)``.

    The query is learned (zero at the start, so the first readout is a plain mean), plus an optional
    per-sample offset (what memory says to look for).
    """

    def __init__(self, embed_dim: int, n_heads: int = 1):
        super().__init__()
        if embed_dim % n_heads:
            raise ValueError(f"embed_dim={embed_dim} is invalid: must be divisible by readout heads={n_heads}")
        self.n_heads = n_heads
        self.query = nn.Parameter(torch.zeros(embed_dim))
        self.norm = nn.LayerNorm(embed_dim)
        self.kv = nn.Linear(embed_dim, 2 * embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: Tensor, offset: Tensor | None = None, need_weights: bool = False):
        """(M, N, E), offset (M, E) or None -> (M, E), and weights (M, H, N) if asked."""
        M, N, E = x.shape
        query = self.query.expand(M, E) if offset is None else self.query + offset
        q = query.reshape(M, self.n_heads, 1, -1)  # (M, H, 1, d)
        k, v = self.kv(self.norm(x)).split(E, dim=-1)
        k = k.reshape(M, N, self.n_heads, -1).transpose(1, 2)  # (M, H, N, d)
        v = v.reshape(M, N, self.n_heads, -1).transpose(1, 2)
        if need_weights:
            mask = torch.ones(M, 1, 1, N, dtype=torch.bool, device=x.device)
            out, weights = explicit_attention(q, k, v, mask)
        else:
            out, weights = F.scaled_dot_product_attention(q, k, v), None
        out = self.proj(out.reshape(M, E))
        return out, (weights[:, :, 0] if weights is not None else None)


class PatchReadout(nn.Module):
    """Patch tokens -> one vector: attention pooling (``pool``, ``pointer``), a summary token in a
    last global block (``summary``), or each channel's maximum over the patches (``max``: what is in
    the image, however few patches hold it). A pointer also hands on its weights: where it looked is
    the answer."""

    def __init__(
        self,
        kind: str,
        embed_dim: int,
        n_heads: int,
        gate: str,
        mlp_ratio: float,
        name: str = "readout",
        pool_heads: int = 1,
    ):
        super().__init__()
        check_choice(name, kind, IMAGE_READOUTS if name == "readout" else FRAME_READOUTS)
        self.kind = kind
        self.pool = (
            AttentionPool(embed_dim, 1 if kind == "pointer" else pool_heads) if kind in ("pool", "pointer") else None
        )
        self.max = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, embed_dim)) if kind == "max" else None
        self.summary = nn.Parameter(torch.zeros(embed_dim)) if kind == "summary" else None
        self.block = TransformerBlock(embed_dim, n_heads, mlp_ratio, gate) if kind == "summary" else None
        if self.block is not None:
            self.block.apply(init_linear)

    def forward(self, x: Tensor, offset: Tensor | None = None, need_weights: bool = False):
        """(M, N, E), offset (M, E) or None -> (M, E), and the readout's weights over patches (M, H, N) if asked,
        each head's summing to 1 (a summary token's: its weights on the patches, renormalised without its own)."""
        if self.pool is not None:
            return self.pool(x, offset, need_weights or self.kind == "pointer")
        if self.max is not None:
            norm, project = self.max
            return project(norm(x).amax(dim=1) if offset is None else norm(x).amax(dim=1) + offset), None
        M, N, E = x.shape
        summary = self.summary.expand(M, E) if self.summary is not None else x.new_zeros(M, E)
        token = summary if offset is None else summary + offset  # (M, E)
        x = torch.cat([x, token[:, None]], dim=1)
        valid = torch.ones(M, N + 1, dtype=torch.bool, device=x.device)
        out, weights = self.block(x, valid, n_queries=1, need_weights=need_weights)  # type: ignore[misc]
        if weights is None:
            return out[:, 0], None
        # over the patches only: the summary token's weight on itself is no place in the frame
        on_patches = weights[:, :, 0, :N]
        return out[:, 0], on_patches / on_patches.sum(dim=-1, keepdim=True).clamp_min(
            torch.finfo(on_patches.dtype).tiny
        )


def pointer_features(weights: Tensor) -> Tensor:
    """(M, 1, N) pointer weights -> (M, N) log-weights: as action logits they make the policy the attention."""
    return weights[:, 0].clamp_min(1e-30).log()


def init_pointer_head(policy: nn.Module) -> bool:
    """Make an SB3 actor-critic's action logits start as its extractor's pointer log-weights.

    For a pointer readout (``readout="pointer"``) whose N patches are the N discrete actions (a patch
    per cell to choose) and an actor with no hidden layers (``net_arch=dict(pi=[], vf=[...])``): the
    action net's weights on the pointer features become the identity and the rest zero, so the
    first policy picks each cell with the probability the readout attends to it and every policy
    gradient step trains where to look. Returns whether it applied.
    """
    source = getattr(policy, "look_net", None)  # an episodic memory's look after the memory
    if source is None:
        source = getattr(policy, "pi_features_extractor", getattr(policy, "features_extractor", None))
    n_pointer = getattr(source, "pointer_size", 0)
    action_net = getattr(policy, "action_net", None)
    if not n_pointer or not isinstance(action_net, nn.Linear) or action_net.out_features != n_pointer:
        return False
    if action_net.in_features != source.features_dim:  # type: ignore[union-attr]
        return False  # hidden layers between features and actions
    with torch.no_grad():
        action_net.weight.zero_()
        action_net.weight[:, :n_pointer] = torch.eye(n_pointer)
        action_net.bias.zero_()
    return True


def check_sizes(features_dim: int, embed_dim: int, n_heads: int, **layers: int) -> None:
    """One-line ValueErrors for sizes that cannot build an extractor (layer counts may be 0)."""
    for name, value in (("features_dim", features_dim), ("embed_dim", embed_dim), ("n_heads", n_heads)):
        check_int(name, value)
    for name, value in layers.items():
        check_int(name, value, 0)
    if embed_dim % n_heads:
        raise ValueError(f"embed_dim={embed_dim} is invalid: must be divisible by n_heads={n_heads}")
