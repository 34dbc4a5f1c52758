"""SB3 feature extractors over images: attention across the patches of a frame, and across frames.

Shape letters: B batch, K history length, M frames in a batch, C channels, N patches (a rows x cols
grid), E embedding, H heads, F features. Both extractors are stateless.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import Tensor, nn

from rlattn.blocks import KeepsOwnInit, TransformerBlock, init_linear, sinusoidal_table
from rlattn.history import (
    STEP_KEYS,
    first_kept,
    history_length,
    pixel_scale,
    raw_uint8,
    sb3_scales,
    scaled_pixels,
    step_size,
    uint8_steps,
    valid_steps,
)
from rlattn.patches import (
    IMAGE_READOUTS,
    PatchEncoder,
    PatchReadout,
    check_patch_size,
    check_sizes,
    image_shape,
    pointer_features,
)
from rlattn.validation import check_choice


class PatchAttentionExtractor(KeepsOwnInit, BaseFeaturesExtractor):
    """Attention over the patches of one image: ``(B, C, H, W) -> (B, F)``.

    Patches are embedded with their 2-D position, mixed by transformer blocks (global, or each patch
    with its neighbourhood: linear cost in the number of patches) and read out by attention pooling
    (one learned query), a pointer (the pool, whose weights over the patches are also features) or
    a summary token. A pool's weights need not point at what matters: trained to locate a target,
    it can learn to look everywhere else and read the target's place from what is missing (we saw
    0.01 of its weight on the target at 100% accuracy); a pointer's cannot, when the action is a
    patch. Pixels are scaled to [0, 1] here unless SB3 already did (it does for single uint8 images).

    SB3's ``ortho_init`` leaves these layers' own init alone (:class:`~rlattn.blocks.KeepsOwnInit`).

    :param observation_space: a channel-first image Box (C, H, W).
    :param features_dim: output size F.
    :param patch_size: patch side in pixels; must divide H and W.
    :param embed_dim: token size E.
    :param n_heads: heads per block (divides E).
    :param n_layers: transformer blocks over the patches (0: the readout looks at raw patch embeddings).
    :param attention: ``"global"`` or ``"neighbourhood"`` (each patch sees patches within ``radius``).
    :param radius: neighbourhood radius in patches (default 1); only with ``"neighbourhood"``.
    :param top_k: block-routed sparse attention over the patches (``attention="global"``): blocks of
        ``block_size`` patches in row-major order, each attending to its ``top_k`` best-scoring blocks
        and its own, with NSA's compressed branch (:class:`~rlattn.attention.MultiHeadAttention`);
        None attends to every patch.
    :param block_size: patches per block with ``top_k`` (default 16).
    :param readout: ``"pool"`` (attention pooling, one head), ``"pointer"`` (the same, and its
        log-weights over the N patches come first in the features, for tasks whose action is a patch:
        see :func:`init_pointer_head`; the output is then N + F wide) or ``"summary"`` (a summary token).
    :param gate: ``"gru"`` (GTrXL gating) or ``"residual"``.
    :param mlp_ratio: feed-forward hidden size as a multiple of E.
    """

    def __init__(
        self,
        observation_space: spaces.Box,
        features_dim: int = 64,
        patch_size: int = 8,
        embed_dim: int = 64,
        n_heads: int = 4,
        n_layers: int = 1,
        attention: str = "global",
        radius: int | None = None,
        top_k: int | None = None,
        block_size: int = 16,
        readout: str = "pool",
        gate: str = "gru",
        mlp_ratio: float = 2.0,
    ):
        image = image_shape(observation_space, "PatchAttentionExtractor")
        check_sizes(features_dim, embed_dim, n_heads, n_layers=n_layers)
        encoder = PatchEncoder(
            image, patch_size, embed_dim, n_heads, n_layers, attention, radius, gate, mlp_ratio, top_k, block_size
        )
        self.pointer_size = encoder.n_patches if readout == "pointer" else 0
        super().__init__(observation_space, self.pointer_size + features_dim)
        self.scale = pixel_scale(observation_space)
        self.scaled_by_sb3 = sb3_scales(observation_space)
        self.encoder = encoder
        self.readout = PatchReadout(readout, embed_dim, n_heads, gate, mlp_ratio)
        self.head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, features_dim))

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the patch grid."""
        return self.encoder.grid

    def forward(self, observations: Tensor) -> Tensor:
        if self.scaled_by_sb3 and not torch.is_grad_enabled():
            scaled_pixels(observations, type(self).__name__)  # rollouts (no grad) come before any update
        out, weights = self.readout(self.encoder(observations.float() * self.scale))
        features = self.head(out)
        return torch.cat([pointer_features(weights), features], dim=-1) if self.pointer_size else features

    @torch.no_grad()
    def attention_maps(self, observations: Tensor) -> Tensor:
        """Where the readout looked: (B, H, rows, cols), each head's weights summing to 1."""
        _, weights = self.readout(self.encoder(observations.float() * self.scale), need_weights=True)
        return weights.reshape(weights.shape[0], weights.shape[1], *self.grid)


