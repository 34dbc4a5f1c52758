"""``HistoryObservation``: each observation becomes the last K steps, newest last, with a validity mask."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first

from rlattn.validation import check_int

Encoder = Callable[[Any], np.ndarray]


def _out_of_range(what: str, x: Any, low: np.ndarray, high: np.ndarray) -> ValueError:
    """The one-line error for a value outside the integers its space allows."""
    hint = " (SB3 acts with 0..n-1 whatever a Discrete action space's start)" if what == "action" else ""
    return ValueError(
        f"{what} value {np.asarray(x).tolist()} is outside its space: allowed are integers from {low.tolist()} "
        f"to {high.tolist()}{hint}"
    )


def _one_hot_encoder(nvec: np.ndarray, start: np.ndarray, what: str) -> tuple[Encoder, spaces.Box]:
    offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]]).astype(np.int64)
    size = int(np.sum(nvec))
    encode = functools.partial(_one_hot, nvec=nvec, start=start, offsets=offsets, size=size, what=what)
    return encode, spaces.Box(0.0, 1.0, (size,), np.float32)


# Encoders are module functions bound with functools.partial, not closures, so a wrapped env pickles
def _one_hot(x: Any, nvec: np.ndarray, start: np.ndarray, offsets: np.ndarray, size: int, what: str) -> np.ndarray:
    codes = np.asarray(x, dtype=np.int64).reshape(-1) - start
    if np.any(codes < 0) or np.any(codes >= nvec):  # numpy would wrap a negative index silently
        raise _out_of_range(what, x, start, start + nvec - 1)
    out = np.zeros(size, dtype=np.float32)
    out[offsets + codes] = 1.0
    return out


def _binary(
    x: Any, low: np.ndarray, high: np.ndarray, span: np.ndarray | int, bits: np.ndarray, what: str
) -> np.ndarray:
    codes = np.asarray(x, dtype=np.int64).reshape(-1) - low
    if codes.min() < 0 or (codes.max() > span if isinstance(span, int) else np.any(codes > span)):
        raise _out_of_range(what, x, low, high)
    return (np.bitwise_and(codes[:, None], bits) > 0).astype(np.float32).reshape(-1)


def _as_array(x: Any, dtype: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
    array = np.asarray(x, dtype=dtype)
    return array if shape is None else array.reshape(shape)


def _scaled(x: Any, low: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.float32).reshape(-1) - low) * scale


def _concatenate(x: Any, parts: list[tuple[Any, Encoder, spaces.Box]]) -> np.ndarray:
    return np.concatenate([encoder(x[key]) for key, encoder, _ in parts])


CODE_ONE_HOT_MAX = 16
"""integer leaves of a Dict or Tuple with at most this many values per number are one-hot encoded"""
CODE_BITS_MAX = 16
"""wider integer leaves become the binary code of each number, up to this many bits ..."""
CODE_SIZE_MAX = 8192
"""... while the encoded leaf holds at most this many numbers (larger leaves, images, become values in [0, 1])"""


def _binary_encoder(low: np.ndarray, high: np.ndarray, width: int, what: str) -> tuple[Encoder, spaces.Box]:
    """Each number (x - low) as its ``width`` bits, least significant first; a number outside low..high
    is a one-line error (its bits would be another value's code)."""
    bits = np.left_shift(1, np.arange(width, dtype=np.int64))
    spans = high - low
    span = int(spans[0]) if spans.size and (spans == spans[0]).all() else spans  # one bound for all: cheaper check
    return functools.partial(_binary, low=low, high=high, span=span, bits=bits, what=what), spaces.Box(
        0.0, 1.0, (low.size * width,), np.float32
    )


def coded_width(space: spaces.Box) -> int | None:
    """How :func:`_flat_box` codes an integer Box leaf: 0 one-hot, else the bits of each number's binary
    code; None where the leaf is not coded (floats, integers wider than ``CODE_BITS_MAX`` bits, and
    leaves whose codes would pass ``CODE_SIZE_MAX`` numbers, such as images, which stay magnitudes)."""
    span = np.asarray(space.high, dtype=np.float64).reshape(-1) - np.asarray(space.low, dtype=np.float64).reshape(-1)
    if not (np.issubdtype(space.dtype, np.integer) and span.size and np.max(span) < 2**CODE_BITS_MAX):
        return None
    counts = span.astype(np.int64) + 1
    if np.max(counts) <= CODE_ONE_HOT_MAX and np.sum(counts) <= CODE_SIZE_MAX:
        return 0
    width = max(1, int(np.max(counts) - 1).bit_length())
    return width if span.size * width <= CODE_SIZE_MAX else None


def _flat_box(space: spaces.Box, what: str) -> tuple[Encoder, spaces.Box]:
    """A Box leaf as a float vector. Integer leaves are codes (MiniGrid's object, colour and state
    indices): one-hot where each number has at most ``CODE_ONE_HOT_MAX`` values, else each number's
    binary code (``CODE_BITS_MAX`` bits at most): each value its own pattern, not a magnitude (a key, 5,
    and a ball, 6, differ in two bits, not by 1). Leaves that would then hold more than
    ``CODE_SIZE_MAX`` numbers (images) become their values scaled to [0, 1] by their bounds (pixels
    by 1/255); float leaves, and integers wider than ``CODE_BITS_MAX`` bits, stay numbers."""
    low, high = (np.asarray(b, dtype=np.float32).reshape(-1) for b in (space.low, space.high))
    span = np.asarray(space.high, dtype=np.float64).reshape(-1) - np.asarray(space.low, dtype=np.float64).reshape(-1)
    width = coded_width(space)
    first = np.asarray(space.low, dtype=np.int64).reshape(-1) if width is not None else np.zeros(0, np.int64)
    if width == 0:
        return _one_hot_encoder(span.astype(np.int64) + 1, first, what)
    if width is not None:
        return _binary_encoder(first, np.asarray(space.high, dtype=np.int64).reshape(-1), width, what)
    if np.issubdtype(space.dtype, np.integer) and span.size and np.max(span) < 2**CODE_BITS_MAX:
        # too many numbers to code (an image): magnitudes in [0, 1], as the extractors scale a uint8
        # step (pixels by 1/255), not 0..255 into a Linear layer
        scale = (1.0 / np.maximum(span, 1.0)).astype(np.float32)
        return functools.partial(_scaled, low=low, scale=scale), spaces.Box(0.0, 1.0, low.shape, np.float32)
    return functools.partial(_as_array, dtype=np.float32, shape=(-1,)), spaces.Box(low, high, low.shape, np.float32)


def _concatenated(parts: list[tuple[Any, Encoder, spaces.Box]]) -> tuple[Encoder, spaces.Box]:
    """One float vector from the encoded leaves (key, encoder, space) of a Dict or Tuple (keys are indices there)."""
    low = np.concatenate([box.low.reshape(-1) for _, _, box in parts]).astype(np.float32)
    high = np.concatenate([box.high.reshape(-1) for _, _, box in parts]).astype(np.float32)
    return functools.partial(_concatenate, parts=parts), spaces.Box(low, high, low.shape, np.float32)


def _structured_encoder(space: spaces.Dict | spaces.Tuple, what: str) -> tuple[Encoder, spaces.Box]:
    """Dict and Tuple: every leaf flattened into one float32 vector; leaves with no numbers (text) dropped with a warning."""
    items = list(space.spaces.items()) if isinstance(space, spaces.Dict) else list(enumerate(space.spaces))
    kept: list[tuple[Any, Encoder, spaces.Box]] = []
    for key, leaf in items:
        leaf_what = f"{what} key {key!r}"
        try:
            kept.append(
                (key, *(_flat_box(leaf, leaf_what) if isinstance(leaf, spaces.Box) else step_encoder(leaf, leaf_what)))
            )
        except ValueError:  # text (a MiniGrid mission), graphs, sequences: no fixed-size numbers
            warnings.warn(
                f"{leaf_what} ({type(leaf).__name__}) cannot be encoded as numbers and is dropped: "
                "wrap the env in gymnasium.wrappers.FilterObservation to drop it yourself",
                UserWarning,
                stacklevel=4,
            )
    if not kept:
        raise ValueError(f"{what} space {space} has nothing to encode: no key holds numbers")
    return _concatenated(kept)


def channel_last_image(space: gym.Space) -> bool:
    """A single image Box (uint8, 0..255, three axes) with its channels last, as SB3 reads its shape."""
    if not (isinstance(space, spaces.Box) and is_image_space(space, check_channels=False)):
        return False
    with warnings.catch_warnings():  # SB3 warns where the shape is ambiguous, and then takes channels last too
        warnings.simplefilter("ignore")
        return not is_image_space_channels_first(space)


def _channel_first_space(space: spaces.Box) -> spaces.Box:
    """(H, W, C) -> (C, H, W), bounds moved with their values."""
    return spaces.Box(_channels_first(space.low), _channels_first(space.high), dtype=space.dtype)


def channel_last_frame(space: gym.Space) -> bool:
    """A three-axis Box of any dtype that reads as channel-last (H, W, C): its last axis strictly its
    smallest (SB3's rule for images, ``is_image_space_channels_first``, which SB3 applies itself only to
    uint8 images) and a channel count, at most 4 (grey, RGB, RGBA, 4 stacked greys) or at most a quarter
    of each other side (84 x 84 x 12), so that channel-first grids such as (20, 9, 7) are not taken for it."""
    if not (isinstance(space, spaces.Box) and len(space.shape) == 3):
        return False
    side, last = min(space.shape[:2]), space.shape[2]
    return last < side and (last <= 4 or 4 * last <= side)


def _channels_first(image: Any) -> np.ndarray:
    """(H, W, C) -> (C, H, W), contiguous."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(image), -1, 0))


def _box_step(space: spaces.Box) -> tuple[Encoder, spaces.Box]:
    """A Box step as a history holds it: unchanged, except

    - a scalar (shape ``()``) as one number (1,);
    - a channel-last image (H, W, C) channel-first (C, H, W), as SB3 moves a single image's channels
      (it never looks inside a history);
    - a 2-D uint8 0..255 step (a frame without a channel axis) flattened: K of them stacked would be
      one (K, H, W) image to SB3, which would move its axes (``ChannelFirst`` under the history gives
      such frames a channel axis, (1, H, W), and the image extractors take them);
    - integer and bool steps other than uint8 as float32 (float64 beyond 2**24), values unchanged: SB3's rollout buffer keeps
      a space's dtype, so under ``VecNormalize`` it would cut their normalised values to whole numbers
      (uint8 stays compact and is scaled by the extractors).
    """
    if np.dtype(space.dtype).kind in "iub" and space.dtype != np.uint8:
        # float32 holds every integer up to 2**24 exactly; wider ranges take float64 to stay unchanged
        bounds = np.abs(np.concatenate([np.asarray(b, dtype=np.float64).reshape(-1) for b in (space.low, space.high)]))
        wide = float(np.max(bounds)) > 2**24  # float64 first: abs of an integer dtype's minimum overflows
        dtype = np.float64 if wide else np.float32
        space = spaces.Box(space.low.astype(dtype), space.high.astype(dtype), space.shape, dtype)
    if space.shape == ():
        return functools.partial(_as_array, dtype=space.dtype, shape=(1,)), spaces.Box(
            space.low.reshape(1), space.high.reshape(1), (1,), space.dtype
        )
    if channel_last_image(space):
        return _channels_first, _channel_first_space(space)
    if len(space.shape) == 2 and space.dtype == np.uint8 and np.all(space.low == 0) and np.all(space.high == 255):
        size = int(np.prod(space.shape))
        return functools.partial(_as_array, dtype=space.dtype, shape=(-1,)), spaces.Box(0, 255, (size,), space.dtype)
    return functools.partial(_as_array, dtype=space.dtype), space


def step_encoder(space: gym.Space, what: str) -> tuple[Encoder, spaces.Box]:
    """How one observation or action of ``space`` becomes an array.

    Box as is (scalars as one number, channel-last images channel-first, 2-D uint8 frames
    flattened: see ``_box_step``); Discrete and MultiDiscrete one-hot; MultiBinary a float vector;
    Dict and Tuple (nested too) one float32 vector of their leaves in key order: float Box leaves
    flattened with their values unscaled, integer Box leaves as codes (one-hot or binary; an image's
    values scaled to [0, 1]: see ``_flat_box``), leaves that hold no numbers (Text, a MiniGrid mission) dropped with a warning.
    """
    if isinstance(space, spaces.Box):
        return _box_step(space)
    if isinstance(space, spaces.Discrete):
        return _one_hot_encoder(np.array([space.n]), np.array([space.start]), what)
    if isinstance(space, spaces.MultiDiscrete):
        return _one_hot_encoder(space.nvec.reshape(-1), space.start.reshape(-1), what)
    if isinstance(space, spaces.MultiBinary):
        n = int(np.prod(space.shape))
        return functools.partial(_as_array, dtype=np.float32, shape=(-1,)), spaces.Box(0.0, 1.0, (n,), np.float32)
    if isinstance(space, (spaces.Dict, spaces.Tuple)):
        return _structured_encoder(space, what)
    allowed = "Box, Discrete, MultiDiscrete, MultiBinary, and Dict or Tuple of them"
    raise ValueError(f"{what} space {space} is not supported by HistoryObservation: allowed are {allowed}")


class FlatObservation(gym.ObservationWrapper):
    """A Dict or Tuple observation (MiniGrid's ``image`` + ``direction`` + ``mission``) as one float32 vector.

    Leaves are encoded as in :class:`HistoryObservation` (float Box values flattened unscaled, integer
    Box values as codes: one-hot, or binary for wide ranges such as MiniGrid's uint8 ``image``; discrete
    one-hot) and concatenated in key order; text leaves are dropped with a warning. For
    :class:`~rlattn.AttentionPPO`, ``RecurrentPPO`` or a plain MLP on such envs; ``HistoryObservation``
    encodes Dict and Tuple observations itself.

    :param env: an env whose observation space is a Dict or Tuple of supported spaces.
    """

    def __init__(self, env: gym.Env):
        if not isinstance(env.observation_space, (spaces.Dict, spaces.Tuple)):
            raise ValueError(
                f"observation space {env.observation_space} is not supported by FlatObservation: allowed are Dict and Tuple"
            )
        super().__init__(env)
        self._encode, self.observation_space = _structured_encoder(env.observation_space, "observation")

    def observation(self, observation: Any) -> np.ndarray:
        return self._encode(observation)


class ChannelFirst(gym.ObservationWrapper):
    """A channel-last image observation (H, W, C) as channel-first (C, H, W), the layout every image
    extractor here (and SB3's CNN policies) reads. SB3 does this itself for a lone uint8 image
    (``VecTransposeImage``), but not inside a history or a frame stack, not for float images, and not
    for code that reads the env's shape first (patch sizes): ``train.py`` applies it to every
    channel-last image env.

    Any two-axis Box (H, W), a grey frame without a channel axis (gymnasium's ``AtariPreprocessing`` gives
    them), gets one in front: (1, H, W), so that the image extractors and SB3's CNNs take it as an image.

    :param env: an env whose observation is an image with its channels last: a uint8 0..255 image
        whose channels SB3 would take as last, or a three-axis Box of any dtype that reads as channel-last
        (:func:`channel_last_frame`); or a two-axis Box (H, W) of any dtype.
    """

    def __init__(self, env: gym.Env):
        space = env.observation_space
        self.add_axis = isinstance(space, spaces.Box) and len(space.shape) == 2
        if not (self.add_axis or channel_last_image(space) or channel_last_frame(space)):
            raise ValueError(
                f"observation space {space} is not supported by ChannelFirst: allowed are "
                "images (H, W, C) with the channels last (uint8 0..255, or any Box whose last axis is its smallest and at "
                "most 4 or a quarter of each other side) and frames (H, W) without a channel axis"
            )
        super().__init__(env)
        assert isinstance(space, spaces.Box)
        if self.add_axis:
            self.observation_space = spaces.Box(space.low[None], space.high[None], (1, *space.shape), space.dtype)
        else:
            self.observation_space = _channel_first_space(space)

    def observation(self, observation: Any) -> np.ndarray:
        return np.asarray(observation)[None] if self.add_axis else _channels_first(observation)


def _stacked(space: spaces.Box, length: int) -> tuple[spaces.Box, np.ndarray]:
    """The space of ``length`` stacked steps, and a padding step that lies inside it."""
    low = np.broadcast_to(space.low, (length, *space.shape))
    high = np.broadcast_to(space.high, (length, *space.shape))
    pad = np.clip(np.zeros(space.shape), space.low, space.high).astype(space.dtype)
    return spaces.Box(low, high, (length, *space.shape), space.dtype), pad


class HistoryObservation(gym.Wrapper):
    """Observe the last ``length`` steps of the episode instead of the current one.

    Observation: ``Dict(obs=(K, *step_shape), valid=(K,))``, newest step last. ``valid`` is 1 for real
    steps of the current episode and 0 for padding (which holds a fixed in-space filler); the newest
    step is always valid. Box observations keep their shape, but for scalars (one number), channel-last
    images (channels first) and 2-D uint8 frames (flat), and their dtype, but for integer and bool steps
    other than uint8 (float32, or float64 where a bound passes 2**24; values unchanged); Discrete and MultiDiscrete become
    one-hot float vectors, MultiBinary a float vector, Dict and Tuple one float vector of their leaves
    (see :func:`step_encoder`).

    :param env: any Gymnasium env with a Box, Discrete, MultiDiscrete or MultiBinary observation, or a
        Dict or Tuple of them (flattened into one float32 vector per step; text keys dropped with a warning).
    :param length: history length K (>= 1).
    :param include_action: add ``action`` (K, A): the action that led to each step (one-hot if
        discrete; zeros for the first step).
    :param include_reward: add ``reward`` (K, 1): the reward received on arriving at each step.
    """

    def __init__(self, env: gym.Env, length: int, include_action: bool = False, include_reward: bool = False):
        super().__init__(env)
        self.length = check_int("history length", length)
        self._encode_obs, step_space = step_encoder(env.observation_space, "observation")
        obs_space, obs_pad = _stacked(step_space, self.length)
        fields: dict[str, tuple[spaces.Box, np.ndarray]] = {"obs": (obs_space, obs_pad)}
        self._encode_action = None
        if include_action:
            self._encode_action, action_space = step_encoder(env.action_space, "action")
            fields["action"] = _stacked(action_space, self.length)
        if include_reward:
            fields["reward"] = _stacked(spaces.Box(-np.inf, np.inf, (1,), np.float32), self.length)
        self._pads = {key: pad for key, (_, pad) in fields.items()}
        self._buffers = {key: np.empty(space.shape, space.dtype) for key, (space, _) in fields.items()}
        self._valid = np.zeros(self.length, dtype=np.float32)
        self.observation_space = spaces.Dict(
            {
                **{key: space for key, (space, _) in fields.items()},
                "valid": spaces.Box(0.0, 1.0, (self.length,), np.float32),
            }
        )

    def _push(self, step: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for key, buffer in self._buffers.items():
            buffer[:-1] = buffer[1:]
            buffer[-1] = step[key]
        self._valid[:-1] = self._valid[1:]
        self._valid[-1] = 1.0
        return {**{key: buffer.copy() for key, buffer in self._buffers.items()}, "valid": self._valid.copy()}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        for key, buffer in self._buffers.items():
            buffer[:] = self._pads[key]
        self._valid[:] = 0.0
        first = {key: pad for key, pad in self._pads.items()} | {"obs": self._encode_obs(obs)}
        return self._push(first), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        step = {"obs": self._encode_obs(obs)}
        if self._encode_action is not None:
            step["action"] = self._encode_action(action)
        if "reward" in self._buffers:
            step["reward"] = np.float32(reward)
        return self._push(step), reward, terminated, truncated, info
