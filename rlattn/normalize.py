"""``VecNormalize`` for ``HistoryObservation`` envs: statistics per step, not per history slot.

SB3's ``VecNormalize`` keeps a mean and a variance for every element of an observation key. On a history
``(K, *step)`` that is one set per slot, and the slots of young episodes hold padding: the same value
is normalised differently by its age, and the filler drags the older slots' statistics. Here ``obs``
has the statistics of one step, updated from the newest step of each history (the step the env just
returned: every step counted once, as ``VecNormalize`` on the env without the history would count it),
applied to every slot, with the padding set to 0 afterwards. The ``action`` and ``reward`` entries
(``include_action``, ``include_reward``) are not normalised: an episode's first step holds placeholder
zeros there, which statistics of the newest step would count as data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

HISTORY_KEYS = ("obs",)
"""the history entries that can be normalised (``valid`` is the mask; ``action`` and ``reward``: see above)"""


class StepStatistics(RunningMeanStd):
    """Running mean and variance of one step of a history, fed with whole batches of histories
    ``(n_envs, K, *step)`` (what ``VecNormalize`` hands it): it takes each history's newest step."""

    def update(self, arr: np.ndarray) -> None:
        super().update(np.asarray(arr)[:, -1])


class HistoryNormalize(VecNormalize):
    """``VecNormalize`` for a VecEnv of ``HistoryObservation`` envs (see the module's docstring).

    ``norm_obs_keys`` (default ``["obs"]``) may name ``obs`` only. The normalised key becomes a float32
    space whatever the env's dtype (``VecNormalize`` would keep a uint8 dtype, and SB3's rollout buffer
    would cut the normalised values to whole numbers). Everything else (reward
    normalisation, ``save``/``load``, ``training``, ``sync_envs_normalization`` in ``EvalCallback``) is
    ``VecNormalize``'s.
    """

    def __init__(self, venv: VecEnv, norm_obs_keys: Sequence[str] | None = None, **kwargs: Any) -> None:
        space = venv.observation_space
        if not isinstance(space, spaces.Dict) or not {"obs", "valid"} <= set(space.spaces):
            raise ValueError(
                f"HistoryNormalize wraps a VecEnv of HistoryObservation envs (a Dict with 'obs' and 'valid'); "
                f"got {space}: use VecNormalize for other envs"
            )
        keys = list(norm_obs_keys) if norm_obs_keys is not None else ["obs"]
        for key in keys:
            if key not in HISTORY_KEYS or key not in space.spaces:
                allowed = [k for k in HISTORY_KEYS if k in space.spaces]
                raise ValueError(
                    f"HistoryNormalize norm_obs_keys entry {key!r} is invalid: allowed are {', '.join(allowed)}"
                )
        super().__init__(venv, norm_obs_keys=keys, **kwargs)
        if self.norm_obs:
            normalised = {}
            for key in keys:
                history = space.spaces[key]
                assert isinstance(history, spaces.Box) and isinstance(self.obs_rms, dict)
                self.obs_rms[key] = StepStatistics(shape=history.shape[1:])
                normalised[key] = spaces.Box(-self.clip_obs, self.clip_obs, history.shape, np.float32)
            # a new Dict: the wrapped VecEnv's space stays as its envs make it
            self.observation_space = spaces.Dict({**space.spaces, **normalised})

    def normalize_obs(self, obs: np.ndarray | dict[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        """``VecNormalize``'s, each slot by the statistics of one step, padding 0 (a batch or one env's
        history, as a terminal observation is)."""
        normalised = super().normalize_obs(obs)
        if self.norm_obs and isinstance(normalised, dict):
            padding = np.asarray(normalised["valid"]) < 0.5
            for key in self.norm_obs_keys or []:
                normalised[key][padding] = 0.0
        return normalised
