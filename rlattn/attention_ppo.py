"""``AttentionPPO``: PPO whose policy remembers the episode with an episodic transformer (sb3-contrib style).

Like CleanRL's PPO-TrXL (GTrXL), each step is encoded once: rollouts keep a per-env cache of each
layer's keys and values, the buffer stores one observation per step, training re-encodes each env's
rollout as one causal sequence. See :mod:`rlattn.episodic` for the memory itself.
"""

from __future__ import annotations

import inspect
import io
import warnings
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, EvalCallback
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback
from stable_baselines3.common.utils import explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch import Tensor

from rlattn.episodic import EpisodicMemory, EpisodicTransformer
from rlattn.episodic_buffer import EpisodicBatch, EpisodicDictRolloutBuffer, EpisodicRolloutBuffer
from rlattn.episodic_policy import (
    MEMORY_KEYS,
    AttentionActorCriticPolicy,
    AttentionCnnPolicy,
    AttentionMultiInputPolicy,
    AttentionPatchPolicy,
    action_size,
)
from rlattn.validation import check_int

SelfAttentionPPO = TypeVar("SelfAttentionPPO", bound="AttentionPPO")
EpisodicBuffer = EpisodicRolloutBuffer | EpisodicDictRolloutBuffer
_SET_HERE = ("memory", "include_action", "include_reward", "rollout_buffer_class", "rollout_buffer_kwargs")


