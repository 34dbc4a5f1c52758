"""Episodic memory: each step is encoded once, and a transformer attends over the episode's last W steps.

Shape letters: B envs (sequences), T steps, P carried-in steps, W memory window, L layers, D input
size, E embedding, H heads, d = E/H per head, F features, X extra inputs per step.

Positions are rotary (see :mod:`rlattn.attention`): a key is rotated once by its step's absolute
position in the episode and stays valid as the step ages; or there are none (``position="none"``:
order comes only from the causal mask and the window). Either way the cache stays valid. Two
computations give the same numbers
(tests hold this, and that both equal :class:`~rlattn.extractors.HistoryAttentionExtractor` with
the same ``position`` and the same weights while the episode fits in the window):

- **step** (rollouts, ``predict``): per env and layer a ring buffer of the last W steps (their layer
  inputs, rotated keys, values); a new step is one query per layer against it.
- **sequence** (training): an env's rollout as one causal sequence behind the memory carried in from
  before it; every query sees only steps of its own episode with ages 0 .. W-1.

Each cached step keeps its layer outputs from when it was newest (as Transformer-XL's memory does), so
beyond the window a deeper layer reaches further back than a stateless history of W steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from rlattn.blocks import TransformerBlock, init_linear
from rlattn.extractors import MLP_RATIO
from rlattn.validation import check_choice, check_int

EPISODIC_POSITIONS = ("rotary", "none")


@dataclass
class EpisodicMemory:
    """The live memory of B envs: what ``predict`` takes and returns as ``state``.

    Ring slot ``p % W`` holds the step at episode position p. Updated in place by
    :meth:`EpisodicTransformer.step`; never saved with a model.
    """

    hidden: Tensor
    """(L, B, W, E) each layer's input for the cached steps"""
    keys: Tensor
    """(L, B, H, W, d) keys, rotated by their steps' positions"""
    values: Tensor
    """(L, B, H, W, d)"""
    position: Tensor
    """(B, W) int64 episode position of each slot's step"""
    valid: Tensor
    """(B, W) bool: the slot holds a step of the current episode"""
    t: Tensor
    """(B,) int64 the next step's episode position"""
    extras: Tensor
    """(B, X) the next step's extra inputs (previous action, previous reward); zeros at an episode's start"""
    frame: Tensor | None = None
    """(B, N, E) the newest step's patch tokens, for a policy that looks at the frame after the memory
    (``AttentionPPO("PatchPolicy", ...)``); None otherwise"""

    @property
    def n_envs(self) -> int:
        return self.valid.shape[0]

    @property
    def window(self) -> int:
        return self.valid.shape[1]

    def reset(self, starts: Tensor) -> None:
        """Forget the envs where ``starts`` (B,) is true (bool, or 0/1 as some VecEnvs return their dones):
        their next step begins an episode."""
        starts = starts.to(torch.bool)
        if bool(starts.any()):
            self.valid &= ~starts[:, None]
            self.t = torch.where(starts, 0, self.t)
            self.extras = self.extras.masked_fill(starts[:, None], 0.0)

    def select(self, envs: Tensor | list[int]) -> EpisodicMemory:
        """A copy holding only the given envs."""
        index = torch.as_tensor(envs, dtype=torch.long, device=self.t.device)
        dims = {"hidden": 1, "keys": 1, "values": 1}
        return self._map(lambda name, x: x.index_select(dims.get(name, 0), index))

    def clone(self) -> EpisodicMemory:
        return self._map(lambda _, x: x.clone())

    def _map(self, fn: Callable[[str, Tensor], Tensor]) -> EpisodicMemory:
        """A new memory whose tensors are ``fn(name, tensor)`` of these (None stays None)."""
        parts: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            parts[f.name] = None if value is None else fn(f.name, value)
        return EpisodicMemory(**parts)

    def carried(self) -> CarriedMemory:
        """What a rollout starting now needs from before it: a copy of the layer inputs, positions and validity."""
        return CarriedMemory(self.hidden.clone(), self.position.clone(), self.valid.clone())


@dataclass
class CarriedMemory:
    """The memory carried into a rollout, for training: its keys and values are recomputed with current weights."""

    hidden: Tensor
    """(L, B, P, E) each layer's input for the carried steps (no gradient flows into them)"""
    position: Tensor
    """(B, P) int64"""
    valid: Tensor
    """(B, P) bool"""

    def select(self, envs: Tensor) -> CarriedMemory:
        """Only the given envs, and only the slots valid in any of them (the others change nothing)."""
        valid = self.valid.index_select(0, envs)
        keep = valid.any(dim=0).nonzero().flatten()
        hidden = self.hidden.index_select(1, envs).index_select(2, keep)
        return CarriedMemory(hidden, self.position.index_select(0, envs)[:, keep], valid[:, keep])


