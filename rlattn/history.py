"""Reading a ``HistoryObservation`` batch: its space, its valid steps, and pixel scaling.

Shape letters: B batch, K history length. Every history extractor parses its input through these.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space
from torch import Tensor

STEP_KEYS = ("obs", "action", "reward")
"""what a history step can hold, in the order the extractors concatenate them"""


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


def step_size(space: spaces.Space) -> int:
    """Numbers per step of a (K, ...) history entry."""
    shape = space.shape or (0,)
    return int(np.prod(shape[1:]))


def pixel_scale(space: spaces.Space) -> float:
    """For uint8 values that SB3 hands over unscaled (it scales only single image spaces): one over
    their largest bound (1/255 for pixels; flags of 0 or 1 stay as they are); else 1."""
    if space.dtype != np.uint8 or is_image_space(space, check_channels=False):
        return 1.0
    assert isinstance(space, spaces.Box)
    return 1.0 / max(1.0, float(np.max(space.high)))


def sb3_scales(space: spaces.Space) -> bool:
    """Whether SB3 hands this observation space over scaled to [0, 1]: a single uint8 image, which SB3's
    policies divide by 255 when ``normalize_images`` is True (their default)."""
    return space.dtype == np.uint8 and is_image_space(space, check_channels=False)


def scaled_pixels(x: Tensor, who: str) -> Tensor:
    """``x``, the batch of a uint8 image that SB3 should have scaled to [0, 1], checked to be so: with
    ``normalize_images=False`` it hands over 0..255, which the extractor would read unscaled. A one-line
    ValueError naming the fix."""
    if x.is_floating_point() and x.numel() and float(x.max()) > 1.0:
        raise ValueError(
            f"{who} got pixel values up to {float(x.max()):.4g} where SB3 scales a uint8 image to [0, 1]: allowed is "
            "normalize_images=True in policy_kwargs (SB3's default)"
        )
    return x


def image_steps(space: spaces.Space) -> bool:
    """Whether a (K, ...) history entry holds images: steps of three axes that SB3 would call an image
    (uint8, 0..255). Other steps of any shape are vectors to the history extractors."""
    if not isinstance(space, spaces.Box) or len(space.shape) != 4:
        return False
    return is_image_space(spaces.Box(space.low[0], space.high[0], dtype=space.dtype), check_channels=False)


def uint8_steps(space: spaces.Space) -> bool:
    """Whether a history entry holds uint8 steps, which ``HistoryObservation`` keeps uint8 (pixels and
    flags, scaled by the extractors) where it makes every other integer or bool step float32."""
    return isinstance(space, spaces.Box) and space.dtype == np.uint8


def raw_uint8(x: Tensor, key: str) -> Tensor:
    """``x``, the batch of a uint8 history entry, checked to hold the whole numbers 0..255 its space
    allows: ``VecNormalize`` keeps a uint8 space's dtype (it makes only images float32), so SB3's rollout
    buffer would store normalised values as uint8 and train on wrapped numbers. A one-line ValueError
    naming the fix."""
    if not x.is_floating_point():  # as the env made it
        return x
    wrong = (x < 0) | (x > 255) | (x != x.floor())
    if bool(wrong.any()):
        value = float(x[wrong][0])
        raise ValueError(
            f"history key {key!r} holds {value:.4g} where its space is uint8: allowed are whole numbers 0..255 "
            f"(with VecNormalize, leave {key!r} out of norm_obs_keys, the extractor scales uint8 values itself; "
            "or normalise with rlattn.HistoryNormalize, which makes it float32)"
        )
    return x


def valid_steps(observations: dict[str, Tensor]) -> Tensor:
    """(B, K) bool of the real steps of a batch of histories; the newest always counts.

    A mask of other values than 0 and 1 is a one-line ValueError: ``VecNormalize`` normalises every key
    of a Dict observation unless told which (``norm_obs_keys``), and a normalised mask reads as padding.
    """
    mask = observations["valid"]
    other = mask[(mask != 0) & (mask != 1)]
    if other.numel():
        raise ValueError(
            f"HistoryObservation's 'valid' mask holds {other[0].item()!r}: allowed are 0 "
            "and 1 (with VecNormalize, normalise the other keys only: VecNormalize(venv, norm_obs_keys=['obs']), "
            "or use rlattn.HistoryNormalize(venv))"
        )
    valid = mask > 0.5  # a fresh tensor
    valid[:, -1] = True
    return valid


def first_kept(valid: Tensor) -> int:
    """The first slot worth computing: slots before it are padding in every history of the batch.

    They cannot change any output (early in episodes, or when K exceeds the episode length, most of
    the history is such padding), so extractors drop them before any math.
    """
    return int(valid.any(dim=0).byte().argmax())
