"""SB3 feature extractors over ``HistoryObservation`` dicts.

Shape letters: B batch, K history length, D per-step input size, E embedding, H heads, F features.
The history extractors are stateless: every call sees only the observation it is given.
:class:`StepEncoder` is the per-step input of a policy that keeps its own memory (RecurrentPPO's LSTM).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, FlattenExtractor
from torch import Tensor, nn

from rlattn.blocks import KeepsOwnInit, TransformerBlock, init_linear, sinusoidal_table
from rlattn.history import (
    STEP_KEYS,
    first_kept,
    history_length,
    image_steps,
    pixel_scale,
    raw_uint8,
    step_size,
    uint8_steps,
    valid_steps,
)
from rlattn.validation import check_choice, check_int

HISTORY_ATTENTION = ("global", "local")
POSITIONS = ("learned", "rotary", "none")
MLP_RATIO = 2.0
"""feed-forward hidden size as a multiple of E"""
LENGTH_GROUP_SIZE = 64
"""batches of at least twice this many histories are sorted by valid length and run in groups"""
MAX_LENGTH_GROUPS = 4
LENGTH_GROUP_MIN_STEPS = 64
"""... when the longest holds at least this many valid steps. PPO steps/s with groups against without:
1.38x at corridor 300 (K = 301), 1.04x at 100, 0.87x at 10 and 30 (there the passes cost more than the padding)"""


STEP_WIDTH = 64
"""the widest step :class:`StepEncoder` hands on unchanged; the width of its encoding of wider steps"""


class StepEncoder(BaseFeaturesExtractor):
    """One observed step for a policy with its own memory (sb3-contrib's ``RecurrentPPO``), at most ``features_dim`` wide.

    The step is flattened (a Dict step, such as a one-step history that holds the previous action, as SB3's
    ``CombinedExtractor`` flattens it). A step wider than ``features_dim`` then goes through Linear and ReLU
    to ``features_dim`` numbers, as the attention paths embed each step; a narrower one passes unchanged,
    with no parameters, so the policy is the one SB3's default extractor builds.

    Why: RecurrentPPO's update runs its LSTMs one step at a time wherever an episode starts inside a
    sequence, and each such step costs in proportion to the LSTM's input width. On MiniGrid's Memory
    tasks (1,180 numbers a step once the image's indices are codes) ``RecurrentPPO`` ran at 48 env steps/s
    with SB3's flattening and at 305 with this encoder (one core, 4,096 steps; README, "On tasks we did not
    write").

    :param observation_space: a Box, or a Dict of Boxes, Discretes and the like.
    :param features_dim: the widest step handed on; wider steps are encoded to this many numbers.
    """

    def __init__(self, observation_space: spaces.Space, features_dim: int = STEP_WIDTH):
        check_int("features_dim", features_dim)
        if isinstance(observation_space, spaces.Dict):
            flatten: BaseFeaturesExtractor = CombinedExtractor(observation_space)
        else:
            flatten = FlattenExtractor(observation_space)
        width = flatten.features_dim
        super().__init__(observation_space, min(width, features_dim))
        self.flatten = flatten
        self.encode: nn.Module = (
            nn.Sequential(nn.Linear(width, features_dim), nn.ReLU()) if width > features_dim else nn.Identity()
        )

    def forward(self, observations: Tensor | dict[str, Tensor]) -> Tensor:
        return self.encode(self.flatten(observations))


class HistoryExtractor(BaseFeaturesExtractor):
    """Shared parsing: turns the dict into per-step vectors (B, K, D) and a (B, K) bool mask.

    uint8 observations that SB3 does not normalise itself (anything but a single image) are scaled
    to [0, 1] here.
    """

    def __init__(self, observation_space: spaces.Dict, features_dim: int):
        check_int("features_dim", features_dim)  # before SB3's bare assert
        super().__init__(observation_space, features_dim)
        self.history_length = history_length(observation_space)
        self.step_keys = [key for key in STEP_KEYS if key in observation_space.spaces]
        self.step_dim = sum(step_size(observation_space[key]) for key in self.step_keys)
        obs_space = observation_space["obs"]
        obs_shape = obs_space.shape or ()
        if image_steps(obs_space):
            raise ValueError(
                f"observation steps of shape {obs_shape[1:]} are images: {type(self).__name__} embeds vectors; "
                "use SpatioTemporalAttentionExtractor (or PatchAttentionExtractor on single frames)"
            )
        self.obs_scale = pixel_scale(obs_space)
        self.obs_uint8 = uint8_steps(obs_space)

    def step_features(self, observations: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """dict of (B, K, ...) -> steps (B, K, D), valid (B, K) bool with the newest step always valid."""
        valid = valid_steps(observations)
        parts = []
        for key in self.step_keys:
            x = observations[key].float().flatten(2)
            if key == "obs" and self.obs_uint8 and not torch.is_grad_enabled():
                raw_uint8(x, key)  # rollouts (no grad) see what VecNormalize made; training sees SB3's buffer
            parts.append(x * self.obs_scale if key == "obs" and self.obs_scale != 1.0 else x)
        steps = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        steps = steps.masked_fill(~valid[..., None], 0.0)  # padding never enters the math
        return steps, valid


class HistoryFlattenExtractor(HistoryExtractor):
    """Baseline: the masked history flattened into one vector, then an MLP layer.

    ``(B, K, D), valid (B, K) -> (B, F)``. With K = 1 this is a memoryless MLP on the newest step.

    :param observation_space: a ``HistoryObservation`` Dict space.
    :param features_dim: output size F.
    """

    def __init__(self, observation_space: spaces.Dict, features_dim: int = 128):
        super().__init__(observation_space, features_dim)
        in_dim = self.history_length * (self.step_dim + 1)
        self.net = nn.Sequential(nn.Linear(in_dim, features_dim), nn.ReLU())

    def forward(self, observations: dict[str, Tensor]) -> Tensor:
        steps, valid = self.step_features(observations)
        return self.net(torch.cat([steps, valid[..., None].float()], dim=-1).flatten(1))


class HistoryAttentionExtractor(KeepsOwnInit, HistoryExtractor):
    """Transformer over the observation history; the newest step's token is read out.

    ``(B, K, D), valid (B, K) -> (B, F)``. Each step is embedded (Linear, ReLU), tagged with its age
    (newest = 0), passed through pre-norm blocks with global, local (windowed) or top-k sparse
    attention over valid steps, and read out through LayerNorm and Linear (no activation: SB3's heads follow, and
    a ReLU here can die and leave the policy blind). The last block computes only the
    readout's query. Padding never changes the output.

    SB3's ``ortho_init`` leaves this extractor's own init alone (:class:`~rlattn.blocks.KeepsOwnInit`):
    PPO and A2C build the same extractor with or without ``ortho_init=False``.

    :param observation_space: a ``HistoryObservation`` Dict space.
    :param features_dim: output size F.
    :param embed_dim: token size E.
    :param n_heads: attention heads per block (divides E).
    :param n_layers: transformer blocks.
    :param attention: ``"global"`` (all steps) or ``"local"`` (the last ``window`` steps per block;
        cost linear in K).
    :param window: local window, 1 .. K; only with ``"local"``.
    :param top_k: block-routed sparse attention (global only): each block of ``block_size`` steps
        attends to its ``top_k`` best-scoring blocks of steps plus its own; None attends to all.
    :param block_size: steps per block with ``top_k`` (default 64).
    :param compress: with ``top_k``, NSA's compressed branch beside the routed blocks (each block's
        routing query also attends to every other block's mean key and value, and its steps add the
        result through a learned gate), which trains the router's scores on blocks it did not choose
        (:func:`~rlattn.block_sparse.compressed_attention`).
    :param length_scale: multiply each head's attention logits by ``s_h log n`` (n: the steps it may
        see, s_h learned): Scalable-Softmax, so a head can keep its weight on one step however long
        the history (:class:`~rlattn.attention.MultiHeadAttention`).
    :param gate: ``"gru"`` (GTrXL gating, starts near identity) or ``"residual"`` (faster: see the
        README's throughput table).
    :param position: ``"learned"`` (a vector per age added to each token) or ``"rotary"`` (no added
        vector: queries and keys rotated by their slot inside attention, so scores depend only on
        the age difference; the same numbers as :class:`~rlattn.episodic.EpisodicTransformer` with
        the same weights, whose parameter names these match; the head size E/H must be even), or
        ``"none"`` (content alone; equals the episodic transformer with ``position="none"``).
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        features_dim: int = 128,
        embed_dim: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        attention: str = "global",
        window: int | None = None,
        top_k: int | None = None,
        block_size: int = 64,
        compress: bool = False,
        length_scale: bool = False,
        gate: str = "gru",
        position: str = "learned",
    ):
        super().__init__(observation_space, features_dim)
        K = self.history_length
        check_choice("attention", attention, HISTORY_ATTENTION)
        position = check_choice("position", position, POSITIONS)
        self.rotary = position == "rotary"
        for name, value in (
            ("features_dim", features_dim),
            ("embed_dim", embed_dim),
            ("n_heads", n_heads),
            ("n_layers", n_layers),
        ):
            check_int(name, value)
        if attention == "local":
            try:
                check_int("window", window, 1, K)
            except ValueError:
                raise ValueError(
                    f"window={window!r} is invalid: local attention needs an integer from 1 to {K} (the history length)"
                ) from None
        elif window is not None:
            raise ValueError(
                f"window={window!r} is invalid with attention='global': use attention='local' or no window"
            )
        if self.rotary and (embed_dim % n_heads or (embed_dim // n_heads) % 2):
            raise ValueError(
                f"embed_dim={embed_dim} is invalid with position='rotary' and n_heads={n_heads}: "
                "each head's size embed_dim / n_heads must be an even integer"
            )
        self.embed = nn.Sequential(nn.Linear(self.step_dim, embed_dim), nn.ReLU())
        self.position: nn.Parameter | None = None
        if position == "learned":
            self.position = nn.Parameter(sinusoidal_table(K, embed_dim).flip(0) * 0.1)  # row i holds the age of slot i
        self.blocks = nn.ModuleList(
            TransformerBlock(
                embed_dim,
                n_heads,
                MLP_RATIO,
                gate,
                attention=attention,
                window=window,
                top_k=top_k,
                block_size=block_size,
                compress=compress,
                length_scale=length_scale,
            )
            for _ in range(n_layers)
        )
        self.head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, features_dim))
        self.blocks.apply(init_linear)

    def tokens(self, observations: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """dict -> tokens (B, K', E) with learned positions (none if rotary), and which are valid (B, K').

        K' is K less the oldest steps that are padding in every history (:func:`first_kept`).
        """
        steps, valid = self.step_features(observations)
        start = first_kept(valid)
        steps, valid = steps[:, start:], valid[:, start:]
        if self.position is None:
            return self.embed(steps), valid
        return self.embed(steps) + self.position[start:], valid  # (B, K - start, E)

    def slots(self, x: Tensor) -> Tensor | None:
        """Rotary positions of the tokens x (B, K', E): their slot indices (K',); None with learned positions."""
        return torch.arange(x.shape[1], device=x.device) if self.rotary else None

    def forward(self, observations: dict[str, Tensor]) -> Tensor:
        n_groups = len(next(iter(observations.values()))) // LENGTH_GROUP_SIZE
        if n_groups < 2:
            return self._forward(observations)
        lengths = observations["valid"].sum(dim=1)
        if int(lengths.max()) < LENGTH_GROUP_MIN_STEPS:
            return self._forward(observations)
        # PPO minibatches mix early and late episode steps: histories of similar length go through
        # together, each group cut to its own longest (less padding, same numbers: rows are independent)
        order = lengths.argsort()
        out = None
        for group in order.tensor_split(min(n_groups, MAX_LENGTH_GROUPS)):
            part = self._forward({key: value.index_select(0, group) for key, value in observations.items()})
            out = part.new_empty(len(order), part.shape[-1]) if out is None else out
            out = out.index_copy(0, group, part)
        assert out is not None
        return out

    def _forward(self, observations: dict[str, Tensor]) -> Tensor:
        x, valid = self.tokens(observations)
        positions = self.slots(x)
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            x, _ = block(x, valid, n_queries=1 if last else None, positions=positions)
        return self.head(x[:, -1])

    @torch.no_grad()
    def attention_maps(self, observations: dict[str, Tensor]) -> Tensor:
        """What the readout attends to, per block: (B, n_layers, H, K) weights of the newest step's query.

        Computed on the explicit path, only when asked (for TensorBoard and scoring).
        """
        x, valid = self.tokens(observations)
        positions = self.slots(x)
        n_tokens = self.history_length
        maps = []
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            x, weights = block(x, valid, n_queries=1 if last else None, need_weights=True, positions=positions)
            maps.append(F.pad(weights[:, :, -1], (n_tokens - weights.shape[-1], 0)))  # dropped padding weighs 0
        return torch.stack(maps, dim=1)