class SpatioTemporalAttentionExtractor(KeepsOwnInit, BaseFeaturesExtractor):
    """Attention within frames and across them, over a ``HistoryObservation`` of images.

    ``obs (B, K, C, H, W), valid (B, K) -> (B, F)``. Every valid frame is encoded by a shared
    :class:`PatchEncoder` and pooled to one token; padded frames are never computed. Transformer
    blocks over the frame tokens (tagged with their age) give a memory vector at the newest step;
    the memory then steers a readout query over the newest frame's patches (what to look for, found
    where). Features are the memory and that readout. ``action`` / ``reward`` history keys, when
    present, are embedded and added to their frame's token.

    :param observation_space: a ``HistoryObservation`` Dict whose ``obs`` holds (K, C, H, W) images.
    :param features_dim: output size F.
    :param patch_size: patch side in pixels; must divide H and W.
    :param embed_dim: token size E.
    :param n_heads: heads per block (divides E).
    :param spatial_layers: blocks over each frame's patches.
    :param temporal_layers: blocks over the frame tokens.
    :param attention: within frames, ``"global"`` or ``"neighbourhood"``.
    :param radius: neighbourhood radius in patches (default 1).
    :param top_k: block-routed sparse attention over the patches (``attention="global"``): blocks of
        ``block_size`` patches in row-major order, each attending to its ``top_k`` best-scoring blocks
        and its own, with NSA's compressed branch (:class:`~rlattn.attention.MultiHeadAttention`);
        None attends to every patch.
    :param block_size: patches per block with ``top_k`` (default 16).
    :param readout: the final look over the newest frame: ``"pool"``, ``"summary"`` or ``"pointer"``
        (its log-weights over the N patches come first in the features, N + F wide; see
        :func:`init_pointer_head`).
    :param frame_readout: one token per frame: ``"max"`` (each channel's maximum over the patches),
        ``"pool"`` or ``"summary"``. On the cued search a mean-like pool drowned the cue's 4 patches
        in 60 empty ones and nothing was learned; with ``"max"`` a supervised fit solved it.
    :param gate: ``"gru"`` or ``"residual"``.
    :param mlp_ratio: feed-forward hidden size as a multiple of E.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        features_dim: int = 64,
        patch_size: int = 8,
        embed_dim: int = 64,
        n_heads: int = 4,
        spatial_layers: int = 1,
        temporal_layers: int = 1,
        attention: str = "global",
        radius: int | None = None,
        top_k: int | None = None,
        block_size: int = 16,
        readout: str = "pool",
        frame_readout: str = "max",
        gate: str = "gru",
        mlp_ratio: float = 2.0,
    ):
        K = history_length(observation_space)
        frames = observation_space["obs"]
        assert isinstance(frames, spaces.Box)
        image = image_shape(
            spaces.Box(frames.low[0], frames.high[0], dtype=frames.dtype),
            "SpatioTemporalAttentionExtractor",
            f"a history step of shape {frames.shape[1:]}"
            + (
                " (if they are 2-D uint8 frames (H, W), which HistoryObservation flattens, give them a channel axis "
                "first: rlattn.ChannelFirst(env) under the history makes them (1, H, W))"
                if frames.dtype == np.uint8 and len(frames.shape) == 2
                else ""
            ),
        )
        check_sizes(features_dim, embed_dim, n_heads, spatial_layers=spatial_layers, temporal_layers=temporal_layers)
        encoder = PatchEncoder(
            image, patch_size, embed_dim, n_heads, spatial_layers, attention, radius, gate, mlp_ratio, top_k, block_size
        )
        self.pointer_size = encoder.n_patches if readout == "pointer" else 0
        super().__init__(observation_space, self.pointer_size + features_dim)
        self.history_length = K
        self.scale = pixel_scale(frames)
        self.frames_uint8 = uint8_steps(frames)
        self.extra_keys = [key for key in STEP_KEYS[1:] if key in observation_space.spaces]
        extra = sum(step_size(observation_space[key]) for key in self.extra_keys)
        self.extra = nn.Linear(extra, embed_dim) if extra else None
        self.encoder = encoder
        self.frame_readout = PatchReadout(frame_readout, embed_dim, n_heads, gate, mlp_ratio, name="frame_readout")
        self.position = nn.Parameter(sinusoidal_table(K, embed_dim).flip(0) * 0.1)  # row i: the age of slot i
        self.blocks = nn.ModuleList(
            TransformerBlock(embed_dim, n_heads, mlp_ratio, gate) for _ in range(temporal_layers)
        )
        self.blocks.apply(init_linear)
        self.steer = nn.Linear(embed_dim, embed_dim)  # not zero-initialised: from zero it never left the plateau
        self.look = PatchReadout(readout, embed_dim, n_heads, gate, mlp_ratio)
        self.head = nn.Sequential(nn.LayerNorm(2 * embed_dim), nn.Linear(2 * embed_dim, features_dim))

    @property
    def grid(self) -> tuple[int, int]:
        return self.encoder.grid

    def _encode(self, observations: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, int]:
        """-> frame tokens (B, K', E), valid (B, K'), the newest frame's patches (B, N, E), first slot kept."""
        valid = valid_steps(observations)
        start = first_kept(valid)  # slots that are padding everywhere: never computed
        valid = valid[:, start:]
        frames = observations["obs"][:, start:]
        if self.frames_uint8 and not torch.is_grad_enabled():  # rollouts see what VecNormalize made
            raw_uint8(frames, "obs")
        B, K = valid.shape
        which = valid.flatten().nonzero().squeeze(1)
        patches = self.encoder(frames.flatten(0, 1)[which].float() * self.scale)  # (M, N, E)
        pooled, _ = self.frame_readout(patches)
        tokens = pooled.new_zeros(B * K, pooled.shape[-1]).index_copy(0, which, pooled).view(B, K, -1)
        if self.extra is not None:
            parts = [observations[key][:, start:].float().flatten(2) for key in self.extra_keys]
            tokens = tokens + self.extra(torch.cat(parts, dim=-1)).masked_fill(~valid[..., None], 0.0)
        newest = patches[valid.sum(dim=1).cumsum(0) - 1]  # each history's last valid frame is its newest
        return tokens + self.position[start:], valid, newest, start

    def _memory(self, tokens: Tensor, valid: Tensor, need_weights: bool = False) -> tuple[Tensor, list[Tensor]]:
        maps = []
        x = tokens
        for i, block in enumerate(self.blocks):
            x, weights = block(x, valid, n_queries=1 if i == len(self.blocks) - 1 else None, need_weights=need_weights)
            maps.append(weights)
        return x[:, -1] if self.blocks else tokens[:, -1], maps

    def forward(self, observations: dict[str, Tensor]) -> Tensor:
        tokens, valid, newest, _ = self._encode(observations)
        memory, _ = self._memory(tokens, valid)
        seen, weights = self.look(newest, self.steer(memory))
        features = self.head(torch.cat([memory, seen], dim=-1))
        return torch.cat([pointer_features(weights), features], dim=-1) if self.pointer_size else features

    @torch.no_grad()
    def attention_maps(self, observations: dict[str, Tensor]) -> Tensor:
        """Where the final look went on the newest frame: (B, H, rows, cols)."""
        tokens, valid, newest, _ = self._encode(observations)
        memory, _ = self._memory(tokens, valid)
        _, weights = self.look(newest, self.steer(memory), need_weights=True)
        return weights.reshape(weights.shape[0], weights.shape[1], *self.grid)

    @torch.no_grad()
    def temporal_maps(self, observations: dict[str, Tensor]) -> Tensor:
        """What the newest step attends to across time, per block: (B, temporal_layers, H, K)."""
        tokens, valid, _, start = self._encode(observations)
        _, maps = self._memory(tokens, valid, need_weights=True)
        if not maps:  # no temporal blocks: nothing attends across time
            return tokens.new_zeros(tokens.shape[0], 0, 1, self.history_length)
        return torch.stack([F.pad(w[:, :, -1], (start, 0)) for w in maps], dim=1)


