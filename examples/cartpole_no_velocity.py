"""SB3 PPO with rlattn's history wrapper and attention extractor on a Gymnasium env rlattn did not write.

CartPole without its two velocity entries is a POMDP: the policy must infer the velocities from
the last 8 positions. Run: ``python examples/cartpole_no_velocity.py [STEPS] [SEED]`` (about three
minutes on one CPU core; README, "Using the extractors in your own SB3 code", gives what it scored).

CartPole pays 1 per step, so discounted returns reach ~100: the rewards PPO trains on are divided by
a running estimate of the return's spread (``VecNormalize(norm_obs=False)``), without which the value
loss swamps the shared extractor's gradient and runs end anywhere between 50 and 500. The step size
falls linearly to 0 over the run, so the last updates cannot knock a solved policy off 500.
"""

import sys

import gymnasium as gym
import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

from rlattn import HistoryAttentionExtractor, HistoryObservation


def cartpole_without_velocity() -> gym.Env:
    """Keep cart position and pole angle (observation entries 0 and 2)."""
    env = gym.make("CartPole-v1")
    space = gym.spaces.Box(env.observation_space.low[[0, 2]], env.observation_space.high[[0, 2]], dtype=np.float32)
    return gym.wrappers.TransformObservation(env, lambda obs: obs[[0, 2]], space)


def main(timesteps: int = 200_000, seed: int = 0) -> float:
    make = lambda: HistoryObservation(cartpole_without_velocity(), length=8)  # noqa: E731
    venv = VecNormalize(make_vec_env(make, n_envs=8, seed=seed), norm_obs=False, norm_reward=True)
    policy_kwargs = dict(
        features_extractor_class=HistoryAttentionExtractor,
        features_extractor_kwargs=dict(features_dim=64, embed_dim=32, n_heads=2, n_layers=1),
        net_arch=[64],
    )
    model = PPO(
        "MultiInputPolicy",
        venv,
        n_steps=256,
        batch_size=256,
        learning_rate=lambda progress_remaining: 5e-4 * progress_remaining,  # 5e-4 falling to 0
        policy_kwargs=policy_kwargs,
        seed=seed,
        verbose=0,
    )
    model.learn(timesteps)
    # evaluation on the env's own rewards: a plain env, no VecNormalize (observations were never scaled)
    mean_return, _ = evaluate_policy(model, make_vec_env(make, n_envs=1, seed=100 + seed), n_eval_episodes=10)
    print(f"mean return over 10 episodes: {mean_return:.1f} (500 is the maximum)")
    return float(mean_return)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000, int(sys.argv[2]) if len(sys.argv) > 2 else 0)
