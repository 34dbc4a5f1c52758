"""SB3 feature extractors over ``HistoryObservation`` dicts.

Shape letters: B batch, K history length, D per-step input size, E embedding, H heads, F features.
Both extractors are stateless: every call sees only the observation it is given.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import Tensor, nn

from rlattn.blocks import TransformerBlock
from rlattn.validation import check_int

HISTORY_ATTENTION = ("global", "local", "local-global")
POSITIONS = ("learned", "sinusoidal")
READOUTS = ("newest", "summary")
STEP_KEYS = ("obs", "action", "reward")
LENGTH_GROUP_SIZE = 64
"""batches of at least twice this many histories are sorted by valid length and run in groups"""
MAX_LENGTH_GROUPS = 4
LENGTH_GROUP_MIN_STEPS = 64
"""... when the longest holds at least this many valid steps. PPO steps/s with groups against without:
1.38x at corridor 300 (K = 301), 1.04x at 100, 0.87x at 10 and 30 (there the passes cost more than the padding)"""


def history_length(observation_space: spaces.Space) -> int:
    """K of a ``HistoryObservation`` space; a one-line ValueError for any other space."""
    expected = "a Dict with 'obs' (K, ...) and 'valid' (K,) Boxes, as made by rlattn.HistoryObservation"
    if not isinstance(observation_space, spaces.Dict) or not {"obs", "valid"} <= set(observation_space.spaces):
        raise ValueError(f"observation space {observation_space} is not supported: expected {expected}")
    unknown = set(observation_space.spaces) - {*STEP_KEYS, "valid"}
    if unknown:
        raise ValueError(f"observation keys {sorted(unknown)} are not supported: allowed are {STEP_KEYS + ('valid',)}")
    valid_shape = observation_space["valid"].shape or (0,)
    length = int(valid_shape[0])
    for key, space in observation_space.spaces.items():
        if not isinstance(space, spaces.Box) or len(space.shape) < 1 or space.shape[0] != length:
            raise ValueError(f"observation key {key!r} has space {space}: expected {expected}")
    return length


class HistoryExtractor(BaseFeaturesExtractor):
    """Shared parsing: turns the dict into per-step vectors (B, K, D) and a (B, K) bool mask.

    uint8 observations that SB3 does not normalise itself (anything but a single image) are scaled
    to [0, 1] here.
    """

    def __init__(self, observation_space: spaces.Dict, features_dim: int):
        super().__init__(observation_space, features_dim)
        self.history_length = history_length(observation_space)
        self.step_keys = [key for key in STEP_KEYS if key in observation_space.spaces]
        self.step_dim = sum(_step_size(observation_space[key]) for key in self.step_keys)
        obs_space = observation_space["obs"]
        obs_shape = obs_space.shape or ()
        if len(obs_shape) == 4:
            raise ValueError(
                f"observation steps of shape {obs_shape[1:]} are images: {type(self).__name__} embeds vectors; "
                "use SpatioTemporalAttentionExtractor (or PatchAttentionExtractor on single frames)"
            )
        own_scaling = obs_space.dtype == np.uint8 and not is_image_space(obs_space, check_channels=False)
        self.obs_scale = 1.0 / 255.0 if own_scaling else 1.0

    def step_features(self, observations: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """dict of (B, K, ...) -> steps (B, K, D), valid (B, K) bool with the newest step always valid."""
        parts = []
        for key in self.step_keys:
            x = observations[key].float().flatten(2)
            parts.append(x * self.obs_scale if key == "obs" and self.obs_scale != 1.0 else x)
        valid = observations["valid"] > 0.5  # a fresh tensor
        valid[:, -1] = True
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


def sinusoidal_table(length: int, dim: int) -> Tensor:
    """(length, dim) sin/cos encoding of 0 .. length-1 (Vaswani et al. 2017, section 3.5)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10_000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table


