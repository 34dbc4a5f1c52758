"""TensorBoard view of what an attention extractor attends to, through SB3's logger (``attention/``)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Image
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from rlattn.extractors import HistoryAttentionExtractor
from rlattn.image_extractors import PatchAttentionExtractor, SpatioTemporalAttentionExtractor
from rlattn.overlay import box_mass, colorize, overlay

AttentionExtractor = HistoryAttentionExtractor | PatchAttentionExtractor | SpatioTemporalAttentionExtractor
_NOT_IMAGE = ("stdout", "log", "json", "csv")


def heatmap_image(weights: np.ndarray, target_counts: np.ndarray, cell: int = 12, min_width: int = 384) -> np.ndarray:
    """(rows, K) attention (one row per layer and head, each scaled by its max) -> HWC uint8 image.

    Time runs left (oldest slot) to right (newest). A white strip underneath marks the slots of the
    ground-truth step, brighter where more episodes had it there.
    """
    rows = weights / np.maximum(weights.max(axis=1, keepdims=True), 1e-12)
    marker = target_counts[None, :] / max(target_counts.max(), 1)
    width = max(1, -(-min_width // weights.shape[1]))
    body = np.repeat(np.repeat(colorize(rows), cell, axis=0), width, axis=1)
    strip = np.repeat(np.repeat((marker * 255).astype(np.uint8)[..., None].repeat(3, -1), cell // 2, 0), width, 1)
    gap = np.zeros((2, body.shape[1], 3), dtype=np.uint8)
    return np.concatenate([body, gap, strip], axis=0)


def find_attention_extractor(policy: BasePolicy) -> AttentionExtractor | None:
    """The policy's (first) attention extractor: the actor's for PPO/A2C, the online Q-net's for DQN."""
    kinds = (HistoryAttentionExtractor, PatchAttentionExtractor, SpatioTemporalAttentionExtractor)
    return next((m for m in policy.modules() if isinstance(m, kinds)), None)


def policy_input(policy: BasePolicy, obs: np.ndarray | dict) -> torch.Tensor | dict[str, torch.Tensor]:
    """An observation (one env's, or a VecEnv's) as the policy hands it to its extractor: a batch, scaled."""
    return preprocess_obs(policy.obs_to_tensor(obs)[0], policy.observation_space, policy.normalize_images)


def newest_frame(obs: np.ndarray | dict) -> np.ndarray:
    """The (C, H, W) frame the agent acts on, from an image or a ``HistoryObservation`` of images."""
    return np.asarray(obs["obs"][-1] if isinstance(obs, dict) else obs)


def patch_weights(extractor: PatchAttentionExtractor | SpatioTemporalAttentionExtractor, tensor) -> np.ndarray:
    """The readout's attention over the newest frame's patches, mean over its heads: (rows, cols)."""
    return extractor.attention_maps(tensor)[0].mean(0).cpu().numpy()


