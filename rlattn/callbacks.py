"""TensorBoard view of what an attention extractor attends to, through SB3's logger (``attention/``)."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Image
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first, preprocess_obs
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    VecEnv,
    VecEnvWrapper,
    VecFrameStack,
    VecTransposeImage,
    is_vecenv_wrapped,
    unwrap_vec_normalize,
)

from rlattn.extractors import HistoryAttentionExtractor
from rlattn.faithfulness import (
    Faithfulness,
    history_decision,
    look_decision,
    memory_decision,
    newest_frame,
    patch_decision,
)
from rlattn.image_extractors import PatchAttentionExtractor, SpatioTemporalAttentionExtractor
from rlattn.normalize import HistoryNormalize
from rlattn.overlay import colorize, overlay
from rlattn.validation import check_int

AttentionExtractor = HistoryAttentionExtractor | PatchAttentionExtractor | SpatioTemporalAttentionExtractor
_NOT_IMAGE = ("stdout", "log", "json", "csv")
SHOWN = 4
"""episodes whose frames make up ``attention/overlay``"""


def like_training(env: VecEnv, space: gym.Space) -> VecEnv:
    """``env`` as SB3 wraps a training env for a policy of observation ``space``: channel-last images
    moved to channels first (``VecTransposeImage``) where that is the policy's space (an image env
    given to ``CnnPolicy`` unwrapped). The masks and overlays then read frames as the policy does."""
    if env.observation_space == space or is_vecenv_wrapped(env, VecTransposeImage):
        return env
    observed = env.observation_space
    leaves = observed.spaces.values() if isinstance(observed, gym.spaces.Dict) else (observed,)
    with warnings.catch_warnings():  # SB3 warns where a shape is ambiguous, and takes channels last then too
        warnings.simplefilter("ignore")
        if not any(is_image_space(leaf) and not is_image_space_channels_first(leaf) for leaf in leaves):  # type: ignore[arg-type]
            return env
    transposed = VecTransposeImage(env)
    return transposed if transposed.observation_space == space else env


@dataclass(frozen=True)
class Round:
    """One logging round: the scored decisions, the readout's mean entropy (nats) and the picture to log."""

    faithfulness: Faithfulness
    entropy: float
    image_key: str
    """``attention/heatmap`` (histories, memories) or ``attention/overlay`` (frames)"""
    image: np.ndarray
    """HWC uint8"""
    extra_images: tuple[tuple[str, np.ndarray], ...] = ()
    """more pictures to log, by key (an episodic memory's look over the frame: ``attention/overlay``)"""


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

    Episodic memories (``AttentionPPO``): ``attention/heatmap`` of the memory (columns by age) and
    its target mass on the ground-truth step; with a look after the memory over the frame's patches
    (``"PatchPolicy"``), also ``attention/overlay`` of that look and, for a target box, its mass on it.

    All of them: ``attention/flip_rate_top`` and
    ``attention/flip_rate_random``, how often the deterministic action changed when the most-attended
    step (patch), or a random other one, was masked (see :mod:`rlattn.faithfulness`). :meth:`measure`
    gives the same numbers without logging (``benchmarks/faithfulness.py``).

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
    :param max_steps: an episode not ended after this many steps is scored at its last observation
        (with a warning): a round never waits for an episode that does not end.

    The env must be its own, not one of the training envs (playing it would move training's episodes);
    where the model trains on ``VecNormalize`` observations, it must be wrapped in a ``VecNormalize``
    too, whose statistics are set from training's at each round (as SB3's ``EvalCallback`` does).
    """

    def __init__(
        self,
        env: gym.Env | VecEnv,
        n_episodes: int = 8,
        target_key: str | None = None,
        seed: int = 0,
        verbose: int = 0,
        max_steps: int = 10_000,
    ):
        super().__init__(verbose)
        self.env: VecEnv = env if isinstance(env, VecEnv) else DummyVecEnv([lambda: env])
        self.n_episodes = n_episodes
        self.target_key = target_key
        self.seed = seed
        self.max_steps = check_int("max_steps", max_steps)

    def _init_callback(self) -> None:
        self.env = like_training(self.env, self.model.observation_space)
        training = self.model.get_env()
        if training is not None and _parts(training) & _parts(self.env):
            raise ValueError(
                "AttentionLoggingCallback's env is one of the training envs: give it an env of its own "
                "(made the same way), as for SB3's EvalCallback"
            )
        normaliser = self.model.get_vec_normalize_env()
        own = unwrap_vec_normalize(self.env)
        if normaliser is not None and normaliser.norm_obs and (own is None or not own.norm_obs):
            raise ValueError(
                f"AttentionLoggingCallback's env is not wrapped in VecNormalize, but the model trains on "
                f"{type(normaliser).__name__} observations: wrap it as {type(normaliser).__name__}(env, training=False, "
                "norm_reward=False)"
            )
        if normaliser is not None and normaliser.norm_obs and own is not None and own is not normaliser:
            ours, theirs = type(own).__name__, type(normaliser).__name__
            keys, train_keys = getattr(own, "norm_obs_keys", None), getattr(normaliser, "norm_obs_keys", None)
            step_statistics = isinstance(own, HistoryNormalize), isinstance(normaliser, HistoryNormalize)
            if step_statistics[0] != step_statistics[1] or (
                keys is not None and train_keys is not None and sorted(keys) != sorted(train_keys)
            ):
                raise ValueError(
                    f"AttentionLoggingCallback's env is wrapped in {ours} normalising keys {keys}, but the model "
                    f"trains on {theirs} normalising keys {train_keys}: wrap it the same way, as "
                    f"{theirs}(env, training=False, norm_reward=False)"
                    + (
                        ""
                        if theirs == "HistoryNormalize" or train_keys is None
                        else f" with norm_obs_keys={train_keys}"
                    )
                )

    def _drawn(self, frame: np.ndarray) -> np.ndarray:
        """The frame an overlay draws: under ``VecFrameStack`` the newest frame's channels (the last of the
        channel axis, whichever order the stack was made in once channels come first), not the oldest."""
        venv: VecEnv = self.env
        while isinstance(venv, VecEnvWrapper):
            if isinstance(venv, VecFrameStack) and not isinstance(venv.observation_space, gym.spaces.Dict):
                return frame[-(frame.shape[0] // venv.stacked_obs.n_stack) :]
            venv = venv.venv
        return frame

    def _sync_normalization(self) -> None:
        """Training's observation statistics into the round's VecNormalize, which does not update them."""
        normaliser, own = self.model.get_vec_normalize_env(), unwrap_vec_normalize(self.env)
        # statistics only where training normalises observations (train.py's reward normalisation does not)
        if normaliser is not None and normaliser.norm_obs and own is not None and own is not normaliser:
            own.obs_rms = copy.deepcopy(normaliser.obs_rms)
            own.training = False

    def _on_step(self) -> bool:
        scored = self.measure()
        if scored is not None:
            self._record(scored)
        return True

    def measure(self) -> Round | None:
        """Play the round's episodes and score each decision, logging nothing; None without attention."""
        rng = np.random.default_rng(self.seed)  # the same random masks at every round
        self._sync_normalization()
        if callable(getattr(self.model, "attention_maps", None)):  # an episodic memory (AttentionPPO)
            return self._memory_round(rng)
        extractor = find_attention_extractor(self.model.policy)
        if isinstance(extractor, HistoryAttentionExtractor):
            return self._history_round(extractor, rng)
        if extractor is not None:
            return self._patch_round(extractor, rng)
        return None

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
        reads_reward = getattr(self.model.policy, "include_reward", False)
        normaliser = unwrap_vec_normalize(self.env)  # the memory reads the rewards the env paid, as in training
        for first in range(0, self.n_episodes, m):
            self.env.seed(self.seed + first)
            obs: Any = self.env.reset()  # an array or a dict of arrays: SB3's VecEnvObs, never a tuple here
            infos = list(self.env.reset_infos)
            decisions: list = [None] * min(m, self.n_episodes - first)
            memories: list = [None] * len(decisions)
            state, starts, t, rewards = None, np.ones(m, dtype=bool), 0, np.zeros(m, dtype=np.float32)
            while any(d is None for d in decisions):
                # a memory that reads rewards gets them as in training (SB3's own predict takes none)
                paid = {"reward": rewards} if reads_reward else {}
                action, state = self.model.predict(obs, state=state, episode_start=starts, deterministic=True, **paid)
                next_obs, rewards, dones, next_infos = self.env.step(action)
                rewards = rewards if normaliser is None else normaliser.get_original_reward()
                capped = t + 1 >= self.max_steps  # episodes that do not end are scored where they are
                if capped and not all(dones[j] or d is not None for j, d in enumerate(decisions)):
                    warnings.warn(
                        f"AttentionLoggingCallback: an episode did not end within max_steps={self.max_steps} steps: "
                        "its last observation is scored",
                        UserWarning,
                        stacklevel=2,
                    )
                for j, decision in enumerate(decisions):
                    if (dones[j] or capped) and decision is None:
                        decisions[j] = (_one_env(obs, j), t, infos[j])
                        memories[j] = state.select([j]) if hasattr(state, "select") else None  # type: ignore[union-attr]
                obs, infos, starts, t = next_obs, next_infos, dones, t + 1
            found.extend(decisions)
            found_memories.extend(memories)
        return found, found_memories

    def _memory_round(self, rng: np.random.Generator) -> Round:
        """The views of :meth:`_history_round` for a model whose memory holds the episode (``attention_maps``).

        Columns are ages (the oldest step any decision could see on the left, the decision's own step
        on the right); the target mass is the last layer's weight on the slots holding the target step.
        """
        decisions, memories = self._play()
        # ages the memory can hold: no wider than its window, however long the episodes
        window = getattr(self.model, "memory", None)
        span = max(t for _, t, _ in decisions) + 1
        span = min(span, window) if isinstance(window, int) else span
        maps, counts, entropies, scored = [], np.zeros(span), [], []
        overlays: list[np.ndarray] = []
        for (obs, t, info), memory in zip(decisions, memories, strict=True):
            weights, positions = self.model.attention_maps(memory)  # type: ignore[attr-defined]  # (1, L, H, W), (1, W)
            w, position = weights[0].cpu().numpy(), positions[0].cpu().numpy()
            seen = position >= 0
            by_age = np.zeros((*w.shape[:2], span))
            by_age[..., span - 1 - (t - position[seen])] = w[..., seen]
            maps.append(by_age)
            last = np.clip(w[-1][:, seen], 1e-12, 1.0)
            step = _step_of(info.get(self.target_key) if self.target_key else None)  # a box in a frame is no step
            if step >= 0 and bool((position == step).any()):
                counts[span - 1 - (t - step)] += 1
            look_maps = getattr(self.model.policy, "look_maps", None)
            looked = look_maps(memory) if callable(look_maps) else None
            if looked is None:
                decision = memory_decision(self.model.policy, memory, w[-1], position, step, rng)
                entropies.append(float(-(last * np.log(last)).sum(-1).mean()))
            else:
                # a look after the memory reads the frame acted on: its entropy, target mass, flips and
                # overlay are the look's (the attention on the frame, as the README's image views are)
                frame, weights = self._drawn(newest_frame(obs)), looked[0].mean(0).cpu().numpy()
                box = info.get(self.target_key) if self.target_key else None
                box = tuple(int(v) for v in box) if isinstance(box, (tuple, list, np.ndarray)) else None
                decision = look_decision(self.model.policy, memory, obs, weights, box, rng)
                mean = np.clip(weights, 1e-12, 1.0)  # the heads' mean, as for the image extractors
                entropies.append(float(-(mean * np.log(mean)).sum()))
                if len(overlays) < SHOWN:
                    overlays.append(overlay(frame, weights, box))
            scored.append(decision)
        extra = (("attention/overlay", _stack(overlays)),) if overlays else ()
        if span == 1 and extra:  # one-step episodes (a search with a look): no ages to draw, the look's overlay
            return Round(Faithfulness(tuple(scored)), float(np.mean(entropies)), *extra[0])
        image = heatmap_image(np.mean(maps, axis=0).reshape(-1, span), counts)
        return Round(Faithfulness(tuple(scored)), float(np.mean(entropies)), "attention/heatmap", image, extra)

    def _record(self, scored: Round) -> None:
        """Log entropy, target mass, flip rates and the round's picture."""
        self.logger.record("attention/entropy", scored.entropy)
        faithfulness = scored.faithfulness
        for key, value in (
            ("attention/target_mass", faithfulness.target_mass),
            ("attention/flip_rate_top", faithfulness.flip_rate("top")),
            ("attention/flip_rate_random", faithfulness.flip_rate("random")),
        ):
            if value is not None:
                self.logger.record(key, value)
        for key, image in ((scored.image_key, scored.image), *scored.extra_images):
            self.logger.record(key, Image(image, "HWC"), exclude=_NOT_IMAGE)
        # progress.csv's row for these says its step (TensorBoard has it from the dump)
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.logger.dump(self.num_timesteps)

    def _patch_round(
        self, extractor: PatchAttentionExtractor | SpatioTemporalAttentionExtractor, rng: np.random.Generator
    ) -> Round:
        images, entropies, scored = [], [], []
        for i, (obs, _, info) in enumerate(self._decisions()):
            weights = patch_weights(extractor, policy_input(self.model.policy, obs))
            box = info.get(self.target_key) if self.target_key else None
            patch_size = extractor.encoder.patch_size
            scored.append(patch_decision(self.model.policy, obs, weights, patch_size, box, rng))
            clipped = np.clip(weights, 1e-12, 1.0)
            entropies.append(float(-(clipped * np.log(clipped)).sum()))
            if i < SHOWN:
                images.append(overlay(self._drawn(newest_frame(obs)), weights, box))
        return Round(Faithfulness(tuple(scored)), float(np.mean(entropies)), "attention/overlay", _stack(images))

    def _history_round(self, extractor: HistoryAttentionExtractor, rng: np.random.Generator) -> Round:
        K = extractor.history_length
        maps, counts, scored = [], np.zeros(K), []
        for obs, t, info in self._decisions():
            tensor = policy_input(self.model.policy, obs)
            assert isinstance(tensor, dict) and isinstance(obs, dict)
            weights = extractor.attention_maps(tensor)[0].cpu().numpy()  # (layers, H, K')
            maps.append(weights)
            step = _step_of(info.get(self.target_key) if self.target_key else None)
            slot = K - 1 - (t - step) if step >= 0 and 0 <= t - step < K else None
            if slot is not None:
                counts[slot] += 1
            scored.append(history_decision(self.model.policy, obs, weights[-1], slot, rng))
        last = np.clip(np.stack(maps)[:, -1], 1e-12, 1.0)
        mean = np.mean(maps, axis=0)
        image = heatmap_image(mean.reshape(-1, mean.shape[-1]), counts)
        entropy = float(-(last * np.log(last)).sum(-1).mean())
        return Round(Faithfulness(tuple(scored)), entropy, "attention/heatmap", image)


