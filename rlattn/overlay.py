"""Attention over image patches, laid over the frame, and scored against a target box."""

from __future__ import annotations

import numpy as np

# Viridis anchors, dark (no attention) to yellow (all of it).
_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)


def colorize(values: np.ndarray) -> np.ndarray:
    """(...) in [0, 1] -> (..., 3) uint8 colours."""
    scaled = np.clip(values, 0.0, 1.0) * (len(_ANCHORS) - 1)
    low = np.floor(scaled).astype(int).clip(0, len(_ANCHORS) - 2)
    frac = (scaled - low)[..., None]
    return ((1 - frac) * _ANCHORS[low] + frac * _ANCHORS[low + 1]).astype(np.uint8)


def frame_rgb(frame: np.ndarray) -> np.ndarray:
    """A channel-first frame (C, H, W) -> (H, W, 3) uint8: the first three channels, or grey if fewer.
    A float frame within [0, 1] is read as intensities of 1 (scaled to 0..255); other values as 0..255."""
    rgb = frame[:3] if frame.shape[0] >= 3 else np.repeat(frame[:1], 3, axis=0)
    if np.issubdtype(rgb.dtype, np.floating) and rgb.size and float(rgb.min()) >= 0.0 and float(rgb.max()) <= 1.0:
        rgb = rgb * 255.0
    return np.ascontiguousarray(np.clip(rgb, 0, 255).astype(np.uint8).transpose(1, 2, 0))


def box_mass(weights: np.ndarray, image_size: tuple[int, int], box: tuple[int, int, int, int]) -> float:
    """Attention on the patches whose centre lies inside ``box = (top, left, bottom, right)`` (pixels, end exclusive).

    :param weights: (rows, cols) attention over the patch grid, summing to 1.
    :param image_size: (H, W) of the frame the grid tiles.
    """
    rows, cols = weights.shape
    height, width = image_size
    cy = (np.arange(rows) + 0.5) * height / rows
    cx = (np.arange(cols) + 0.5) * width / cols
    top, left, bottom, right = box
    inside = ((cy >= top) & (cy < bottom))[:, None] & ((cx >= left) & (cx < right))[None, :]
    return float(weights[inside].sum())


def overlay(
    frame: np.ndarray,
    weights: np.ndarray,
    box: tuple[int, int, int, int] | None = None,
    scale: int = 4,
    alpha: float = 0.6,
) -> np.ndarray:
    """The frame beside the same frame under its attention heatmap: (H * scale, 2 * W * scale + gap, 3) uint8.

    :param frame: (C, H, W) pixels.
    :param weights: (rows, cols) attention over the patch grid; shown relative to its maximum.
    :param box: the target's pixels ``(top, left, bottom, right)``, outlined in white on both halves.
    """
    rgb = frame_rgb(frame)
    H, W, _ = rgb.shape
    rows, cols = weights.shape
    relative = weights / max(float(weights.max()), 1e-12)
    heat = colorize(np.repeat(np.repeat(relative, -(-H // rows), axis=0), -(-W // cols), axis=1)[:H, :W])
    blended = ((1 - alpha) * rgb + alpha * heat).astype(np.uint8)
    halves = []
    for image in (rgb, blended):
        big = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
        if box is not None:
            _outline(big, [v * scale for v in box])
        halves.append(big)
    gap = np.full((H * scale, 2 * scale, 3), 255, dtype=np.uint8)
    return np.concatenate([halves[0], gap, halves[1]], axis=1)


def _outline(image: np.ndarray, box: list[int]) -> None:
    top, left, bottom, right = (int(v) for v in box)
    bottom, right = min(bottom, image.shape[0]) - 1, min(right, image.shape[1]) - 1
    if bottom < top or right < left:
        return
    image[top, left : right + 1] = image[bottom, left : right + 1] = 255
    image[top : bottom + 1, left] = image[top : bottom + 1, right] = 255
