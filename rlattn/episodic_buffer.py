"""Rollout buffers for the episodic memory: one observation per step, and the memory carried into the rollout.

Shape letters: T steps per env (``n_steps``), B envs, b envs in a minibatch, X extra inputs per step.
Besides SB3's arrays, each step stores its episode position and extra inputs (previous action and
reward); each rollout stores the memory's layer inputs from before it (:class:`CarriedMemory`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import Tensor

from rlattn.episodic import CarriedMemory, EpisodicMemory


@dataclass
class EpisodicBatch:
    """Whole rollouts of b envs: per-step fields flattened env-major (b * T, ...), sequence fields (b, T, ...)."""

    observations: PyTorchObs
    actions: Tensor
    old_values: Tensor
    old_log_prob: Tensor
    advantages: Tensor
    returns: Tensor
    extras: Tensor
    """(b, T, X)"""
    positions: Tensor
    """(b, T) int64"""
    episode_starts: Tensor
    """(b, T) bool"""
    carried: CarriedMemory


def env_major(array: np.ndarray, envs: np.ndarray) -> np.ndarray:
    """(T, B, ...) -> (b * T, ...): the given envs' rollouts one after another."""
    return np.swapaxes(array[:, envs], 0, 1).reshape(len(envs) * array.shape[0], *array.shape[2:])


class _EpisodicParts(ABC):
    """What both buffers add to SB3's: positions, extras, the carried memory, and whole-env minibatches."""

    buffer_size: int
    n_envs: int
    pos: int
    device: torch.device
    extras_dim: int
    actions: np.ndarray
    values: np.ndarray
    log_probs: np.ndarray
    advantages: np.ndarray
    returns: np.ndarray
    episode_starts: np.ndarray

    def __init__(self, *args: Any, extras_dim: int = 0, **kwargs: Any):
        self.extras_dim = extras_dim
        super().__init__(*args, **kwargs)  # SB3's buffer, which calls reset()

    def reset(self) -> None:
        super().reset()  # type: ignore[misc]
        self._reset_episodic()

    def _reset_episodic(self) -> None:
        self.positions = np.zeros((self.buffer_size, self.n_envs), dtype=np.int64)
        self.extras = np.zeros((self.buffer_size, self.n_envs, self.extras_dim), dtype=np.float32)
        self.carried: CarriedMemory | None = None

    def carry_in(self, memory: EpisodicMemory) -> None:
        """Keep the memory as it is before the rollout's first step."""
        self.carried = memory.carried()

    def add_memory_inputs(self, memory: EpisodicMemory) -> None:
        """The next step's episode positions and extras (call before ``add``)."""
        self.positions[self.pos] = memory.t.cpu().numpy()
        self.extras[self.pos] = memory.extras.cpu().numpy()

    @abstractmethod
    def _observations(self, envs: np.ndarray) -> PyTorchObs:
        """The envs' observations, env-major (b * T, ...)."""

    def sequences(self, envs: np.ndarray) -> EpisodicBatch:
        """The rollouts of envs (b,) as one minibatch."""
        assert self.carried is not None, "carry_in was not called for this rollout"
        b, T = len(envs), self.buffer_size
        tensor = lambda a: torch.as_tensor(env_major(a, envs), device=self.device)  # noqa: E731
        return EpisodicBatch(
            observations=self._observations(envs),
            actions=tensor(self.actions).float(),  # as SB3's buffers hand them over (MultiBinary's int8 too)
            old_values=tensor(self.values).flatten(),
            old_log_prob=tensor(self.log_probs).flatten(),
            advantages=tensor(self.advantages).flatten(),
            returns=tensor(self.returns).flatten(),
            extras=tensor(self.extras).view(b, T, -1),
            positions=tensor(self.positions).view(b, T),
            episode_starts=tensor(self.episode_starts).view(b, T) > 0.5,
            carried=self.carried.select(torch.as_tensor(envs, device=self.device)),
        )

    def bytes_per_step(self, arrays: list[np.ndarray]) -> float:
        """Storage per stored env step, the carried memory included."""
        carried = 0 if self.carried is None else sum(t.nbytes for t in vars(self.carried).values())
        total = sum(a.nbytes for a in arrays) + self.positions.nbytes + self.extras.nbytes + carried
        return total / (self.buffer_size * self.n_envs)

    def _sgd_arrays(self) -> list[np.ndarray]:
        return [self.actions, self.values, self.log_probs, self.advantages, self.returns, self.episode_starts]


class EpisodicRolloutBuffer(_EpisodicParts, RolloutBuffer):
    """SB3's ``RolloutBuffer`` with the episodic memory's parts. ``extras_dim``: X."""

    observations: np.ndarray

    def _observations(self, envs: np.ndarray) -> PyTorchObs:
        return torch.as_tensor(env_major(self.observations, envs), device=self.device)

    def nbytes_per_step(self) -> float:
        """Bytes per stored env step: one observation, SB3's per-step arrays, position, extras, carried memory."""
        return self.bytes_per_step([self.observations, self.rewards, *self._sgd_arrays()])


class EpisodicDictRolloutBuffer(_EpisodicParts, DictRolloutBuffer):
    """SB3's ``DictRolloutBuffer`` with the episodic memory's parts. ``extras_dim``: X."""

    observation_space: spaces.Dict
    observations: dict[str, np.ndarray]  # type: ignore[assignment]

    def _observations(self, envs: np.ndarray) -> PyTorchObs:
        return {
            key: torch.as_tensor(env_major(obs, envs), device=self.device) for key, obs in self.observations.items()
        }

    def nbytes_per_step(self) -> float:
        """Bytes per stored env step: one observation, SB3's per-step arrays, position, extras, carried memory."""
        return self.bytes_per_step([*self.observations.values(), self.rewards, *self._sgd_arrays()])
