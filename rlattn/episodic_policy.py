"""Actor-critic policies with an episodic memory between SB3's features extractor and its MLP heads.

Shape letters: B envs, T steps, D encoded observation, X extra inputs (previous action, previous
reward), F memory features. Per step: observation -> SB3 features extractor (D) -> concatenated with
the extras -> :class:`~rlattn.episodic.EpisodicTransformer` (F) -> ``mlp_extractor`` -> heads.
"""

from __future__ import annotations

from typing import Any, NoReturn

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import CombinedExtractor, NatureCNN
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import Tensor

from rlattn.episodic import CarriedMemory, EpisodicMemory, EpisodicTransformer
from rlattn.image_extractors import FRAME_PATCH_SIZE, FramePatchExtractor, MemoryLook
from rlattn.patches import init_pointer_head

MEMORY_KEYS = ("features_dim", "embed_dim", "n_heads", "n_layers", "gate", "position", "length_scale")
"""what ``memory_kwargs`` may set"""


def action_size(space: spaces.Space) -> int:
    """Numbers per previous action in a step's input: one-hot for discrete spaces, else the flat action."""
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete):
        return int(space.nvec.sum())
    if isinstance(space, (spaces.Box, spaces.MultiBinary)):
        return int(np.prod(space.shape))
    raise ValueError(f"action space {space} is not supported: allowed are Box, Discrete, MultiDiscrete, MultiBinary")


def action_features(space: spaces.Space, actions: Tensor) -> Tensor:
    """The policy's actions (B, ...) -> (B, A): one-hot if discrete, else flat floats.

    Discrete actions are SB3's indices 0 .. n-1, which SB3 hands to the env as they are whatever the
    space's ``start`` (SB3's env checker warns that a non-zero start is not supported)."""
    B = actions.shape[0]
    if isinstance(space, spaces.Discrete):
        return torch.nn.functional.one_hot(actions.long().view(B), int(space.n)).float()
    if isinstance(space, spaces.MultiDiscrete):
        parts = actions.long().view(B, -1).unbind(1)
        nvec = space.nvec.reshape(-1)
        return torch.cat([torch.nn.functional.one_hot(p, int(n)) for p, n in zip(parts, nvec, strict=True)], 1).float()
    return actions.float().view(B, -1)


