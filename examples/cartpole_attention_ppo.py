"""``AttentionPPO`` (episodic memory: each step encoded once) on a Gymnasium env rlattn did not write.

CartPole without its two velocity entries: the policy attends over the episode's last 500 steps
(the whole episode) to infer them. Run: ``python examples/cartpole_attention_ppo.py [STEPS] [SEED]``
(about a minute on one CPU core; README, "Episodic memory: AttentionPPO", gives what it scored).
The rewards PPO trains on are divided by a running estimate of the return's spread, as
``train.py`` does on envs outside this package's families (``normalize_reward``).
"""

import sys

from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

from rlattn import AttentionPPO

try:  # run as a script (examples/ on sys.path) or imported as examples.cartpole_attention_ppo
    from cartpole_no_velocity import cartpole_without_velocity
except ImportError:
    from examples.cartpole_no_velocity import cartpole_without_velocity


def main(timesteps: int = 150_000, seed: int = 0) -> float:
    venv = VecNormalize(make_vec_env(cartpole_without_velocity, n_envs=32, seed=seed), norm_obs=False)
    model = AttentionPPO(
        "MlpPolicy",
        venv,
        memory=500,
        memory_kwargs=dict(n_layers=1, gate="residual"),
        n_steps=32,
        batch_size=256,
        n_epochs=4,
        learning_rate=3e-4,
        ent_coef=0.01,
        seed=seed,
    )
    model.learn(timesteps)
    # the env's own rewards: a plain env (the memory is carried by predict's state, as evaluate_policy passes it)
    mean_return, _ = evaluate_policy(
        model, make_vec_env(cartpole_without_velocity, n_envs=1, seed=100 + seed), n_eval_episodes=10
    )
    print(f"mean return over 10 episodes: {mean_return:.1f} (500 is the maximum)")
    return float(mean_return)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 150_000, int(sys.argv[2]) if len(sys.argv) > 2 else 0)
