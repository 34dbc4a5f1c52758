"""Is the attention faithful? At a decision, mask the input the readout attends to most, and
separately a random other one, and see whether the deterministic action changes (the flip rate).

Shape letters: K history length, H heads, W memory window, C channels, rows x cols the patch grid.

Each input is left out the model's own way, wherever it has one:

- **a history step** (``HistoryObservation``): its ``valid`` flag set to 0. The extractor then treats
  it exactly as padding (its content zeroed, no query attends to it) and every other step keeps its
  slot, so its age. The newest step is always valid (no attention row may be empty) and is never
  masked: "most attended" means among the older valid steps, and how often the newest step held the
  most weight is counted (``newest_top``).
- **a step of an episodic memory** (``AttentionPPO``): its cache slot marked invalid and the
  decision's step run again through every layer. With one layer that is exactly the memory without
  the step; with more, later steps' cached deeper inputs were computed while it was still visible.
- **a patch of the frame acted on** (patch and spatio-temporal extractors): its pixels replaced by
  the frame's own background, the pixels of its emptiest patch (the least total intensity). On a
  clean display that is 0 everywhere; on a noisy one it is the display's own noise (its darkest
  sample, so a little below the average patch: 4% at 8 x 8 x 3 pixels of uniform noise), so the
  masked patch does not stand out as the one dark square on a noisy screen (zeroing it would make it
  the odd one out, a new target). Where the most-attended patch is that background itself, nothing
  can be masked and the decision's top flip is not counted. These extractors have no patch mask,
  and dropping a patch from a pointer readout's keys would flip its action (the pointer's argmax) by
  construction. The random other patch is drawn from those that differ from that background:
  replacing the background with itself changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy

from rlattn.episodic import EpisodicMemory
from rlattn.overlay import box_mass

Observation = np.ndarray | dict[str, np.ndarray]


PATCH_MASK = "background"
"""how a patch is masked (the frame's emptiest patch copied over it); saved with a measurement, so a
record made with another mask (``"zeros"``, before) is measured again"""


@dataclass(frozen=True)
class Decision:
    """One decision scored: the attention on the ground truth, and whether masking flipped the action."""

    target_mass: float | None
    """last block, mean over heads; None when the ground truth is not in view"""
    top_flip: bool | None
    """masking the most-attended step (patch) changed the action; None when nothing could be masked
    or the action is continuous (any input change moves it: no flip to count)"""
    random_flip: bool | None
    """masking a random other step (patch) changed it; None when there was no other"""
    newest_top: bool = False
    """the decision's own step held the most weight (histories and memories; it is never masked)"""


@dataclass(frozen=True)
class Faithfulness:
    """The decisions of a round of episodes, and their rates."""

    decisions: tuple[Decision, ...]

    def _values(self, name: str) -> list:
        return [getattr(d, name) for d in self.decisions if getattr(d, name) is not None]

    @property
    def target_mass(self) -> float | None:
        masses = self._values("target_mass")
        return float(np.mean(masses)) if masses else None

    def flip_rate(self, which: str) -> float | None:
        """``which`` ``"top"`` or ``"random"``: the share of the masked decisions whose action changed."""
        flips = self._values(f"{which}_flip")
        return float(np.mean(flips)) if flips else None

    def record(self) -> dict[str, Any]:
        """Rates with their counts (JSON-ready)."""
        record: dict[str, Any] = {
            "episodes": len(self.decisions),
            "target_mass": self.target_mass,
            "target_mass_n": len(self._values("target_mass")),
            "newest_top": sum(d.newest_top for d in self.decisions),
        }
        for which in ("top", "random"):
            flips = self._values(f"{which}_flip")
            record |= {
                f"flip_rate_{which}": self.flip_rate(which),
                f"{which}_flips": sum(flips),
                f"{which}_n": len(flips),
            }
        return record


def pick(weights: np.ndarray, top_from: np.ndarray, other_from: np.ndarray, rng: np.random.Generator):
    """(the most-weighted index where ``top_from``, a random other index where ``other_from``), None where none.

    ``weights``, ``top_from`` and ``other_from`` are flat (N,) arrays, the last two bool.
    """
    if not top_from.any():
        return None, None
    top = int(np.flatnonzero(top_from)[np.argmax(weights[top_from])])
    others = np.flatnonzero(other_from & (np.arange(len(weights)) != top))
    return top, (int(rng.choice(others)) if len(others) else None)


def deterministic_flips(policy: BasePolicy, original: Observation, masked: list[Observation]) -> list[bool | None]:
    """Whether each masked observation's deterministic action differs from the original's (one batch;
    None for continuous actions: see :func:`changed`)."""
    actions, _ = policy.predict(_batch([original, *masked]), deterministic=True)
    return [changed(action, actions[0], getattr(policy, "action_space", None)) for action in actions[1:]]


def _batch(variants: list[Observation]) -> Observation:
    """Observations of one env stacked into a batch (a dict of stacked arrays for a dict)."""
    first = variants[0]
    if isinstance(first, dict):
        return {key: np.stack([v[key] for v in variants]) for key in first}  # type: ignore[index]
    return np.stack(variants)  # type: ignore[arg-type]


def changed(action: np.ndarray, original: np.ndarray, space: spaces.Space | None) -> bool | None:
    """Whether a masked input changed the decision: a different discrete action; None for a continuous
    (Box) action, which any change of input moves a little, so that no flip is counted for it."""
    return None if isinstance(space, spaces.Box) else not np.array_equal(action, original)


def _decision(
    flips: list[bool | None], top: int | None, other: int | None, mass: float | None, newest_top: bool = False
) -> Decision:
    found = iter(flips)
    return Decision(
        mass, next(found) if top is not None else None, next(found) if other is not None else None, newest_top
    )


def mask_step(obs: dict[str, np.ndarray], slot: int) -> dict[str, np.ndarray]:
    """A copy of one ``HistoryObservation`` with history slot ``slot`` marked padding."""
    masked = {key: value.copy() for key, value in obs.items()}
    masked["valid"][slot] = 0
    return masked


def history_decision(
    policy: BasePolicy,
    obs: dict[str, np.ndarray],
    weights: np.ndarray,
    target_slot: int | None,
    rng: np.random.Generator,
) -> Decision:
    """Score one decision on a history: ``weights`` (H, K) the last block's readout attention, ``obs`` one env's."""
    mean = weights.mean(axis=0)
    maskable = np.asarray(obs["valid"]) > 0.5
    maskable[-1] = False  # the newest step is always valid: it cannot be masked
    top, other = pick(mean, maskable, maskable, rng)
    flips = deterministic_flips(policy, obs, [mask_step(obs, s) for s in (top, other) if s is not None])
    mass = float(mean[target_slot]) if target_slot is not None else None
    return _decision(flips, top, other, mass, newest_top=bool(np.argmax(mean) == len(mean) - 1))


def newest_frame(obs: Observation) -> np.ndarray:
    """The (C, H, W) frame the agent acts on, from an image or a ``HistoryObservation`` of images."""
    return np.asarray(obs["obs"][-1] if isinstance(obs, dict) else obs)


def mask_patch(obs: Observation, patch: int, patch_size: int, cols: int, fill: np.ndarray | None = None) -> Observation:
    """A copy of the observation with patch ``patch`` (row-major) of the frame acted on replaced by
    ``fill`` (C, patch_size, patch_size), or set to 0 without it."""
    masked = {key: value.copy() for key, value in obs.items()} if isinstance(obs, dict) else obs.copy()
    row, col = divmod(patch, cols)
    rows, columns = slice(row * patch_size, (row + 1) * patch_size), slice(col * patch_size, (col + 1) * patch_size)
    newest_frame(masked)[:, rows, columns] = 0 if fill is None else fill  # a view into the copy
    return masked


def patch_grid(frame: np.ndarray, rows: int, cols: int, patch_size: int) -> np.ndarray:
    """A (C, rows, p, cols, p) view of the frame's patches: ``[:, r, :, c, :]`` is patch (r, c)."""
    C = frame.shape[0]
    return frame[:, : rows * patch_size, : cols * patch_size].reshape(C, rows, patch_size, cols, patch_size)


def background_patch(frame: np.ndarray, rows: int, cols: int, patch_size: int) -> tuple[int, np.ndarray]:
    """The frame's emptiest patch (least total intensity, row-major index) and its pixels (C, p, p): the
    display's background as the display draws it (0 when clean, noise when noisy)."""
    return _emptiest(patch_grid(frame, rows, cols, patch_size))


def _emptiest(blocks: np.ndarray) -> tuple[int, np.ndarray]:
    totals = blocks.astype(np.float64).sum(axis=(0, 2, 4)).reshape(-1)
    empty = int(np.argmin(totals))
    row, col = divmod(empty, blocks.shape[3])
    return empty, blocks[:, row, :, col, :].copy()


def patch_decision(
    policy: BasePolicy,
    obs: Observation,
    weights: np.ndarray,
    patch_size: int,
    box: tuple[int, int, int, int] | None,
    rng: np.random.Generator,
) -> Decision:
    """Score one decision on a frame: ``weights`` (rows, cols) the readout's attention, mean over heads."""
    top, other, masked = _patch_masks(obs, weights, patch_size, rng)
    mass = box_mass(weights, newest_frame(obs).shape[-2:], box) if box is not None else None
    return _decision(deterministic_flips(policy, obs, masked), top, other, mass)


def _patch_masks(
    obs: Observation, weights: np.ndarray, patch_size: int, rng: np.random.Generator
) -> tuple[int | None, int | None, list[Observation]]:
    """(the most-attended patch, a random other one, the observation with each masked): a patch is masked
    with the frame's emptiest patch; a most-attended patch that is that background is not counted."""
    frame = newest_frame(obs)
    rows, cols = weights.shape
    blocks = patch_grid(frame, rows, cols, patch_size)
    _, fill = _emptiest(blocks)
    differs = (blocks != fill[:, None, :, None, :]).any(axis=(0, 2, 4)).reshape(-1)
    top, other = pick(weights.reshape(-1), np.ones(rows * cols, bool), differs, rng)
    if top is not None and not differs[top]:
        top = None  # the background itself is the most attended: masking it would change nothing, not counted
    return top, other, [mask_patch(obs, p, patch_size, cols, fill) for p in (top, other) if p is not None]


@torch.no_grad()
def memory_actions(policy: Any, memory: EpisodicMemory, masked: list[int | None]) -> np.ndarray:
    """The decision's deterministic action again from one env's ``memory`` (after ``predict``), once per
    entry of ``masked``: None for the memory as it is, else the cache slot left out."""
    copy = memory.select([0] * len(masked))
    for row, slot in enumerate(masked):
        if slot is not None:
            copy.valid[row, slot] = False
    features, _ = policy.memory_net.rerun(copy)
    latent_pi, _ = policy.mlp_extractor(policy.read(features, copy.frame))
    return policy._get_action_dist_from_latent(latent_pi).get_actions(deterministic=True).cpu().numpy()


def memory_decision(
    policy: Any,
    memory: EpisodicMemory,
    weights: np.ndarray,
    positions: np.ndarray,
    target_step: int,
    rng: np.random.Generator,
) -> Decision:
    """Score one decision of an episodic memory: ``weights`` (H, W) its last layer's attention, ``positions``
    (W,) each slot's episode step (-1: empty), ``target_step`` the ground truth's (-1: none)."""
    mean = weights.mean(axis=0)
    maskable = (positions >= 0) & (positions != positions.max())
    top, other = pick(mean, maskable, maskable, rng)
    actions = memory_actions(policy, memory, [None, *(s for s in (top, other) if s is not None)])
    flips = [changed(action, actions[0], getattr(policy, "action_space", None)) for action in actions[1:]]
    seen = positions == target_step
    mass = float(mean[seen].sum()) if target_step >= 0 and seen.any() else None
    return _decision(flips, top, other, mass, newest_top=bool(positions[np.argmax(mean)] == positions.max()))


@torch.no_grad()
def look_decision(
    policy: Any,
    memory: EpisodicMemory,
    obs: Observation,
    weights: np.ndarray,
    box: tuple[int, int, int, int] | None,
    rng: np.random.Generator,
) -> Decision:
    """Score the look an episodic memory makes after it, over the frame acted on: ``weights`` (rows, cols)
    its attention, mean over heads. A patch is masked as :func:`patch_decision` masks it, in the frame
    the look reads; the memory (its encoding of this step too) stays as it is, so a flip is the look's."""
    top, other, masked = _patch_masks(obs, weights, policy.features_extractor.encoder.patch_size, rng)
    tensor, _ = policy.obs_to_tensor(_batch([obs, *masked]))
    _, patches = policy.encode(tensor)
    features, _ = policy.memory_net.rerun(memory.select([0] * (1 + len(masked))))
    latent_pi, _ = policy.mlp_extractor(policy.read(features, patches))
    actions = policy._get_action_dist_from_latent(latent_pi).get_actions(deterministic=True).cpu().numpy()
    flips = [changed(action, actions[0], getattr(policy, "action_space", None)) for action in actions[1:]]
    mass = box_mass(weights, newest_frame(obs).shape[-2:], box) if box is not None else None
    return _decision(flips, top, other, mass)


__all__ = [
    "Decision",
    "PATCH_MASK",
    "background_patch",
    "Faithfulness",
    "deterministic_flips",
    "history_decision",
    "look_decision",
    "mask_patch",
    "mask_step",
    "memory_actions",
    "memory_decision",
    "newest_frame",
    "patch_decision",
    "pick",
]