class AttentionLoggingCallback(BaseCallback):
    """Play a few episodes and log where the readout looked at each episode's last decision.

    Over histories of vectors (:class:`HistoryAttentionExtractor`): ``attention/entropy`` (nats, last
    block, mean over heads), ``attention/target_mass`` (the weight on the ground-truth step, last
    block, mean over heads; only when ``target_key`` is given and the step is inside the history) and
    ``attention/heatmap`` (layer x head rows, history slots as columns, averaged over episodes).

    Over images (:class:`PatchAttentionExtractor`, :class:`SpatioTemporalAttentionExtractor`):
    ``attention/entropy`` and ``attention/target_mass`` of the readout's weights over the patches of
    the frame acted on (the mass on patches whose centre is inside the target's box), and
    ``attention/overlay``: for the first few episodes, the frame beside the same frame under its
    heatmap, the target outlined.

    Use it as ``EvalCallback(callback_after_eval=...)`` so it runs at each evaluation, or in a
    callback list to run on every step.

    :param env: an env wrapped like the training envs (e.g. ``HistoryObservation``), or a VecEnv of
        them: its envs play their episodes side by side, the policy acting on all of them in one batch
        (a round of long episodes then costs one episode's worth of policy calls, not ``n_episodes``).
    :param n_episodes: episodes per logging round.
    :param target_key: ``info`` key of the ground truth: for histories, the episode step the agent
        should attend to (e.g. ``"cue_step"``; negative means not seen yet); for images, the target's
        pixel box ``(top, left, bottom, right)`` (e.g. ``"target_box"``). None: no target mass.
    :param seed: episodes use seeds ``seed .. seed + n_episodes - 1``, the same at every round.
    """

    def __init__(
        self, env: gym.Env | VecEnv, n_episodes: int = 8, target_key: str | None = None, seed: int = 0, verbose: int = 0
    ):
        super().__init__(verbose)
        self.env: VecEnv = env if isinstance(env, VecEnv) else DummyVecEnv([lambda: env])
        self.n_episodes = n_episodes
        self.target_key = target_key
        self.seed = seed

    def _on_step(self) -> bool:
        if callable(getattr(self.model, "attention_maps", None)):  # an episodic memory (AttentionPPO)
            self.log_memory_attention()
            return True
        extractor = find_attention_extractor(self.model.policy)
        if isinstance(extractor, HistoryAttentionExtractor):
            self.log_attention(extractor)
        elif extractor is not None:
            self.log_patch_attention(extractor)
        return True

    def _decisions(self) -> list[tuple[np.ndarray | dict, int, dict]]:
        """Play the round's episodes; for each, the last observation acted on, its episode step and its info."""
        return self._play()[0]

    def _play(self) -> tuple[list[tuple[np.ndarray | dict, int, dict]], list[Any]]:
        """The round's decisions (see :meth:`_decisions`) and, for an episodic model, its memory at each.

        Episode ``i`` has seed ``seed + i``: the VecEnv's envs play them ``num_envs`` at a time.
        """
        found: list[tuple[np.ndarray | dict, int, dict]] = []
        found_memories: list[Any] = []
        m = self.env.num_envs
        for first in range(0, self.n_episodes, m):
            self.env.seed(self.seed + first)
            obs: Any = self.env.reset()  # an array or a dict of arrays: SB3's VecEnvObs, never a tuple here
            infos = list(self.env.reset_infos)
            decisions: list = [None] * min(m, self.n_episodes - first)
            memories: list = [None] * len(decisions)
            state, starts, t = None, np.ones(m, dtype=bool), 0
            while any(d is None for d in decisions):
                action, state = self.model.predict(obs, state=state, episode_start=starts, deterministic=True)
                next_obs, _, dones, next_infos = self.env.step(action)
                for j, decision in enumerate(decisions):
                    if dones[j] and decision is None:
                        decisions[j] = (_one_env(obs, j), t, infos[j])
                        memories[j] = state.select([j]) if hasattr(state, "select") else None  # type: ignore[union-attr]
                obs, infos, starts, t = next_obs, next_infos, dones, t + 1
            found.extend(decisions)
            found_memories.extend(memories)
        return found, found_memories

    def log_memory_attention(self) -> None:
        """The views of :meth:`log_attention` for a model whose memory holds the episode (``attention_maps``).

        Columns are ages (the oldest step any decision could see on the left, the decision's own step
        on the right); the target mass is the last layer's weight on the slots holding the target step.
        """
        decisions, memories = self._play()
        span = max(t for _, t, _ in decisions) + 1
        maps, counts, masses, entropies = [], np.zeros(span), [], []
        for (_, t, info), memory in zip(decisions, memories, strict=True):
            weights, positions = self.model.attention_maps(memory)  # type: ignore[attr-defined]  # (1, L, H, W), (1, W)
            w, position = weights[0].cpu().numpy(), positions[0].cpu().numpy()
            seen = position >= 0
            by_age = np.zeros((*w.shape[:2], span))
            by_age[..., span - 1 - (t - position[seen])] = w[..., seen]
            maps.append(by_age)
            last = np.clip(w[-1][:, seen], 1e-12, 1.0)
            entropies.append(float(-(last * np.log(last)).sum(-1).mean()))
            step = info.get(self.target_key, -1) if self.target_key else -1
            if step >= 0 and bool((position == step).any()):
                counts[span - 1 - (t - step)] += 1
                masses.append(float(w[-1][:, position == step].sum(-1).mean()))
        self._record(np.mean(maps, axis=0), counts, masses, float(np.mean(entropies)))

    def _record(self, mean: np.ndarray, counts: np.ndarray, masses: list[float], entropy: float) -> None:
        """Log entropy, target mass and the heatmap of (layers, H, slots) mean weights."""
        self.logger.record("attention/entropy", entropy)
        if masses:
            self.logger.record("attention/target_mass", float(np.mean(masses)))
        image = heatmap_image(mean.reshape(-1, mean.shape[-1]), counts)
        self.logger.record("attention/heatmap", Image(image, "HWC"), exclude=_NOT_IMAGE)
        self.logger.dump(self.num_timesteps)

    def log_patch_attention(
        self, extractor: PatchAttentionExtractor | SpatioTemporalAttentionExtractor, shown: int = 4
    ) -> None:
        images, masses, entropies = [], [], []
        for i, (obs, _, info) in enumerate(self._decisions()):
            weights = patch_weights(extractor, policy_input(self.model.policy, obs))
            frame = newest_frame(obs)
            box = info.get(self.target_key) if self.target_key else None
            if box is not None:
                masses.append(box_mass(weights, frame.shape[-2:], box))
            clipped = np.clip(weights, 1e-12, 1.0)
            entropies.append(float(-(clipped * np.log(clipped)).sum()))
            if i < shown:
                images.append(overlay(frame, weights, box))
        self.logger.record("attention/entropy", float(np.mean(entropies)))
        if masses:
            self.logger.record("attention/target_mass", float(np.mean(masses)))
        gap = np.full((4, images[0].shape[1], 3), 255, dtype=np.uint8)
        stacked = np.concatenate([part for image in images for part in (image, gap)][:-1], axis=0)
        self.logger.record("attention/overlay", Image(stacked, "HWC"), exclude=_NOT_IMAGE)
        self.logger.dump(self.num_timesteps)

    def log_attention(self, extractor: HistoryAttentionExtractor) -> None:
        K = extractor.history_length
        maps, counts, masses = [], np.zeros(K), []
        for obs, t, info in self._decisions():
            tensor = policy_input(self.model.policy, obs)
            assert isinstance(tensor, dict)
            weights = extractor.attention_maps(tensor)[0].cpu().numpy()  # (layers, H, K')
            maps.append(weights)
            step = info.get(self.target_key, -1) if self.target_key else -1
            if step >= 0 and t - step < K:
                slot = K - 1 - (t - step)
                counts[slot] += 1
                masses.append(float(weights[-1, :, slot].mean()))
        last = np.clip(np.stack(maps)[:, -1], 1e-12, 1.0)
        self._record(np.mean(maps, axis=0), counts, masses, float(-(last * np.log(last)).sum(-1).mean()))


def _one_env(obs: np.ndarray | dict, j: int) -> np.ndarray | dict:
    """Env ``j``'s observation out of a VecEnv's batch (a copy: the VecEnv reuses its buffers)."""
    return {key: value[j].copy() for key, value in obs.items()} if isinstance(obs, dict) else obs[j].copy()


__all__ = [
    "AttentionLoggingCallback",
    "colorize",
    "find_attention_extractor",
    "heatmap_image",
    "newest_frame",
    "patch_weights",
    "policy_input",
]
