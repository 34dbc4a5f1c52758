"""Per-env hyperparameters that work, keyed by algorithm and env family; the command line overrides them."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
from stable_baselines3.common.preprocessing import is_image_space

from rlattn.wrappers import FlatObservation, coded_width


@dataclass(frozen=True)
class Preset:
    """Defaults for one (algorithm, env family)."""

    n_timesteps: int
    """env steps to train for"""
    n_envs: int
    """parallel envs"""
    hyperparams: dict[str, Any] = field(default_factory=dict)
    """algorithm keywords, plus extractor keywords (embed_dim, n_layers, ...)"""
    per_extractor: dict[str, dict[str, Any]] = field(default_factory=dict)
    """extra keywords for one extractor, over ``hyperparams``"""
    history: int | None = None
    """history length K; None: a whole episode (see :func:`default_history`)"""
    train_env: Callable[[gym.Env], dict[str, Any]] | None = None
    """env keywords for the training envs only, from the env as given (evaluation keeps that env);
    skipped when ``--env-kwargs`` names any of them or ``--eval-env-kwargs`` is given"""
    extractor: str | None = None
    """the extractor this family takes when ``--extractor`` is not given (None: the algorithm's default)"""
    history_inputs: Callable[[gym.Env], tuple[str, ...]] | None = None
    """what each observed step holds besides the observation (``"action"``, ``"reward"``), from the env
    as given; None: the observation only. ``--history-inputs`` overrides it"""

    def for_extractor(self, extractor: str) -> dict[str, Any]:
        return {**self.hyperparams, **self.per_extractor.get(extractor, {})}


_PPO_TMAZE = {
    "n_steps": 128,
    "batch_size": 256,
    "n_epochs": 4,
    "learning_rate": 3e-4,
    # stop an update's epochs early: a converged agent once collapsed in one update (L=10 seed 0, 74k)
    "target_kl": 0.02,
    # 0.01 let the policy commit to "always right" before it found the turn (L=20 seed 2, L=30 seed 0)
    "ent_coef": 0.03,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "net_arch": [64],
    "features_dim": 64,
    "embed_dim": 64,
    "n_heads": 4,
    "n_layers": 1,
}

# long corridors: the short preset reached 1.00 at L = 100, then fell back (README, "what made it work")
_PPO_TMAZE_LONG = {**_PPO_TMAZE, "ent_coef": 0.01, "target_kl": 0.01}
_EPISODIC_TMAZE = {**_PPO_TMAZE, "n_steps": 32, "gate": "residual"}
_EPISODIC_TMAZE_LONG = {**_PPO_TMAZE_LONG, "n_steps": 32, "gate": "residual"}
# L = 1000 (README, "ppo_attention at L = 1000"): with rotary positions 1 of 6 runs ever evaluated at
# 1.00 within 1M steps, without positions 8 of 14; half the training episodes without slack, a decaying
# step size: final 1.00, 0.00, 1.00 on seeds 0-2 when trained on corridors 10..1000
_EPISODIC_TMAZE_1000 = {**_EPISODIC_TMAZE_LONG, "position": "none", "learning_rate": "lin_3e-4"}
TIGHT_FRACTION_1000 = 0.5
EPISODIC_SHORTEST_CORRIDOR = 2
"""ppo_attention's shortest training corridor on long mazes (README, "ppo_attention at L = 1000"): the
turn is learnt where the cue is a few steps back, and in 1M env steps 2..1000 gave 2,644 episodes of at
most 31 steps where 10..1000 gave 940. Final success over seeds, from 10 -> from 2: L = 100 1.00 0.60 1.00 ->
1.00 x 3; L = 300 1.00 1.00 0.45 -> 1.00 x 3; L = 1000 1.00 0.00 1.00 -> 1.00 x 5"""
SHORTEST_CORRIDOR_1000 = 2
"""every algorithm's shortest training corridor from corridor 1000 on (README, "L = 1000 over seeds"): the
stateless attention extractor, 500k env steps, seeds 0-2: from 10, final 0.00 1.00 0.00; from 2, 1.00 x 3
(0.95 at 425k, 300k, 275k). The memory baselines train on the same corridors"""
LENGTH_EXPONENT_10000 = 1.5
"""ppo_attention from corridor 10,000 on: training lengths drawn with density ~ length ** -1.5 instead of
log-uniformly (README, "ppo_attention at L = 10,000"). Log-uniform on 2..10000 spends env steps evenly
over lengths: 1,170 steps per episode, about 1,700 episodes in 2M steps, 550 of them at most 31 steps
long, where the L = 1000 runs needed 1,000-1,200 such short episodes to learn the turn. At 1.5: about
140 steps per episode, 14,000 episodes, 75% of them at most 31 steps long and still ~430 of 1,000+."""
NEAR_START = 0.5
"""GlimpseSearch training: the share of episodes whose cursor starts 0..glimpse moves from the target"""
ACTIVE_1000 = {"episode_penalty": True}
"""ppo_attention on active mazes from corridor 1000 on: each training episode's step penalty from its own
time limit (README, "Active T-Maze"). With the longest corridor's (2^-11, 1/256 of what a wasted step in
a tight 5-step episode costs with it) the first step was not learnt: evaluations 0.00 to 350k steps, the
policy stepping back to the cue at the start with p 0.01-0.06, with the preset, with gamma 0.999 or with
more short episodes (length_exponent 1.5); with it, 6 of 6 seeds at 1.00"""
LONG_MEMORY = 50
"""episode length from which a T-Maze takes the long-corridor preset"""

# every T-Maze trains on mixed corridor lengths with slack: on the plain maze no method learnt to turn (README)
SHORTEST_TRAINING_CORRIDOR = 10
"""the longest shortest training corridor (see :func:`training_corridors`)"""


def training_corridors(length: int) -> tuple[int, int]:
    """``(min_corridor_length, slack)`` of the training episodes of a T-Maze with this corridor length."""
    tenth = -(-length // 10)
    return min(SHORTEST_TRAINING_CORRIDOR, tenth), tenth


def _mixed_lengths(env: gym.Env, active_extra: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """Training-env keywords: mixed corridor lengths with slack, ``extra``, and ``active_extra`` on the active maze."""
    shortest, slack = training_corridors(int(env.unwrapped.corridor_length))  # type: ignore[attr-defined]
    active = getattr(env.unwrapped, "active", False)
    return {"min_corridor_length": shortest, "slack": slack, **extra, **((active_extra or {}) if active else {})}


# the active maze's start and corridor look alike: the previous action tells them apart (README)
def _action_if_active(env: gym.Env) -> tuple[str, ...]:
    return ("action",) if getattr(env.unwrapped, "active", False) else ()


# The answer is a cell and each patch is a cell: the attention extractors read out with a pointer
# whose log-weights are the action logits (no hidden layer on the policy side, identity init).
_PPO_SEARCH = {
    "n_steps": 128,
    "batch_size": 256,
    "n_epochs": 4,
    "learning_rate": 3e-4,
    "ent_coef": 0.01,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "net_arch": [64],
    "features_dim": 64,
    "embed_dim": 64,
    "n_heads": 4,
}
_POINTER = {"readout": "pointer", "net_arch": {"pi": [], "vf": [64]}}
_CNN = {"features_dim": 256}


# envs outside this package's families (benchmarks/third_party.py, README "On tasks we did not write"):
# the search settings with one transformer block
_PPO_ANY = {**_PPO_SEARCH, "n_layers": 1}
_EPISODIC_ANY = {**_PPO_ANY, "n_steps": 32, "gate": "residual"}
_EPISODIC_POINTER = {"net_arch": {"pi": [], "vf": [64]}}
# an env we did not write may pay any reward scale (CartPole: 1 a step, returns up to ~100 discounted):
# its training rewards are divided by a running spread of the return (README, "On tasks we did not write")
_OUTSIDE = {"normalize_reward": True}


def _algorithm_only(hyperparams: dict[str, Any]) -> dict[str, Any]:
    """The same PPO settings for ppo_lstm, which has its own LSTM instead of our extractor."""
    return {k: v for k, v in hyperparams.items() if k not in ("features_dim", "embed_dim", "n_heads", "n_layers")}


def _tmaze(
    n_timesteps: int,
    n_envs: int,
    hyperparams: dict[str, Any],
    per_extractor: dict[str, dict[str, Any]] | None = None,
    **train_extra: Any,
) -> Preset:
    """A T-Maze preset: mixed corridor lengths in training (and ``train_extra``, more training-env
    keywords), and the previous action on the active maze."""
    return Preset(
        n_timesteps,
        n_envs,
        hyperparams,
        per_extractor or {},
        train_env=functools.partial(_mixed_lengths, **train_extra),
        history_inputs=_action_if_active,
    )


# local attention needs two blocks to be local at all: one block's window must span the whole history
_TWO_LOCAL_BLOCKS = {"local-attention": {"n_layers": 2}}
# global attention on T-Mazes shorter than 1000: one head whose logits grow with log(steps seen) (README,
# "Why the cue gets ..."). With four heads the readout's mass on the cue at the junction was 0.72, 0.62
# and 0.31 at L = 10, 30 and 100 (mean of 3 seeds): one head read the cue while the others looked
# elsewhere, and over a hundred steps a plain softmax spreads; one head with length_scale put 0.96, 0.91
# and 0.84 there, success 1.00 on every run either way. At L = 1000 it solved each of 3 seeds, then two
# fell back to 0.45-0.60 by 500k where four heads ended at 1.00 on all three: that preset keeps four
_TMAZE_PER_EXTRACTOR = {**_TWO_LOCAL_BLOCKS, "attention": {"n_heads": 1, "length_scale": True}}

PRESETS: dict[tuple[str, str], Preset] = {
    ("ppo", "TMaze"): _tmaze(100_000, 8, _PPO_TMAZE, _TMAZE_PER_EXTRACTOR),
    ("ppo", "TMaze-long"): _tmaze(300_000, 8, _PPO_TMAZE_LONG, _TMAZE_PER_EXTRACTOR),
    ("ppo", "TMaze-300"): _tmaze(500_000, 8, _PPO_TMAZE_LONG, _TMAZE_PER_EXTRACTOR),
    # corridor 1000, attention, seeds 0-2: eval success 1.00 from 425k, 300k, 275k (~300 env steps/s, 2 side by side)
    ("ppo", "TMaze-1000"): _tmaze(
        1_000_000, 8, _PPO_TMAZE_LONG, _TWO_LOCAL_BLOCKS, min_corridor_length=SHORTEST_CORRIDOR_1000
    ),
    ("a2c", "TMaze"): _tmaze(
        200_000,
        8,
        {"n_steps": 16, "learning_rate": 7e-4, "ent_coef": 0.01, "net_arch": [64], "features_dim": 64, "n_layers": 1},
    ),
    ("dqn", "TMaze"): _tmaze(
        200_000,
        4,
        {
            "buffer_size": 50_000,
            "learning_starts": 1_000,
            "exploration_fraction": 0.3,
            "target_update_interval": 1_000,
            "net_arch": [64],
            "features_dim": 64,
            "n_layers": 1,
        },
    ),
    ("ppo_lstm", "TMaze"): _tmaze(100_000, 8, _algorithm_only(_PPO_TMAZE)),
    # one-step episodes: every env step is a whole search, so a rollout of 128 x 8 is 1,024 searches
    ("ppo", "VisualSearch"): Preset(
        500_000, 8, _PPO_SEARCH, {"patch-attention": {**_POINTER, "n_layers": 0}, "cnn": _CNN}
    ),
    ("ppo", "CuedVisualSearch"): Preset(
        500_000,
        8,
        _PPO_SEARCH,
        # a residual skip, not the GTrXL gate: the cue must reach the memory from the start (README)
        {"spatiotemporal-attention": {**_POINTER, "spatial_layers": 0, "gate": "residual"}, "cnn-stack": _CNN},
    ),
    # 16 glimpses of history, not the 64-step episode: SB3 keeps rollouts as float32 (64 frames would be 3 GiB)
    ("ppo", "GlimpseSearch"): Preset(
        1_000_000,
        8,
        {**_PPO_SEARCH, "n_steps": 64, "batch_size": 128},
        {"spatiotemporal-attention": {"spatial_layers": 0}, "cnn-stack": _CNN},
        history=16,
    ),
    ("ppo", "*"): Preset(100_000, 8, {**_PPO_ANY, **_OUTSIDE}),
    ("a2c", "*"): Preset(100_000, 8, {}),
    ("dqn", "*"): Preset(100_000, 1, {"buffer_size": 100_000}),
    ("ppo_lstm", "TMaze-long"): _tmaze(300_000, 8, _algorithm_only(_PPO_TMAZE_LONG)),
    ("ppo_lstm", "TMaze-300"): _tmaze(500_000, 8, _algorithm_only(_PPO_TMAZE_LONG)),
    ("ppo_lstm", "TMaze-1000"): _tmaze(
        1_000_000, 8, _algorithm_only(_PPO_TMAZE_LONG), min_corridor_length=SHORTEST_CORRIDOR_1000
    ),
    ("ppo_lstm", "*"): Preset(100_000, 8, _algorithm_only({**_PPO_ANY, **_OUTSIDE})),
    ("ppo_attention", "*"): Preset(100_000, 32, {**_EPISODIC_ANY, **_OUTSIDE}),
    # the episodic-memory PPO: the attention agent's settings on 32 envs x 32 steps with a residual skip,
    # 2.2x the env steps/s of 8 x 128 with the GTrXL gate at L = 30, and 1.00 by 45k steps either way
    ("ppo_attention", "TMaze"): _tmaze(100_000, 32, _EPISODIC_TMAZE),
    ("ppo_attention", "TMaze-long"): _tmaze(
        300_000, 32, _EPISODIC_TMAZE_LONG, min_corridor_length=EPISODIC_SHORTEST_CORRIDOR
    ),
    ("ppo_attention", "TMaze-300"): _tmaze(
        500_000, 32, _EPISODIC_TMAZE_LONG, min_corridor_length=EPISODIC_SHORTEST_CORRIDOR
    ),
    # images: each frame's patches once; the memory steers a pointer over the current frame's patches,
    # whose log-weights are the action logits (an actor without hidden layers)
    ("ppo_attention", "VisualSearch"): Preset(100_000, 32, _EPISODIC_ANY, {"patch-attention": _EPISODIC_POINTER}),
    # 1M steps: at 500k seeds 0 and 2 stood at 0.955 and 0.905 (1,000 episodes), at 1M seeds 0-3 at 0.988-0.995
    ("ppo_attention", "CuedVisualSearch"): Preset(1_000_000, 32, _EPISODIC_ANY, {"patch-attention": _EPISODIC_POINTER}),
    # the glimpse: NatureCNN frames (the patch policy stayed at 0.01-0.09 where the CNN reached 0.33 by 275k,
    # seed 0), and half the training episodes start 0..3 moves from the target (README, "GlimpseSearch")
    ("ppo_attention", "GlimpseSearch"): Preset(
        1_000_000,
        32,
        _EPISODIC_ANY,
        train_env=lambda env: {"near_start": NEAR_START},
        extractor="cnn",
    ),
    ("ppo_attention", "TMaze-1000"): _tmaze(
        1_000_000,
        32,
        _EPISODIC_TMAZE_1000,
        tight_fraction=TIGHT_FRACTION_1000,
        min_corridor_length=EPISODIC_SHORTEST_CORRIDOR,
        active_extra=ACTIVE_1000,
    ),
    # L = 10,000, seed 0: the plain maze at 1.00 first at 600k env steps, final 1.00
    # (459 env steps/s, 74 min on 2 cores)
    ("ppo_attention", "TMaze-10000"): _tmaze(
        2_000_000,
        32,
        _EPISODIC_TMAZE_1000,
        tight_fraction=TIGHT_FRACTION_1000,
        min_corridor_length=EPISODIC_SHORTEST_CORRIDOR,
        length_exponent=LENGTH_EXPONENT_10000,
        active_extra=ACTIVE_1000,
    ),
}

FALLBACK = Preset(100_000, 8, {})
"""an algorithm without presets of its own: its defaults, 8 envs, 100k env steps"""

DEFAULT_HISTORY = 64
"""history for an env that does not say how long its episodes are"""
STATELESS_HISTORY_CAP = 128
"""the longest default history a HistoryObservation gets on envs without a preset: every stored step
holds K copies (MiniGrid MemoryS13's 845-step cap would make 510 KB per stored observation)"""
STATELESS_IMAGE_HISTORY_CAP = 16
"""... and on image envs without a preset: 128 frames of 84x84x3 in every observation would make a
PPO rollout of 2,048 steps 2.8 GB (the package's own GlimpseSearch keeps 16 frames for the same reason)"""
EPISODIC_HISTORY_CAP = 1024
"""the longest default memory window of an episodic algorithm (cost per step grows with it slowly)"""


FAMILIES = ("TMaze", "VisualSearch", "CuedVisualSearch", "GlimpseSearch")


def env_family(env_id: str) -> str:
    """``rlattn/TMazeActive-L30-v0`` -> ``TMaze``; envs without a preset -> ``*``."""
    name = env_id.split(":")[-1]
    return next((family for family in FAMILIES if name.startswith(f"rlattn/{family}")), "*")


TMAZE_TIERS = ((10_000, "TMaze-10000"), (1000, "TMaze-1000"), (300, "TMaze-300"))
"""corridor lengths from which a T-Maze takes a longer preset (the longest that applies and exists)"""


def preset_for(algo: str, env_id: str, env: gym.Env | None = None) -> Preset:
    """The preset for this algorithm and env; long T-Mazes get their own where there is one."""
    family = env_family(env_id)
    if family == "TMaze" and env is not None:
        maze = env.unwrapped
        corridor = getattr(maze, "longest_corridor", getattr(maze, "corridor_length", 0))
        for length, tier in TMAZE_TIERS:
            if corridor >= length and (algo, tier) in PRESETS:
                return PRESETS[(algo, tier)]
        if getattr(maze, "max_steps", 0) >= LONG_MEMORY and (algo, "TMaze-long") in PRESETS:
            return PRESETS[(algo, "TMaze-long")]
    return PRESETS.get((algo, family), PRESETS.get((algo, "*"), FALLBACK))


def default_patch_size(env: gym.Env) -> int:
    """Patches as large as the env's grid cells where they tile the image, else the largest that does (at most 8)."""
    shape = env.observation_space.shape or (0,)
    side = math.gcd(*shape[-2:]) if len(shape) >= 2 else 1
    grid = getattr(env.unwrapped, "grid", None)
    cell = shape[-1] // grid if isinstance(grid, int) and grid > 0 else 8
    return max(p for p in range(1, max(1, min(cell, side)) + 1) if side % p == 0)


def _space_seen(env: gym.Env) -> gym.Space:
    """The observation space as the wrappers give it (a wrapper that draws pixels makes an image env),
    before ``FlatObservation`` where it flattens a Dict or Tuple (an image leaf stays pixels in each step)."""
    inner: gym.Env = env
    while isinstance(inner, gym.Wrapper):
        if isinstance(inner, FlatObservation):
            return inner.env.observation_space
        inner = inner.env
    return env.observation_space


def _holds_image(space: gym.Space, leaf: bool = False) -> bool:
    """An image Box (uint8 0..255, three axes), alone or as a leaf of a Dict or Tuple that
    ``FlatObservation`` keeps as pixels in every step (too large to code: MiniGrid's 7x7x3 grid of
    object indices is coded, 8 bits a number, and is no picture here)."""
    if isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)):
        leaves = space.spaces.values() if isinstance(space, gym.spaces.Dict) else space.spaces
        return any(_holds_image(inner, leaf=True) for inner in leaves)
    if not (isinstance(space, gym.spaces.Box) and is_image_space(space, check_channels=False)):
        return False
    return not leaf or coded_width(space) is None


def episode_cap(env: gym.Env) -> int | None:
    """The most steps an episode can last, where the env says: the shortest of its TimeLimit and the
    env's own limit (``max_steps``: this package's envs, MiniGrid; ``max_episode_length``: POPGym)."""
    spec_steps = env.spec.max_episode_steps if env.spec is not None else None
    own = env.unwrapped
    limits = [getattr(own, "max_steps", None), getattr(own, "max_episode_length", None), spec_steps]
    found = [value for value in limits if isinstance(value, int) and not isinstance(value, bool) and value > 0]
    return min(found) if found else None


def default_history(env: gym.Env, memory: str = "observation") -> int:
    """A history long enough for the task: a whole episode where the env says how long that is.

    ``memory`` is the algorithm's kind: outside this package's envs (whose presets were measured
    with whole episodes) the default is capped at :data:`STATELESS_HISTORY_CAP` steps when the
    history lives in the observation, at :data:`EPISODIC_HISTORY_CAP` for an episodic memory.
    """
    cap = episode_cap(env)
    if cap is None:
        return int(getattr(env.unwrapped, "shortest_episode", DEFAULT_HISTORY))
    if env_family(env.spec.id if env.spec is not None else "") != "*":
        return cap
    if memory == "episodic":
        return min(cap, EPISODIC_HISTORY_CAP)
    return min(cap, STATELESS_IMAGE_HISTORY_CAP if _holds_image(_space_seen(env)) else STATELESS_HISTORY_CAP)