def _step_of(value: Any) -> int:
    """An ``info`` target as an episode step: an integer (or an integral float), else -1 (not a step)."""
    if isinstance(value, (bool, np.bool_)):
        return -1
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    return -1


def _parts(venv: VecEnv) -> set[int]:
    """The ids of every VecEnv layer of ``venv`` and of the gymnasium envs inside an in-process one (unwrapped)."""
    parts = set()
    while isinstance(venv, VecEnvWrapper):
        parts.add(id(venv))
        venv = venv.venv
    parts.add(id(venv))
    return parts | {id(env.unwrapped) for env in getattr(venv, "envs", [])}


def _stack(images: list[np.ndarray]) -> np.ndarray:
    """Overlays one above the other, a white gap between them."""
    gap = np.full((4, images[0].shape[1], 3), 255, dtype=np.uint8)
    return np.concatenate([part for image in images for part in (image, gap)][:-1], axis=0)


def _one_env(obs: np.ndarray | dict, j: int) -> np.ndarray | dict:
    """Env ``j``'s observation out of a VecEnv's batch (a copy: the VecEnv reuses its buffers)."""
    return {key: value[j].copy() for key, value in obs.items()} if isinstance(obs, dict) else obs[j].copy()


__all__ = [
    "AttentionLoggingCallback",
    "Round",
    "colorize",
    "find_attention_extractor",
    "heatmap_image",
    "newest_frame",
    "patch_weights",
    "policy_input",
]