class AttentionPPO(PPO):
    """PPO with an episodic-memory policy: observation encoder -> transformer over the episode's last W steps -> heads.

    Each step's observation is encoded once by the features extractor the policy implies
    (``"MlpPolicy"``: Flatten, ``"CnnPolicy"``: NatureCNN, ``"MultiInputPolicy"``: Combined; set
    ``policy_kwargs["features_extractor_class"]`` to change it), then attends over the last
    ``memory`` steps of its episode (itself included) through a transformer with rotary positions.

    **Minibatches are whole env rollouts**: ``g = ceil(n_envs / k)`` groups per epoch, k = ``batch_size /
    n_steps`` rounded to the nearest integer (halves to even; at least 1, at most ``n_envs``), the
    shuffled envs split into g groups whose sizes differ by at most one (10 envs with k = 4: 4, 3, 3);
    each group re-encodes its envs' rollouts as causal sequences. Gradients flow through every step of
    the rollout exactly as in the rollout (same keys, same masks); the memory carried in from before the
    rollout is a fixed prefix whose layer inputs get no gradient, while its keys and values are
    recomputed with the current weights.

    ``predict(obs, state, episode_start, deterministic)`` carries an :class:`~rlattn.EpisodicMemory`
    as ``state`` (None: fresh episodes), so ``evaluate_policy`` works. With ``include_reward`` it
    also needs ``reward=`` (the rewards since the last call), which ``evaluate_policy`` does not pass.

    :param policy: ``"MlpPolicy"``, ``"CnnPolicy"``, ``"MultiInputPolicy"`` or a policy class.
    :param env: the environment (plain, no history wrapper).
    :param memory: window W in steps, the current one included (ages 0 .. W-1).
    :param include_action: add the previous action to each step's input (one-hot if discrete; zeros at
        an episode's first step).
    :param include_reward: add the previous reward to each step's input (zero at an episode's first step).
    :param memory_kwargs: the transformer's ``features_dim`` (128), ``embed_dim`` (64), ``n_heads`` (4),
        ``n_layers`` (2), ``gate`` (``"gru"``), ``position`` (``"rotary"``), ``length_scale`` (False); merged with
        ``policy_kwargs["memory_kwargs"]``.
    :param n_steps: steps per env per rollout.
    :param batch_size: minibatch size in steps (whole env rollouts); None: ``n_steps`` (one env each). With
        ``normalize_advantage`` a minibatch of a single step (``n_steps=1``, one env a group) is left unnormalised.
    :param n_epochs: passes over the rollout per update.
    :param kwargs: every other PPO keyword (``learning_rate``, ``gamma``, ``gae_lambda``, ``clip_range``,
        ``ent_coef``, ``vf_coef``, ``target_kl``, ``policy_kwargs``, ``seed``, ``device``, ...).
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": AttentionActorCriticPolicy,
        "CnnPolicy": AttentionCnnPolicy,
        "MultiInputPolicy": AttentionMultiInputPolicy,
        "PatchPolicy": AttentionPatchPolicy,
    }
    policy: AttentionActorCriticPolicy
    rollout_buffer: EpisodicBuffer  # type: ignore[assignment]

    def __init__(
        self,
        policy: str | type[AttentionActorCriticPolicy],
        env: GymEnv | str,
        memory: int = 64,
        include_action: bool = False,
        include_reward: bool = False,
        memory_kwargs: dict[str, Any] | None = None,
        n_steps: int = 128,
        batch_size: int | None = None,
        n_epochs: int = 4,
        _init_setup_model: bool = True,
        **kwargs: Any,
    ):
        check_int("memory", memory)
        check_int("n_steps", n_steps)
        policy_kwargs = dict(kwargs.pop("policy_kwargs", None) or {})
        # a trained model's policy_kwargs hold what AttentionPPO set: taken back where they agree with its arguments
        own = {"memory": memory, "include_action": include_action, "include_reward": include_reward}
        for name, value in own.items():
            if name in policy_kwargs and policy_kwargs[name] != value:
                raise ValueError(
                    f"policy_kwargs {name}={policy_kwargs[name]!r} differs from AttentionPPO's {name}={value!r}: "
                    f"pass {name}={policy_kwargs[name]!r} to AttentionPPO (policy_kwargs may hold it only as the same value)"
                )
            policy_kwargs.pop(name, None)
        for name in _SET_HERE:
            if name in kwargs or name in policy_kwargs:
                raise ValueError(f"{name} in policy_kwargs or kwargs is not supported: AttentionPPO sets it itself")
        if kwargs.get("use_sde", False):
            raise ValueError("use_sde=True is not supported by AttentionPPO: allowed is False")
        inner = dict(policy_kwargs.pop("memory_kwargs", None) or {})
        both = {k for k in set(inner) & set(memory_kwargs or {}) if inner[k] != (memory_kwargs or {})[k]}
        if both:
            raise ValueError(
                f"memory_kwargs keys {sorted(both)} are given twice, with different values: in policy_kwargs and to AttentionPPO"
            )
        policy_kwargs.update(
            memory=memory,
            include_action=include_action,
            include_reward=include_reward,
            memory_kwargs={**inner, **(memory_kwargs or {})},
        )
        self.memory, self.include_action, self.include_reward = memory, include_action, include_reward
        self._last_memory: EpisodicMemory | None = None
        # PPO checks batch_size > 1 against its own flat minibatches when normalize_advantage is set; ours are
        # whole rollouts (batch_size / n_steps envs each), so its check is switched off here and set back after.
        normalize_advantage = kwargs.pop("normalize_advantage", True)
        super().__init__(
            policy,
            env,
            n_steps=n_steps,
            batch_size=n_steps,
            n_epochs=n_epochs,
            policy_kwargs=policy_kwargs,
            normalize_advantage=False,
            _init_setup_model=False,
            **kwargs,
        )
        self.normalize_advantage = normalize_advantage
        self.batch_size = check_int("batch_size", n_steps if batch_size is None else batch_size)
        if batch_size is not None and self.env is not None:
            _warn_rounded_batch(batch_size, n_steps, self.n_envs)
        if _init_setup_model:
            self._setup_model()
            self._note_patch_readout()

    def _note_patch_readout(self) -> None:
        """``PatchPolicy`` chose its look by the action count alone (``readout`` not given): a pointer (each
        ``Discrete(N)`` action one of the frame's N patches) is said in a warning, unless the env says its actions
        are patches (``actions_are_patches``); the choice is kept in ``policy_kwargs``, so a load builds the same."""
        chosen = getattr(self.policy, "readout_by_rule", None)
        if chosen is None:
            return
        frame = {**(self.policy_kwargs.get("features_extractor_kwargs") or {}), "readout": chosen}
        self.policy_kwargs = {**self.policy_kwargs, "features_extractor_kwargs": frame}
        if chosen == "pointer" and not _env_says_actions_are_patches(self.env):
            warnings.warn(
                f"AttentionPPO PatchPolicy: the {self.action_space} actions are taken as the frame's patches, one each "
                "(readout 'pointer': the look points at the patch to act on); if they are something else, pass "
                "policy_kwargs=dict(features_extractor_kwargs=dict(readout='pool')) (train.py: -params \"readout:'pool'\")",
                UserWarning,
                stacklevel=3,
            )

    def env_groups(self) -> list[np.ndarray]:
        """One epoch's minibatches: the envs shuffled into groups of about ``batch_size / n_steps``."""
        per_batch = _rollouts_per_batch(self.batch_size, self.n_steps, self.n_envs)  # type: ignore[arg-type]
        return np.array_split(np.random.permutation(self.n_envs), -(-self.n_envs // per_batch))

    def _setup_model(self) -> None:
        self.rollout_buffer_class = (
            EpisodicDictRolloutBuffer if isinstance(self.observation_space, spaces.Dict) else EpisodicRolloutBuffer
        )
        extras_dim = (action_size(self.action_space) if self.include_action else 0) + int(self.include_reward)
        self.rollout_buffer_kwargs = {"extras_dim": extras_dim}
        super()._setup_model()
        self._last_memory = self.policy.initial_memory(self.n_envs)
        if self._last_episode_starts is not None:
            # loaded with its last observations (load(..., force_reset=False)): the memory is not saved, so each
            # env's next step starts it afresh, as an episode start (not mid-episode with positions from 0)
            self._last_episode_starts = np.ones(len(self._last_episode_starts), dtype=bool)

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        """Play ``n_rollout_steps`` per env, each step one query per layer against the memory's cache."""
        assert isinstance(rollout_buffer, (EpisodicRolloutBuffer, EpisodicDictRolloutBuffer))
        assert self._last_obs is not None and self._last_memory is not None
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        memory = self._last_memory
        if memory.n_envs != env.num_envs:
            memory = self._last_memory = self.policy.initial_memory(env.num_envs)
            self._last_episode_starts = np.ones(env.num_envs, dtype=bool)
        self.policy.memory_net.refresh(memory)  # keys and values as training will recompute them
        rollout_buffer.carry_in(memory)
        callback.on_rollout_start()
        n_steps = 0  # SB3's names for what callbacks read in ``self.locals``: n_steps, obs_tensor, clipped_actions
        while n_steps < n_rollout_steps:
            with torch.no_grad():
                memory.reset(torch.as_tensor(self._last_episode_starts, device=self.device))
                rollout_buffer.add_memory_inputs(memory)
                obs_tensor = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]
                action_tensor, values, log_probs = self.policy.act(obs_tensor, memory)
            actions = action_tensor.cpu().numpy()  # numpy, as SB3's callbacks read self.locals["actions"]
            clipped_actions = self.policy._to_env_actions(actions)
            new_obs, rewards, dones, infos = env.step(clipped_actions)
            dones = np.asarray(dones, dtype=bool)  # some VecEnvs return 0/1 integers
            self.num_timesteps += env.num_envs
            # the memory reads the rewards the env paid, as predict(reward=...) gets them, not VecNormalize's
            paid = rewards if self._vec_normalize_env is None else self._vec_normalize_env.get_original_reward()
            callback.update_locals(locals())
            if not callback.on_step():
                # stopped here: the memory and the next observation agree, so a later learn() goes on from this step
                self.policy.remember(memory, clipped_actions, paid)
                self._last_obs, self._last_episode_starts = new_obs, dones  # type: ignore[assignment]
                return False
            self._update_info_buffer(infos, dones)
            self.policy.remember(memory, clipped_actions, paid)
            self._bootstrap_timeouts(rewards, dones, infos, memory)
            if isinstance(self.action_space, spaces.Discrete):
                actions = actions.reshape(-1, 1)
            rollout_buffer.add(self._last_obs, actions, rewards, self._last_episode_starts, values, log_probs)  # type: ignore[arg-type]
            self._last_obs, self._last_episode_starts = new_obs, dones  # type: ignore[assignment]
            n_steps += 1
        with torch.no_grad():
            last = memory.clone()  # the next rollout's first step: valued here, remembered there
            last.reset(torch.as_tensor(dones, device=self.device))
            values = self.policy.value(obs_as_tensor(new_obs, self.device), last)  # type: ignore[arg-type]
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def _bootstrap_timeouts(self, rewards: np.ndarray, dones: np.ndarray, infos: list[dict], memory: EpisodicMemory):
        """Add the discounted value of truncated episodes' last observations to their rewards (as SB3's PPO does)."""
        for i in np.flatnonzero(dones):
            terminal = infos[i].get("terminal_observation")
            if terminal is not None and infos[i].get("TimeLimit.truncated", False):
                with torch.no_grad():
                    obs = self.policy.obs_to_tensor(terminal)[0]
                    value = self.policy.value(obs, memory.select([int(i)]))
                rewards[i] += self.gamma * float(value)

    def train(self) -> None:
        """PPO's clipped update over minibatches of whole env rollouts."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        clip_range_vf = None if self.clip_range_vf is None else self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]
        logs: dict[str, list[float]] = {
            "entropy_loss": [],
            "policy_gradient_loss": [],
            "value_loss": [],
            "clip_fraction": [],
        }
        loss = torch.zeros(())
        for epoch in range(self.n_epochs):
            approx_kls: list[float] = []
            stop = False
            for envs in self.env_groups():
                loss, approx_kl = self._loss(self.rollout_buffer.sequences(envs), clip_range, clip_range_vf, logs)
                approx_kls.append(approx_kl)
                if self.target_kl is not None and approx_kl > 1.5 * self.target_kl:
                    stop = True
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl:.2f}")
                    break
                self.policy.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
            self._n_updates += 1
            if stop:
                break
        values, returns = self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten()
        for key, items in logs.items():
            self.logger.record(f"train/{key}", float(np.mean(items)) if items else float("nan"))
        self.logger.record("train/approx_kl", float(np.mean(approx_kls)))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", float(explained_variance(values, returns)))
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", torch.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)

    def _loss(
        self, batch: EpisodicBatch, clip_range: float, clip_range_vf: float | None, logs: dict[str, list[float]]
    ) -> tuple[Tensor, float]:
        """PPO's loss on a minibatch of whole rollouts, and the approximate KL to the rollout policy."""
        actions = batch.actions
        if isinstance(self.action_space, spaces.Discrete):
            actions = actions.long().flatten()
        values, log_prob, entropy = self.policy.evaluate_sequences(
            batch.observations, actions, batch.extras, batch.positions, batch.episode_starts, batch.carried
        )
        values = values.flatten()
        advantages = batch.advantages
        if self.normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        ratio = torch.exp(log_prob - batch.old_log_prob)
        policy_loss = -torch.min(
            advantages * ratio, advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
        ).mean()
        if clip_range_vf is not None:
            values = batch.old_values + torch.clamp(values - batch.old_values, -clip_range_vf, clip_range_vf)
        value_loss = torch.nn.functional.mse_loss(batch.returns, values)
        entropy_loss = -torch.mean(-log_prob) if entropy is None else -torch.mean(entropy)
        with torch.no_grad():
            log_ratio = log_prob - batch.old_log_prob
            approx_kl = float(torch.mean((torch.exp(log_ratio) - 1) - log_ratio))
            logs["clip_fraction"].append(float(torch.mean((torch.abs(ratio - 1) > clip_range).float())))
        logs["policy_gradient_loss"].append(policy_loss.item())
        logs["value_loss"].append(value_loss.item())
        logs["entropy_loss"].append(entropy_loss.item())
        return policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss, approx_kl

    def predict(  # type: ignore[override]
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: EpisodicMemory | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        reward: np.ndarray | None = None,
    ) -> tuple[np.ndarray, EpisodicMemory]:
        """See :meth:`AttentionActorCriticPolicy.predict`: ``state`` is the memory (None: fresh episodes)."""
        return self.policy.predict(observation, state, episode_start, deterministic, reward)

    def attention_maps(self, state: EpisodicMemory) -> tuple[Tensor, Tensor]:
        """After ``predict``: the newest step's attention (B, L, H, W) and each slot's episode position (B, W), -1 if empty."""
        return self.policy.memory_net.attention_maps(state)

    def learn(
        self: SelfAttentionPPO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "AttentionPPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfAttentionPPO:
        if self.include_reward and any(isinstance(c, EvalCallback) for c in _every_callback(callback)):
            # it would fail at its first evaluation's second step, however long training had run by then
            raise ValueError(
                "EvalCallback cannot evaluate an AttentionPPO with include_reward=True: SB3's evaluate_policy passes "
                "predict no rewards; evaluate in your own loop with predict(obs, state=..., episode_start=..., reward=rewards)"
            )
        return super().learn(total_timesteps, callback, log_interval, tb_log_name, reset_num_timesteps, progress_bar)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_last_memory"]

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfAttentionPPO],
        path: str | Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: torch.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfAttentionPPO:
        """SB3's ``load``. The trained policy is built with its ``memory``, ``include_action``,
        ``include_reward`` and ``memory_kwargs``: given here, they must equal the saved ones (SB3 would set the
        attribute and keep the saved policy, and the next rollout would fail or run another window)."""
        built_with = ("memory", "include_action", "include_reward", "memory_kwargs")
        fixed = {name: kwargs.pop(name) for name in built_with if name in kwargs}
        model = super().load(path, env, device, custom_objects, print_system_info, force_reset, **kwargs)
        for name, value in fixed.items():
            if name == "memory_kwargs":
                unknown = sorted(set(dict(value or {})) - set(MEMORY_KEYS))
                if unknown:
                    raise ValueError(f"memory_kwargs keys {unknown} are not supported: allowed are {MEMORY_KEYS}")
                saved = {**_memory_defaults(), **model.policy_kwargs.get("memory_kwargs", {})}
                differ = {k: v for k, v in dict(value or {}).items() if k not in saved or saved[k] != v}
                if differ:
                    raise ValueError(
                        f"AttentionPPO.load: memory_kwargs {differ!r} differ from the saved model's {saved!r}: "
                        "the trained policy is built with them (leave them out)"
                    )
            elif value != getattr(model, name):
                saved = getattr(model, name)
                raise ValueError(
                    f"AttentionPPO.load: {name}={value!r} differs from the saved model's {name}={saved!r}: the trained "
                    f"policy is built with it (allowed is {saved!r}, or leave it out)"
                )
        return model


def _memory_defaults() -> dict[str, Any]:
    """The transformer's keywords that ``memory_kwargs`` may set, at their defaults."""
    params = inspect.signature(EpisodicTransformer).parameters
    return {name: params[name].default for name in MEMORY_KEYS}


def _env_says_actions_are_patches(env: VecEnv | None) -> bool:
    """The env's own ``actions_are_patches`` attribute (this package's search envs set it), False where it has none."""
    # has_attr first: a SubprocVecEnv's worker dies on a get_attr of a missing attribute
    if env is None or not env.has_attr("actions_are_patches"):
        return False
    return all(bool(value) for value in env.get_attr("actions_are_patches"))


def _rollouts_per_batch(batch_size: int, n_steps: int, n_envs: int) -> int:
    """Whole env rollouts per minibatch: ``batch_size / n_steps`` rounded, at least 1, at most ``n_envs``."""
    return min(n_envs, max(1, round(batch_size / n_steps)))


def _warn_rounded_batch(batch_size: int, n_steps: int, n_envs: int) -> None:
    """Minibatches are whole env rollouts: a ``batch_size`` that rounds to a minibatch at least twice as
    large or as small (SB3's ``n_steps=2048, batch_size=64``: one rollout of 2,048 steps) is said so."""
    rollouts = _rollouts_per_batch(batch_size, n_steps, n_envs)
    steps = rollouts * n_steps
    if batch_size >= n_envs * n_steps:  # the whole rollout, as near as it gets (SB3 takes it whole too)
        return
    if steps >= 2 * batch_size or 2 * steps <= batch_size:
        envs = f"{n_envs} env{'s' if n_envs > 1 else ''}"
        warnings.warn(
            f"AttentionPPO: batch_size {batch_size} gives minibatches of {steps} steps ({rollouts} whole env "
            f"rollout{'s' if rollouts > 1 else ''} of n_steps {n_steps}, {envs}): its minibatches are whole "
            "rollouts, so give batch_size as a multiple of n_steps (a smaller n_steps for smaller minibatches)",
            UserWarning,
            stacklevel=3,
        )


def _every_callback(callback: MaybeCallback) -> list[Any]:
    """The callbacks ``learn`` runs: lists and ``CallbackList`` opened, each one's child (``callback``,
    as ``EvalCallback`` and ``EveryNTimesteps`` hold it) included."""
    if callback is None:
        return []
    if isinstance(callback, list):
        return [found for item in callback for found in _every_callback(item)]
    if isinstance(callback, CallbackList):
        return _every_callback(callback.callbacks)
    child = getattr(callback, "callback", None)
    return [callback, *(_every_callback(child) if isinstance(child, BaseCallback) else [])]
