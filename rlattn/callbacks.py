"""TensorBoard view of what an attention extractor attends to, through SB3's logger (``attention/``)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Image
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.preprocessing import preprocess_obs

from rlattn.extractors import HistoryAttentionExtractor

# Viridis anchors, dark (no attention) to yellow (all of it).
_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)
_NOT_IMAGE = ("stdout", "log", "json", "csv")


def colorize(values: np.ndarray) -> np.ndarray:
    """(rows, cols) in [0, 1] -> (rows, cols, 3) uint8 colours."""
    scaled = np.clip(values, 0.0, 1.0) * (len(_ANCHORS) - 1)
    low = np.floor(scaled).astype(int).clip(0, len(_ANCHORS) - 2)
    frac = (scaled - low)[..., None]
    return ((1 - frac) * _ANCHORS[low] + frac * _ANCHORS[low + 1]).astype(np.uint8)


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


def find_attention_extractor(policy: BasePolicy) -> HistoryAttentionExtractor | None:
    """The policy's (first) attention extractor: the actor's for PPO/A2C, the online Q-net's for DQN."""
    return next((m for m in policy.modules() if isinstance(m, HistoryAttentionExtractor)), None)


class AttentionLoggingCallback(BaseCallback):
    """Play a few episodes and log where the readout looked at each episode's last decision.

    Logs ``attention/entropy`` (nats, last block, mean over heads), ``attention/target_mass`` (the
    weight on the ground-truth step, last block, mean over heads; only when ``target_key`` is given and
    the step is inside the history) and ``attention/heatmap`` (layer x head rows, history slots as
    columns, averaged over episodes). Use it as ``EvalCallback(callback_after_eval=...)`` so it runs
    at each evaluation, or in a callback list to run on every step.

    :param env: one (not vectorised) env, wrapped in ``HistoryObservation`` like the training envs.
    :param n_episodes: episodes per logging round.
    :param target_key: ``info`` key holding the episode step the agent should attend to (e.g.
        ``"cue_step"``; negative means not seen yet), or None.
    :param seed: episodes use seeds ``seed .. seed + n_episodes - 1``, the same at every round.
    """

    def __init__(
        self, env: gym.Env, n_episodes: int = 8, target_key: str | None = None, seed: int = 0, verbose: int = 0
    ):
        super().__init__(verbose)
        self.env = env
        self.n_episodes = n_episodes
        self.target_key = target_key
        self.seed = seed

    def _on_step(self) -> bool:
        extractor = find_attention_extractor(self.model.policy)
        if extractor is not None:
            self.log_attention(extractor)
        return True

    def _decision(self, seed: int) -> tuple[dict, int, dict]:
        """Play one episode; return the last observation acted on, its episode step and its info."""
        obs, info = self.env.reset(seed=seed)
        state, start, t = None, np.ones(1, dtype=bool), 0
        while True:
            action, state = self.model.predict(obs, state=state, episode_start=start, deterministic=True)
            next_obs, _, terminated, truncated, next_info = self.env.step(action)
            if terminated or truncated:
                return obs, t, info
            obs, info, start, t = next_obs, next_info, np.zeros(1, dtype=bool), t + 1

    def log_attention(self, extractor: HistoryAttentionExtractor) -> None:
        policy = self.model.policy
        K = extractor.history_length
        maps, counts, masses = [], np.zeros(K + (extractor.readout == "summary")), []
        for i in range(self.n_episodes):
            obs, t, info = self._decision(self.seed + i)
            tensor = preprocess_obs(policy.obs_to_tensor(obs)[0], policy.observation_space, policy.normalize_images)
            assert isinstance(tensor, dict)
            weights = extractor.attention_maps(tensor)[0].cpu().numpy()  # (layers, H, K')
            maps.append(weights)
            step = info.get(self.target_key, -1) if self.target_key else -1
            if step >= 0 and t - step < K:
                slot = K - 1 - (t - step)
                counts[slot] += 1
                masses.append(float(weights[-1, :, slot].mean()))
        mean = np.mean(maps, axis=0)  # (layers, H, K')
        last = np.clip(np.stack(maps)[:, -1], 1e-12, 1.0)
        self.logger.record("attention/entropy", float(-(last * np.log(last)).sum(-1).mean()))
        if masses:
            self.logger.record("attention/target_mass", float(np.mean(masses)))
        image = heatmap_image(mean.reshape(-1, mean.shape[-1]), counts)
        self.logger.record("attention/heatmap", Image(image, "HWC"), exclude=_NOT_IMAGE)
        self.logger.dump(self.num_timesteps)


__all__ = ["AttentionLoggingCallback", "colorize", "find_attention_extractor", "heatmap_image"]
