"""One registry of feature extractors and algorithms: adding one is an entry here plus its class.

Everything else reads the entries: ``--help``, the ``--algo`` choices, every "allowed are ..." message,
the default extractor, which observation wrapper a run uses, SB3's ``ortho_init``, attention logging.
A project of your own registers more with :func:`register_extractor` and :func:`register_algo` before
calling ``agents.cli.main``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gymnasium as gym
from sb3_contrib import RecurrentPPO
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import NatureCNN

from agents.presets import default_patch_size
from rlattn import (
    AttentionPPO,
    HistoryAttentionExtractor,
    HistoryFlattenExtractor,
    PatchAttentionExtractor,
    SpatioTemporalAttentionExtractor,
    StepEncoder,
)
from rlattn.episodic import EpisodicTransformer
from rlattn.episodic_policy import MEMORY_KEYS
from rlattn.image_extractors import FramePatchExtractor

if TYPE_CHECKING:
    from agents.plan import RunPlan

INPUTS = ("vector", "image")
VIEWS = ("history", "newest", "frame", "stack")
MEMORIES = ("observation", "recurrent", "episodic")


@dataclass(frozen=True)
class ExtractorEntry:
    """A feature extractor as ``--extractor NAME`` selects it."""

    name: str
    cls: type
    """the SB3 ``BaseFeaturesExtractor`` class"""
    inputs: str
    """what it embeds: ``"vector"`` steps or ``"image"`` frames"""
    view: str
    """how the policy sees the env: ``"history"`` (``HistoryObservation`` of ``--history`` steps), ``"newest"``
    (a one-step history), ``"frame"`` (the observation as it is) or ``"stack"`` (frames stacked by SB3's VecFrameStack)"""
    help: str
    """one phrase for ``--help``"""
    ortho_init: bool = False
    """whether SB3's orthogonal re-initialisation applies (True for the MLP and CNN baselines; the
    transformers keep their own init)"""
    logs_attention: bool = False
    """whether runs log ``attention/`` views (the class then has ``attention_maps``)"""
    defaults: Callable[[RunPlan, gym.Env], dict[str, Any]] | None = None
    """keyword defaults from the resolved plan and one env (the user's ``-params`` override them)"""
    min_image_side: int = 1
    """the smallest image side it accepts (images only)"""

    def __post_init__(self) -> None:
        if self.inputs not in INPUTS or self.view not in VIEWS:
            raise ValueError(f"extractor {self.name!r}: inputs must be one of {INPUTS}, view one of {VIEWS}")


@dataclass(frozen=True)
class AlgoEntry:
    """An algorithm as ``--algo NAME`` selects it."""

    name: str
    cls: type[BaseAlgorithm]
    help: str
    memory: str = "observation"
    """``"observation"``: stateless, any memory is the history the extractor sees; ``"recurrent"``: carries
    its own state between steps and sees one step (a one-step history when steps also hold the previous
    action or reward), with the per-step encoder in ``own_extractors``; ``"episodic"``: keeps the last
    ``--history`` steps of the episode itself, sees the env as it is and takes the previous action or
    reward as keywords (``plan_kwargs``)"""
    own_extractors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """``{"vector": names, "image": names}``: the only extractors it takes for each kind of observation,
    the default first (empty: any stateless extractor, chosen by ``--extractor``)"""
    frame_encoders: dict[str, tuple[str | None, type]] = field(default_factory=dict)
    """``{extractor: (policy name, encoder class)}``: an own extractor that selects its own policy (None: the
    kind's policy, with the encoder as its features extractor), whose encoder's keywords ``-params`` may set
    besides ``memory_keys``"""
    memory_keys: tuple[str, ...] = ()
    """``-params`` keys of its own memory (an episodic algorithm's transformer), passed as ``memory_kwargs``"""
    memory_class: Callable[..., Any] | None = None
    """its memory, built once from ``memory_keys`` (with ``input_dim`` and ``window``) to check them before a run"""
    logs_attention: bool = False
    """whether runs log ``attention/`` views of its memory (the class then has ``attention_maps``)"""
    plan_kwargs: Callable[[RunPlan], dict[str, Any]] | None = None
    """keywords the algorithm takes from the resolved plan (an episodic memory's window and inputs)"""
    history_inputs: tuple[str, ...] = ("action", "reward")
    """what its steps can hold besides the observation (``--history-inputs``)"""
    policies: dict[str, str] = field(
        default_factory=lambda: {"vector": "MlpPolicy", "image": "CnnPolicy", "dict": "MultiInputPolicy"}
    )
    """SB3 policy name for ``"vector"``, ``"image"`` and ``"dict"`` observations as the policy sees them"""

    @property
    def actor_critic(self) -> bool:
        """Its policy takes SB3's ``ortho_init`` (PPO, A2C and their kin)."""
        return "ortho_init" in inspect.signature(self.policy_class("vector")).parameters

    def keyword_defaults(self) -> dict[str, Any]:
        """Its constructor's keywords and their defaults (``inspect.Parameter.empty`` where none), and those of
        the classes it hands ``**kwargs`` on to; where two take a keyword, the nearer class's default."""
        defaults: dict[str, Any] = {}
        for cls in self.cls.__mro__:
            if "__init__" not in vars(cls):
                continue
            params = inspect.signature(cls).parameters
            for name, p in params.items():
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                    defaults.setdefault(name, p.default)
            if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                break
        return defaults

    def keywords(self) -> set[str]:
        """Its constructor's keywords, and those of the classes it hands ``**kwargs`` on to."""
        return set(self.keyword_defaults())

    def policy_name(self, kind: str, extractor: str | None = None) -> str:
        """SB3 policy name for a kind of observation (and the extractor, if it selects its own policy)."""
        name = self.frame_encoders[extractor][0] if extractor in self.frame_encoders else None
        return name if name is not None else self.policies[kind]

    def policy_class(self, kind: str) -> type:
        return self.cls.policy_aliases[self.policies[kind]]  # type: ignore[return-value]

    def frame_keys(self, extractor: str) -> set[str]:
        """``-params`` keys of an own extractor's encoder that are not memory keys (none for most)."""
        if extractor not in self.frame_encoders:
            return set()
        params = inspect.signature(self.frame_encoders[extractor][1]).parameters
        return set(params) - {"observation_space"} - set(self.memory_keys)

    def frame_kwargs(self, extractor: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The entries of ``kwargs`` that go to the extractor's frame encoder (see :meth:`frame_keys`)."""
        keys = self.frame_keys(extractor)
        return {k: v for k, v in kwargs.items() if k in keys}


EXTRACTORS: dict[str, ExtractorEntry] = {}
ALGOS: dict[str, AlgoEntry] = {}


def register_extractor(entry: ExtractorEntry) -> ExtractorEntry:
    """Make ``--extractor entry.name`` select ``entry`` (replacing an entry of that name)."""
    EXTRACTORS[entry.name] = entry
    return entry


def register_algo(entry: AlgoEntry) -> AlgoEntry:
    """Make ``--algo entry.name`` select ``entry`` (replacing an entry of that name)."""
    if entry.memory not in MEMORIES:
        raise ValueError(f"algorithm {entry.name!r}: memory={entry.memory!r} is invalid: allowed are {MEMORIES}")
    ALGOS[entry.name] = entry
    return entry


def names(entries: dict[str, Any], **where: Any) -> list[str]:
    """Names of the entries whose attributes equal ``where`` (all of them by default), in registration order."""
    return [name for name, entry in entries.items() if all(getattr(entry, k) == v for k, v in where.items())]


def listed(items: list[str]) -> str:
    """``a, b or c`` for messages."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def is_image(space: gym.Space) -> bool:
    """A channel-first image Box, as SB3's CNN policies take it (uint8 0..255, any channel count)."""
    return isinstance(space, gym.spaces.Box) and is_image_space(space, check_channels=False)


def default_extractor(algo: AlgoEntry, image: bool, history: int) -> str:
    """The extractor a run takes when ``--extractor`` is not given."""
    kind = "image" if image else "vector"
    if kind in algo.own_extractors:
        return algo.own_extractors[kind][0]
    if not image:
        return "attention"
    return "patch-attention" if history == 1 else "spatiotemporal-attention"


def extractor_help() -> str:
    """The ``--extractor`` help text, from the entries."""
    parts = [
        f"{kind.capitalize()}s: " + ", ".join(f"{e.name} ({e.help})" for e in EXTRACTORS.values() if e.inputs == kind)
        for kind in INPUTS
    ]
    own = "; ".join(
        f"{a.name} takes only {listed([n for names in a.own_extractors.values() for n in names])}"
        for a in ALGOS.values()
        if a.own_extractors
    )
    default = "Default: attention on vectors; patch-attention on images, spatiotemporal-attention when episodes are longer than one step"
    return ". ".join([*parts, default + (f"; {own}" if own else "")])


def algo_help() -> str:
    return "RL algorithm: " + ", ".join(f"{a.name} ({a.help})" for a in ALGOS.values())


NATURE_CNN_MIN = 36
"""the smallest image side NatureCNN's convolutions (8/4, 4/2, 3/1) accept"""
SPARSE_TOP_K = 4
"""key blocks each query block attends to (besides its own) with --extractor sparse-attention (-params top_k:N)"""
SPARSE_BLOCK_SIZE = 16
"""steps per block with --extractor sparse-attention (-params block_size:N): 16 x (4 + 1) = 80 steps seen per step"""


def local_window(plan: RunPlan, env: gym.Env | None = None) -> dict[str, Any]:
    """Local attention whose window is just wide enough for the stacked blocks to reach the oldest step."""
    default_layers = inspect.signature(HistoryAttentionExtractor).parameters["n_layers"].default
    n_layers = int(plan.extractor_kwargs.get("n_layers", default_layers))
    return {"attention": "local", "window": min(plan.history, -(-(plan.history - 1) // n_layers) + 1)}


def _sparse(plan: RunPlan, env: gym.Env | None = None) -> dict[str, Any]:
    return {"top_k": SPARSE_TOP_K, "block_size": SPARSE_BLOCK_SIZE}


def _patches(plan: RunPlan, env: gym.Env) -> dict[str, Any]:
    return {"patch_size": default_patch_size(env)}


for _entry in (
    ExtractorEntry("attention", HistoryAttentionExtractor, "vector", "history", "global", logs_attention=True),
    ExtractorEntry(
        "local-attention",
        HistoryAttentionExtractor,
        "vector",
        "history",
        "windowed, cost linear in K",
        logs_attention=True,
        defaults=local_window,
    ),
    ExtractorEntry(
        "sparse-attention",
        HistoryAttentionExtractor,
        "vector",
        "history",
        f"block-routed: each {SPARSE_BLOCK_SIZE} steps attend to their {SPARSE_TOP_K} best blocks and their own",
        logs_attention=True,
        defaults=_sparse,
    ),
    ExtractorEntry("mlp", HistoryFlattenExtractor, "vector", "newest", "newest step only", ortho_init=True),
    ExtractorEntry("mlp-stack", HistoryFlattenExtractor, "vector", "history", "flattened history", ortho_init=True),
    ExtractorEntry(
        "patch-attention",
        PatchAttentionExtractor,
        "image",
        "frame",
        "one frame",
        logs_attention=True,
        defaults=_patches,
    ),
    ExtractorEntry(
        "spatiotemporal-attention",
        SpatioTemporalAttentionExtractor,
        "image",
        "history",
        "patches within frames, attention across a history of frames",
        logs_attention=True,
        defaults=_patches,
    ),
    ExtractorEntry(
        "cnn", NatureCNN, "image", "frame", "SB3's NatureCNN", ortho_init=True, min_image_side=NATURE_CNN_MIN
    ),
    ExtractorEntry(
        "cnn-stack",
        NatureCNN,
        "image",
        "stack",
        "NatureCNN on the last K frames stacked",
        ortho_init=True,
        min_image_side=NATURE_CNN_MIN,
    ),
):
    register_extractor(_entry)

register_algo(AlgoEntry("ppo", PPO, "PPO"))
register_algo(AlgoEntry("a2c", A2C, "A2C"))
register_algo(AlgoEntry("dqn", DQN, "DQN"))


def _episodic(plan: RunPlan) -> dict[str, Any]:
    """AttentionPPO's window is --history, its step inputs --history-inputs, its transformer the memory keys."""
    inputs = plan.history_inputs
    return {
        "memory": plan.history,
        "include_action": "action" in inputs,
        "include_reward": "reward" in inputs,
        "memory_kwargs": {k: v for k, v in plan.extractor_kwargs.items() if k in MEMORY_KEYS},
    }


register_algo(
    AlgoEntry(
        "ppo_attention",
        AttentionPPO,
        "rlattn's AttentionPPO: episodic memory, each step encoded once, attention over the last --history steps",
        memory="episodic",
        # images: patches with a look after the memory by default (README, "Episodic memory on images")
        own_extractors={"vector": ("mlp",), "image": ("patch-attention", "cnn")},
        frame_encoders={"patch-attention": ("PatchPolicy", FramePatchExtractor)},
        memory_keys=MEMORY_KEYS,
        memory_class=EpisodicTransformer,
        logs_attention=True,
        plan_kwargs=_episodic,
        # evaluate_policy cannot hand predict() the rewards: the previous action only
        history_inputs=("action",),
    )
)
register_algo(
    AlgoEntry(
        "ppo_lstm",
        RecurrentPPO,
        "sb3-contrib's RecurrentPPO, the LSTM baseline",
        memory="recurrent",
        own_extractors={"vector": ("mlp",), "image": ("cnn",)},
        # a step wider than 64 numbers is encoded to 64 before the LSTM (StepEncoder: 6.3x the env steps/s on MiniGrid)
        frame_encoders={"mlp": (None, StepEncoder)},
        policies={"vector": "MlpLstmPolicy", "image": "CnnLstmPolicy", "dict": "MultiInputLstmPolicy"},
    )
)