class EpisodicTransformer(nn.Module):
    """Transformer over each env's episode so far, the last ``window`` steps, one new step at a time.

    ``(B, D) + memory -> (B, F)`` in rollouts, ``(B, T, D) + carried memory -> (B, T, F)`` in training.
    Layers as in :class:`~rlattn.extractors.HistoryAttentionExtractor` (and the same parameter
    names: ``embed``, ``blocks``, ``head``): embed (Linear, ReLU), pre-norm blocks with global
    attention over the window and rotary positions, read out through LayerNorm and Linear.

    :param input_dim: per-step input size D (encoded observation plus extra inputs).
    :param window: memory W in steps, including the current one (ages 0 .. W-1).
    :param features_dim: output size F.
    :param embed_dim: token size E.
    :param n_heads: attention heads (E/H must be even: rotary positions rotate pairs).
    :param n_layers: transformer blocks L.
    :param gate: ``"gru"`` (GTrXL gating, starts near identity) or ``"residual"``.
    :param position: ``"rotary"`` (queries and keys rotated by episode positions: scores depend on
        the age difference) or ``"none"`` (scores from content alone; the causal mask and the window
        still order the steps).
    :param length_scale: each head's logits times ``s_h log n``, n the steps it may see (learned s_h;
        Scalable-Softmax: see :class:`~rlattn.attention.MultiHeadAttention`), in the cache's steps as
        in training's sequences.
    """

    def __init__(
        self,
        input_dim: int,
        window: int,
        features_dim: int = 128,
        embed_dim: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        gate: str = "gru",
        position: str = "rotary",
        length_scale: bool = False,
    ):
        super().__init__()
        self.rotary = check_choice("position", position, EPISODIC_POSITIONS) == "rotary"
        for name, value in (
            ("input_dim", input_dim),
            ("memory", window),
            ("features_dim", features_dim),
            ("embed_dim", embed_dim),
            ("n_heads", n_heads),
            ("n_layers", n_layers),
        ):
            check_int(name, value)
        if embed_dim % n_heads or (self.rotary and (embed_dim // n_heads) % 2):
            raise ValueError(
                f"embed_dim={embed_dim} is invalid with n_heads={n_heads}: each head's size embed_dim / n_heads "
                + ("must be an even integer (rotary positions)" if self.rotary else "must be an integer")
            )
        self.window, self.embed_dim, self.n_heads, self.features_dim = window, embed_dim, n_heads, features_dim
        self.chunk_steps: int | None = None
        """queries per chunk in :meth:`sequence` (None: max(W, 256)); the result does not depend on it"""
        self.embed = nn.Sequential(nn.Linear(input_dim, embed_dim), nn.ReLU())
        self.blocks = nn.ModuleList(
            TransformerBlock(embed_dim, n_heads, MLP_RATIO, gate, length_scale=length_scale) for _ in range(n_layers)
        )
        self.head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, features_dim))
        self.blocks.apply(init_linear)

    def initial_memory(self, n_envs: int, extras_dim: int = 0, device: torch.device | str = "cpu") -> EpisodicMemory:
        """An empty memory for ``n_envs`` envs."""
        L, W, E, H = len(self.blocks), self.window, self.embed_dim, self.n_heads
        return EpisodicMemory(
            hidden=torch.zeros(L, n_envs, W, E, device=device),
            keys=torch.zeros(L, n_envs, H, W, E // H, device=device),
            values=torch.zeros(L, n_envs, H, W, E // H, device=device),
            position=torch.zeros(n_envs, W, dtype=torch.long, device=device),
            valid=torch.zeros(n_envs, W, dtype=torch.bool, device=device),
            t=torch.zeros(n_envs, dtype=torch.long, device=device),
            extras=torch.zeros(n_envs, extras_dim, device=device),
        )

    def step(self, x: Tensor, memory: EpisodicMemory) -> Tensor:
        """Encode one new step per env and remember it: x (B, D) -> (B, F). Updates ``memory`` in place."""
        h, _ = self._step(self.embed(x), memory, need_weights=False)
        return self.head(h)

    def _step(self, h: Tensor, memory: EpisodicMemory, need_weights: bool) -> tuple[Tensor, list[Tensor | None]]:
        """Layer inputs h (B, E) of a new step through every block, writing its slot: -> (B, E), weights."""
        rows = torch.arange(h.shape[0], device=h.device)
        slot = memory.t % self.window  # the oldest slot: its step is now out of reach (age W)
        memory.position[rows, slot] = memory.t
        memory.valid[rows, slot] = True
        maps = []
        for i, block in enumerate(self.blocks):
            assert isinstance(block, TransformerBlock)
            memory.hidden[i, rows, slot] = h
            h, weights = block.step(
                h, memory.t if self.rotary else None, memory.keys[i], memory.values[i], slot, memory.valid, need_weights
            )
            maps.append(weights)
        memory.t = memory.t + 1
        return h, maps

    @torch.no_grad()
    def refresh(self, memory: EpisodicMemory) -> None:
        """Recompute every cached key and value from the cached layer inputs with the current weights.

        Called as a rollout starts: the memory carried in was cached under older weights (one update
        per rollout, many per long episode), and training recomputes its keys and values with the
        weights of that rollout (:meth:`sequence`). Refreshed, the rollout's actions, log-probs and
        values are exactly those training computes for the same steps, so PPO's ratio starts at 1.
        """
        for i, block in enumerate(self.blocks):
            assert isinstance(block, TransformerBlock)
            positions = memory.position if self.rotary else None
            memory.keys[i], memory.values[i] = block.attn.keys_values(block.norm1(memory.hidden[i]), positions)

    def sequence(self, x: Tensor, positions: Tensor, episode_starts: Tensor, carried: CarriedMemory) -> Tensor:
        """Encode whole rollouts: x (B, T, D), positions (B, T), episode_starts (B, T) bool -> (B, T, F).

        Step i sees step j (a carried one or an earlier one of the rollout) if both belong to the same
        episode and 0 <= positions[i] - positions[j] < W. The carried layer inputs are a fixed prefix:
        keys and values are recomputed from them with the current weights, no gradient flows into them.

        Long rollouts are encoded in chunks of queries (:meth:`query_chunk`), each against the carried
        prefix and the W - 1 rollout steps before it: within an episode a rollout's positions count up
        by one per step, so no step further back can be in reach. The result is the same; the scores
        computed grow as T x (P + W + chunk), not T x (P + T), so SB3's usual n_steps = 2,048 costs no
        more per step than 128.
        """
        B, T = positions.shape
        P = carried.position.shape[1]
        episode = episode_starts.long().cumsum(dim=1)  # (B, T): 0 continues the carried episode
        key_episode = torch.cat([torch.where(carried.valid, 0, -1), episode], dim=1)  # (B, P + T)
        key_position = torch.cat([carried.position, positions], dim=1)
        key_valid = key_episode >= 0
        C = self.query_chunk(T)
        spans = []  # per chunk of queries [a, b): the keys it may see, its mask and positions
        for a in range(0, T, C):
            b = min(T, a + C)
            keys = torch.cat([torch.arange(P), P + torch.arange(max(0, a - self.window + 1), b)]).to(x.device)
            age = positions[:, a:b, None] - key_position[:, None, keys]  # (B, b - a, k)
            mask = (episode[:, a:b, None] == key_episode[:, None, keys]) & (age >= 0) & (age < self.window)
            rotations = key_position[:, keys] if self.rotary else None
            spans.append((b - a, keys, mask[:, None], key_valid[:, keys], rotations))
        h = self.embed(x)
        for i, block in enumerate(self.blocks):
            tokens = torch.cat([carried.hidden[i].detach(), h], dim=1)  # (B, P + T, E)
            if len(spans) == 1:  # every key: no gather
                n, _, mask, valid, rotations = spans[0]
                h = block(tokens, valid, n_queries=n, positions=rotations, mask=mask)[0]
                continue
            chunks = [
                block(tokens[:, keys], valid, n_queries=n, positions=rotations, mask=mask)[0]
                for n, keys, mask, valid, rotations in spans
            ]
            h = torch.cat(chunks, dim=1)
        return self.head(h)

    def query_chunk(self, T: int) -> int:
        """How many of a rollout's T steps :meth:`sequence` encodes at once: all of them up to 2 x the
        chunk (``chunk_steps``, default max(W, 256)); longer rollouts in chunks of that size."""
        chunk = self.chunk_steps or max(self.window, 256)
        return T if T <= 2 * chunk else chunk

    @torch.no_grad()
    def attention_maps(self, memory: EpisodicMemory) -> tuple[Tensor, Tensor]:
        """What the newest step's query attended to: weights (B, L, H, W) and each slot's episode position (B, W).

        Positions of slots outside the current episode are -1 (their weights are 0). Recomputed on
        the explicit path from the cached layer inputs, only when asked; ``memory`` is not changed.
        Needs at least one step in every env's memory.
        """
        if not bool(memory.valid.any(dim=1).all()):
            raise ValueError("memory holds no step for some env: call attention_maps after a step or predict")
        _, maps = self.rerun(memory, need_weights=True)
        positions = memory.position.masked_fill(~memory.valid, -1)
        return torch.stack(maps, dim=1), positions  # type: ignore[arg-type]

    def rerun(self, memory: EpisodicMemory, need_weights: bool = False) -> tuple[Tensor, list[Tensor | None]]:
        """Each env's newest step again through every block, against ``memory`` as it is now (slots
        marked invalid stay unseen): features (B, F) and per-layer weights. ``memory`` is not changed."""
        copy = memory.clone()
        copy.t = copy.t - 1  # into the newest step's own slot
        rows = torch.arange(copy.n_envs, device=copy.t.device)
        h, maps = self._step(copy.hidden[0, rows, copy.t % self.window], copy, need_weights)
        return self.head(h), maps