class HistoryAttentionExtractor(HistoryExtractor):
    """Transformer over the observation history; the newest step (or a summary token) is read out.

    ``(B, K, D), valid (B, K) -> (B, F)``. Each step is embedded (Linear, ReLU), tagged with its age
    (newest = 0), passed through pre-norm blocks with global, local (windowed) or top-k sparse
    attention over valid steps, and read out through LayerNorm and Linear (no activation: SB3's heads follow, and
    a ReLU here can die and leave the policy blind). The last block computes only the
    readout's query. Padding never changes the output.

    Pass ``ortho_init=False`` in PPO/A2C ``policy_kwargs``: SB3 would otherwise re-initialise these
    layers orthogonally (the GTrXL gate biases survive either way).

    :param observation_space: a ``HistoryObservation`` Dict space.
    :param features_dim: output size F.
    :param embed_dim: token size E.
    :param n_heads: attention heads per block (divides E).
    :param n_layers: transformer blocks.
    :param attention: ``"global"`` (all steps), ``"local"`` (the last ``window`` steps per block; cost
        linear in K), or ``"local-global"`` (local blocks below a last block whose readout query sees
        every step: linear in K too, since that block computes one query).
    :param window: local window, 1 .. K; only with the local kinds.
    :param top_k: sparse attention: each query keeps its ``top_k`` strongest keys; None keeps all.
    :param gate: ``"gru"`` (GTrXL gating, starts near identity) or ``"residual"``.
    :param position: ``"learned"`` (one vector per age) or ``"sinusoidal"``.
    :param readout: ``"newest"`` (the newest step's token) or ``"summary"`` (a learned token after it).
    :param mlp_ratio: feed-forward hidden size as a multiple of E.
    """

    position_table: Tensor

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
        gate: str = "gru",
        position: str = "learned",
        readout: str = "newest",
        mlp_ratio: float = 2.0,
    ):
        super().__init__(observation_space, features_dim)
        K = self.history_length
        _check_choice("attention", attention, HISTORY_ATTENTION)
        _check_choice("position", position, POSITIONS)
        _check_choice("readout", readout, READOUTS)
        for name, value in (
            ("features_dim", features_dim),
            ("embed_dim", embed_dim),
            ("n_heads", n_heads),
            ("n_layers", n_layers),
        ):
            check_int(name, value)
        n_tokens = K + (readout == "summary")
        if attention != "global" and (
            isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= n_tokens
        ):
            raise ValueError(
                f"window={window!r} is invalid: local attention needs an integer from 1 to {n_tokens} (history length plus summary token)"
            )
        if attention == "global" and window is not None:
            raise ValueError(
                f"window={window!r} is invalid with attention='global': use attention='local' or no window"
            )
        self.readout = readout
        self.embed = nn.Sequential(nn.Linear(self.step_dim, embed_dim), nn.ReLU())
        table = sinusoidal_table(n_tokens, embed_dim).flip(0)  # row i holds the age of slot i
        self.position = nn.Parameter(table * 0.1) if position == "learned" else None
        self.register_buffer("position_table", table, persistent=False)
        self.summary = nn.Parameter(torch.zeros(embed_dim)) if readout == "summary" else None
        self.blocks = nn.ModuleList(
            TransformerBlock(
                embed_dim,
                n_heads,
                mlp_ratio,
                gate,
                attention="global"
                if attention == "global" or (attention == "local-global" and i == n_layers - 1)
                else "local",
                window=None if attention == "global" else window,
                top_k=top_k,
            )
            for i in range(n_layers)
        )
        self.head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, features_dim))
        self.blocks.apply(_init_linear)

    def tokens(self, observations: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """dict -> tokens (B, K', E) with positions, and which are valid (B, K').

        K' is K (plus the summary token) less the oldest steps that are padding in every history.
        """
        steps, valid = self.step_features(observations)
        # Steps that are padding in every history of the batch cannot change any output: drop them
        # (early in episodes, or when K exceeds the episode length, most of the history is padding).
        start = int(valid.any(dim=0).byte().argmax())
        steps, valid = steps[:, start:], valid[:, start:]
        x = self.embed(steps)  # (B, K - start, E)
        if self.summary is not None:
            x = torch.cat([x, self.summary.expand(x.shape[0], 1, -1)], dim=1)
            valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
        x = x + (self.position if self.position is not None else self.position_table)[start:]
        return x, valid

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
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            x, _ = block(x, valid, n_queries=1 if last else None)
        return self.head(x[:, -1])

    @torch.no_grad()
    def attention_maps(self, observations: dict[str, Tensor]) -> Tensor:
        """What the readout attends to, per block: (B, n_layers, H, K + summary token) weights of the last query.

        Computed on the explicit path, only when asked (for TensorBoard and scoring).
        """
        x, valid = self.tokens(observations)
        n_tokens = self.history_length + (self.summary is not None)
        maps = []
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            x, weights = block(x, valid, n_queries=1 if last else None, need_weights=True)
            maps.append(F.pad(weights[:, :, -1], (n_tokens - weights.shape[-1], 0)))  # dropped padding weighs 0
        return torch.stack(maps, dim=1)


def _step_size(space: spaces.Space) -> int:
    shape = space.shape or (0,)
    return int(np.prod(shape[1:]))


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is invalid: allowed are {', '.join(allowed)}")


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