class AttentionActorCriticPolicy(ActorCriticPolicy):
    """SB3's actor-critic policy with an episodic transformer after the features extractor (any of SB3's).

    One memory serves the actor and the critic (``share_features_extractor`` must stay True). SB3's
    ``ortho_init`` re-initialises the features extractor, MLP and heads as usual; the memory keeps
    its own transformer init.

    :param memory: the window W: steps of the episode each step attends to, itself included.
    :param include_action: add the previous action (one-hot if discrete; zeros at an episode's first step).
    :param include_reward: add the previous reward (zero at an episode's first step).
    :param memory_kwargs: the transformer's ``features_dim``, ``embed_dim``, ``n_heads``, ``n_layers``, ``gate``,
        ``position``, ``length_scale``.
    :param kwargs: SB3's ``ActorCriticPolicy`` arguments (``net_arch``, ``features_extractor_class``, ...).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        memory: int = 64,
        include_action: bool = False,
        include_reward: bool = False,
        memory_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        unknown = set(memory_kwargs or {}) - set(MEMORY_KEYS)
        if unknown:
            raise ValueError(f"memory_kwargs keys {sorted(unknown)} are not supported: allowed are {MEMORY_KEYS}")
        if not kwargs.get("share_features_extractor", True):
            raise ValueError("share_features_extractor=False is not supported: the actor and critic share one memory")
        self.window = memory
        self.memory_kwargs = dict(memory_kwargs or {})
        self.include_action, self.include_reward = include_action, include_reward
        self.action_dim = action_size(action_space) if include_action else 0
        self.extras_dim = self.action_dim + int(include_reward)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _build(self, lr_schedule: Schedule) -> None:
        """The memory first: SB3's MLP then takes its output size, and its ortho_init does not reach it.

        A features extractor with a ``look(memory_dim)`` method (:class:`~rlattn.image_extractors.FramePatchExtractor`)
        also gets a readout after the memory, over the current frame's patches; a pointer look with one
        action per patch makes the first policy the look (:func:`~rlattn.patches.init_pointer_head`).
        """
        self.memory_net = EpisodicTransformer(self.features_dim + self.extras_dim, self.window, **self.memory_kwargs)
        self.features_dim = self.memory_net.features_dim
        look = getattr(self.features_extractor, "look", None)
        self.look_net: MemoryLook | None = look(self.features_dim) if callable(look) else None
        if self.look_net is not None:
            self.features_dim = self.look_net.features_dim
        super()._build(lr_schedule)
        init_pointer_head(self)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            memory=self.window,
            include_action=self.include_action,
            include_reward=self.include_reward,
            memory_kwargs=self.memory_kwargs,
        )
        return data

    def initial_memory(self, n_envs: int) -> EpisodicMemory:
        """A fresh memory for ``n_envs`` envs."""
        return self.memory_net.initial_memory(n_envs, self.extras_dim, self.device)

    def encode(self, obs: PyTorchObs) -> tuple[Tensor, Tensor | None]:
        """Observations (N, ...) through SB3's preprocessing and features extractor: -> the memory's
        inputs (N, D), and the patch tokens (N, P, D) the look reads after the memory (None without a look)."""
        x = preprocess_obs(obs, self.observation_space, self.normalize_images)
        if self.look_net is None:
            return self.features_extractor(x), None
        frames = self.features_extractor
        assert isinstance(frames, FramePatchExtractor) or callable(getattr(frames, "patches", None))
        patches = frames.patches(x)  # type: ignore[operator]
        return frames.frame(patches), patches  # type: ignore[operator]

    def read(self, features: Tensor, patches: Tensor | None) -> Tensor:
        """The memory's features (N, F) -> what SB3's MLP takes: the same, or the look's output on ``patches``."""
        return features if self.look_net is None else self.look_net(patches, features)[0]

    @torch.no_grad()
    def look_maps(self, memory: EpisodicMemory) -> Tensor | None:
        """After ``predict``: where the look after the memory went on each env's current frame,
        (B, H, rows, cols) with each head's weights summing to 1; None for a policy without a look."""
        if self.look_net is None or memory.frame is None:
            return None
        features, _ = self.memory_net.rerun(memory)
        _, weights = self.look_net(memory.frame, features, need_weights=True)
        assert weights is not None
        return weights.reshape(*weights.shape[:2], *self.features_extractor.grid)  # type: ignore[misc]

    def _step_features(self, obs: PyTorchObs, memory: EpisodicMemory) -> Tensor:
        """One step of B envs through the memory (remembered there): -> what SB3's MLP takes (B, F)."""
        x, patches = self.encode(obs)
        if self.extras_dim:
            x = torch.cat([x, memory.extras], dim=-1)
        memory.frame = patches
        return self.read(self.memory_net.step(x, memory), patches)

    def value(self, obs: PyTorchObs, memory: EpisodicMemory) -> Tensor:
        """One step of B envs, remembered in ``memory``: -> values (B, 1), as ``act`` gives them, with no
        action drawn (SB3's ``predict_values``: bootstrapping draws nothing from torch's random stream)."""
        return self.value_net(self.mlp_extractor.forward_critic(self._step_features(obs, memory)))

    def act(self, obs: PyTorchObs, memory: EpisodicMemory, deterministic: bool = False) -> tuple[Tensor, ...]:
        """One step of B envs, remembered in ``memory``: -> actions, values (B, 1), log-probs (B,)."""
        latent_pi, latent_vf = self.mlp_extractor(self._step_features(obs, memory))
        distribution = self._get_action_dist_from_latent(latent_pi)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        shape = self.action_space.shape or ()
        return actions.reshape((-1, *shape)), self.value_net(latent_vf), log_prob

    def _needs_memory(self, name: str) -> NoReturn:
        raise ValueError(
            f"{type(self).__name__}.{name} is invalid without the episode's memory: use model.predict(obs, state, "
            "episode_start), policy.act(obs, memory) or policy.value(obs, memory) (SB3's memoryless version would skip "
            "the memory)"
        )

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> NoReturn:
        self._needs_memory("forward")

    def predict_values(self, obs: PyTorchObs) -> NoReturn:
        self._needs_memory("predict_values")

    def get_distribution(self, obs: PyTorchObs) -> NoReturn:
        self._needs_memory("get_distribution")

    def evaluate_actions(self, obs: PyTorchObs, actions: Tensor) -> NoReturn:
        self._needs_memory("evaluate_actions")

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> NoReturn:
        self._needs_memory("_predict")

    def remember(self, memory: EpisodicMemory, actions: np.ndarray, rewards: np.ndarray | None) -> None:
        """Set the next step's extras from the actions the envs received and their rewards (None: zeros)."""
        if not self.extras_dim:
            return
        parts = []
        if self.include_action:
            parts.append(action_features(self.action_space, torch.as_tensor(actions, device=self.device)))
        if self.include_reward:
            reward = np.zeros(memory.n_envs, dtype=np.float32) if rewards is None else rewards
            parts.append(torch.as_tensor(reward, dtype=torch.float32, device=self.device).view(-1, 1))
        memory.extras = torch.cat(parts, dim=-1)

    def evaluate_sequences(
        self,
        obs: PyTorchObs,
        actions: Tensor,
        extras: Tensor,
        positions: Tensor,
        episode_starts: Tensor,
        carried: CarriedMemory,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Whole rollouts of B envs, T steps, flattened env-major (B * T, ...): -> values, log-probs, entropy.

        ``extras`` (B, T, X), ``positions`` (B, T), ``episode_starts`` (B, T) bool.
        """
        B, T = positions.shape
        x, patches = self.encode(obs)
        x = x.view(B, T, -1)
        if self.extras_dim:
            x = torch.cat([x, extras], dim=-1)
        latent = self.memory_net.sequence(x, positions, episode_starts, carried).reshape(B * T, -1)
        latent_pi, latent_vf = self.mlp_extractor(self.read(latent, patches))
        distribution = self._get_action_dist_from_latent(latent_pi)
        return self.value_net(latent_vf), distribution.log_prob(actions), distribution.entropy()

    def predict(  # type: ignore[override]
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: EpisodicMemory | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        reward: np.ndarray | None = None,
    ) -> tuple[np.ndarray, EpisodicMemory]:
        """Actions for a batch of envs (or one env), carrying the memory: -> actions, the memory.

        ``state`` None starts fresh episodes; otherwise it is updated in place and returned.
        ``episode_start`` (B,) marks envs whose observation begins an episode. With
        ``include_reward``, ``reward`` (B,) is what each env paid since the last call: the env's own
        rewards, as training reads them (under ``VecNormalize``, ``venv.get_original_reward()``).
        """
        if isinstance(observation, tuple) and len(observation) == 2 and isinstance(observation[1], dict):
            raise ValueError(
                "predict got a tuple (observation, info), as a gymnasium env's reset() returns: pass the "
                "observation alone (obs, info = env.reset(); model.predict(obs, ...)); a VecEnv's reset() returns it alone"
            )
        self.set_training_mode(False)
        obs, vectorized = self.obs_to_tensor(observation)
        n_envs = len(next(iter(obs.values())) if isinstance(obs, dict) else obs)
        memory = self.initial_memory(n_envs) if state is None else state
        if memory.n_envs != n_envs:
            raise ValueError(f"state holds {memory.n_envs} envs, the observation {n_envs}: they must match")
        if state is None:
            starts = np.ones(n_envs, dtype=bool)
        elif episode_start is None:
            starts = np.zeros(n_envs, dtype=bool)
        else:
            starts = np.asarray(episode_start, dtype=bool).reshape(n_envs)
        with torch.no_grad():
            memory.reset(torch.as_tensor(starts, device=self.device))
            if self.include_reward:
                self._receive(memory, reward, starts)
            actions, _, _ = self.act(obs, memory, deterministic)
        actions_np = self._to_env_actions(actions.cpu().numpy())
        self.remember(memory, actions_np, None)
        return (actions_np if vectorized else actions_np.squeeze(axis=0)), memory

    def _receive(self, memory: EpisodicMemory, reward: np.ndarray | None, starts: np.ndarray) -> None:
        """Put the rewards received since the last call into the next step's extras."""
        if reward is None:
            if starts.all():
                return
            raise ValueError("reward=None is invalid with include_reward=True: pass predict(..., reward=rewards)")
        rewards = torch.as_tensor(np.where(starts, 0.0, np.asarray(reward).reshape(-1)), dtype=torch.float32)
        memory.extras = torch.cat([memory.extras[:, :-1], rewards.to(self.device)[:, None]], dim=-1)

    def _to_env_actions(self, actions: np.ndarray) -> np.ndarray:
        """Clip (or unsquash) Box actions as SB3's ``predict`` does."""
        if isinstance(self.action_space, spaces.Box):
            if self.squash_output:
                return self.unscale_action(actions)
            return np.clip(actions, self.action_space.low, self.action_space.high)
        return actions


class AttentionCnnPolicy(AttentionActorCriticPolicy):
    """:class:`AttentionActorCriticPolicy` encoding images with SB3's ``NatureCNN`` by default."""

    def __init__(self, *args: Any, features_extractor_class: type = NatureCNN, **kwargs: Any):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


def patch_readout(observation_space: spaces.Space, action_space: spaces.Space, frame_kwargs: dict[str, Any]) -> str:
    """``"pointer"`` where each action can be one of the frame's patches (``Discrete(N)``, N patches), else ``"pool"``."""
    n_patches = FramePatchExtractor.count_patches(observation_space, frame_kwargs.get("patch_size", FRAME_PATCH_SIZE))
    return "pointer" if isinstance(action_space, spaces.Discrete) and int(action_space.n) == n_patches else "pool"


class AttentionPatchPolicy(AttentionActorCriticPolicy):
    """:class:`AttentionActorCriticPolicy` over image frames as patches
    (:class:`~rlattn.image_extractors.FramePatchExtractor`): each frame's token goes into the memory,
    then the memory steers a look over the current frame's patches.

    Where the action is one of the frame's patches (``Discrete(N)`` for N patches) the look is a
    pointer by default and the actor has no hidden layers (``net_arch=dict(pi=[], vf=[64])``), so the
    first policy is the look itself; otherwise the look pools and SB3's ``net_arch`` default applies.
    ``features_extractor_kwargs`` and ``net_arch`` override either.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        *args: Any,
        features_extractor_class: type = FramePatchExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        **kwargs: Any,
    ):
        frame_kwargs = dict(features_extractor_kwargs or {})
        self.readout_by_rule: str | None = None
        """the look's readout where this policy chose it by the action count (None: given, or not its extractor)"""
        if features_extractor_class is FramePatchExtractor and "readout" not in frame_kwargs:
            frame_kwargs["readout"] = self.readout_by_rule = patch_readout(
                observation_space, action_space, frame_kwargs
            )
        if net_arch is None and frame_kwargs.get("readout") == "pointer":
            net_arch = {"pi": [], "vf": [64]}
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            *args,
            features_extractor_class=features_extractor_class,
            features_extractor_kwargs=frame_kwargs,
            net_arch=net_arch,
            **kwargs,
        )


class AttentionMultiInputPolicy(AttentionActorCriticPolicy):
    """:class:`AttentionActorCriticPolicy` encoding Dict observations with SB3's ``CombinedExtractor`` by default."""

    def __init__(self, *args: Any, features_extractor_class: type = CombinedExtractor, **kwargs: Any):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)