FRAME_PATCH_SIZE = 8
"""FramePatchExtractor's default patch side in pixels"""


class FramePatchExtractor(KeepsOwnInit, BaseFeaturesExtractor):
    """One image frame per step for an episodic memory (``AttentionPPO("PatchPolicy", ...)``).

    Each frame is encoded once: its patch tokens ``(B, N, E)`` (a :class:`PatchEncoder`) and one frame
    token ``(B, E)`` from them (``frame_readout``), which is what the memory remembers. After the
    memory, :class:`MemoryLook` lets the memory steer a readout over the same frame's patches
    (what to look for, found where), as :class:`SpatioTemporalAttentionExtractor` does over a
    stateless history. ``forward`` gives the frame token alone, so SB3 code that only calls the
    extractor still works.

    :param observation_space: a channel-first image Box (C, H, W).
    :param patch_size: patch side in pixels; must divide H and W.
    :param embed_dim: token size E (the memory's input size).
    :param n_heads: heads per spatial block (divides E).
    :param spatial_layers: transformer blocks over each frame's patches (0: raw patch embeddings).
    :param attention: within frames, ``"global"`` or ``"neighbourhood"``.
    :param radius: neighbourhood radius in patches (default 1).
    :param top_k: block-routed sparse attention over the patches (``attention="global"``): blocks of
        ``block_size`` patches in row-major order, each attending to its ``top_k`` best-scoring blocks
        and its own, with NSA's compressed branch (:class:`~rlattn.attention.MultiHeadAttention`);
        None attends to every patch.
    :param block_size: patches per block with ``top_k`` (default 16).
    :param frame_readout: the frame token: ``"max"`` (each channel's maximum over the patches: a cue on
        4 of 64 patches survives it), ``"pool"`` or ``"summary"``.
    :param readout: the look after the memory: ``"pointer"`` (its log-weights over the N patches come
        first in the policy's features; with N discrete actions the policy starts as the look),
        ``"pool"`` or ``"summary"``. :class:`~rlattn.episodic_policy.AttentionPatchPolicy` picks the
        pointer when each action is a patch, else the pool.
    :param gate: ``"gru"`` or ``"residual"`` (spatial blocks and a summary readout).
    :param mlp_ratio: feed-forward hidden size as a multiple of E.
    :param look_dim: features the look adds after the memory (besides a pointer's log-weights).
    """

    def __init__(
        self,
        observation_space: spaces.Box,
        patch_size: int = FRAME_PATCH_SIZE,
        embed_dim: int = 64,
        n_heads: int = 4,
        spatial_layers: int = 0,
        attention: str = "global",
        radius: int | None = None,
        top_k: int | None = None,
        block_size: int = 16,
        frame_readout: str = "max",
        readout: str = "pointer",
        gate: str = "residual",
        mlp_ratio: float = 2.0,
        look_dim: int = 64,
    ):
        image = image_shape(observation_space, "FramePatchExtractor")
        check_sizes(look_dim, embed_dim, n_heads, spatial_layers=spatial_layers)
        encoder = PatchEncoder(
            image, patch_size, embed_dim, n_heads, spatial_layers, attention, radius, gate, mlp_ratio, top_k, block_size
        )
        check_choice("readout", readout, IMAGE_READOUTS)
        super().__init__(observation_space, embed_dim)
        self.scale = pixel_scale(observation_space)
        self.scaled_by_sb3 = sb3_scales(observation_space)
        self.encoder = encoder
        self.frame_readout = PatchReadout(frame_readout, embed_dim, n_heads, gate, mlp_ratio, name="frame_readout")
        self.look_kwargs: dict[str, Any] = {
            "readout": readout,
            "n_heads": n_heads,
            "gate": gate,
            "mlp_ratio": mlp_ratio,
        }
        self.look_dim = look_dim

    @property
    def grid(self) -> tuple[int, int]:
        return self.encoder.grid

    @property
    def n_patches(self) -> int:
        return self.encoder.n_patches

    @staticmethod
    def count_patches(observation_space: spaces.Space, patch_size: int = FRAME_PATCH_SIZE) -> int:
        """How many patches a frame of this space has (a one-line ValueError if the size does not tile it)."""
        _, H, W = image_shape(observation_space, "FramePatchExtractor")
        side = check_patch_size(patch_size, H, W)
        return (H // side) * (W // side)

    def patches(self, observations: Tensor) -> Tensor:
        """(B, C, H, W) -> patch tokens (B, N, E)."""
        if self.scaled_by_sb3 and not torch.is_grad_enabled():
            scaled_pixels(observations, type(self).__name__)  # rollouts (no grad) come before any update
        return self.encoder(observations.float() * self.scale)

    def frame(self, patches: Tensor) -> Tensor:
        """Patch tokens (B, N, E) -> the frame token the memory remembers (B, E)."""
        return self.frame_readout(patches)[0]

    def forward(self, observations: Tensor) -> Tensor:
        return self.frame(self.patches(observations))

    def look(self, memory_dim: int) -> MemoryLook:
        """The readout after a memory whose features are ``memory_dim`` wide."""
        return MemoryLook(self.features_dim, memory_dim, self.n_patches, self.look_dim, **self.look_kwargs)


class MemoryLook(KeepsOwnInit):
    """After an episodic memory: the memory steers a readout over the current frame's patches.

    ``patches (B, N, E), memory (B, F) -> (B, P + look_dim)``: a pointer's log-weights over the N
    patches first (P = N, else 0), then ``look_dim`` features from the memory and what was seen. A
    pointer looks with one head; a pool with ``n_heads``, each free to look at a different place.
    """

    def __init__(
        self,
        embed_dim: int,
        memory_dim: int,
        n_patches: int,
        look_dim: int,
        readout: str = "pointer",
        n_heads: int = 4,
        gate: str = "residual",
        mlp_ratio: float = 2.0,
    ):
        super().__init__()
        self.pointer_size = n_patches if readout == "pointer" else 0
        self.features_dim = self.pointer_size + look_dim
        self.steer = nn.Linear(memory_dim, embed_dim)  # not zero-initialised: from zero it never left the plateau
        # a pool looks with every head (one place each: the target's and the cursor's, say); a pointer with one
        self.look = PatchReadout(readout, embed_dim, n_heads, gate, mlp_ratio, pool_heads=n_heads)
        self.head = nn.Sequential(nn.LayerNorm(memory_dim + embed_dim), nn.Linear(memory_dim + embed_dim, look_dim))

    def forward(self, patches: Tensor, memory: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """-> features (B, P + look_dim), and the look's weights over the patches (B, H, N) if asked or a pointer."""
        seen, weights = self.look(patches, self.steer(memory), need_weights=need_weights)
        features = self.head(torch.cat([memory, seen], dim=-1))
        if self.pointer_size:
            features = torch.cat([pointer_features(weights), features], dim=-1)
        return features, weights
