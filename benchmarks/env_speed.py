"""Env steps per second of every registered env, on one core.

    python benchmarks/env_speed.py                 # about 30 seconds
    python benchmarks/env_speed.py --steps 500000 --history 128

Each env is made with ``gym.make`` (as users and SB3 get it, with Gymnasium's default wrappers),
then stepped with uniformly random actions drawn in advance, resetting at episode ends; resets
count in the time. A second column runs the same env inside ``HistoryObservation`` (K steps, as the
attention policies see it). The process is pinned to one core where the system allows.
"""

from __future__ import annotations

import argparse
import os
import time

import gymnasium as gym

import envs
from rlattn.wrappers import HistoryObservation


def steps_per_second(env: gym.Env, steps: int, seed: int) -> float:
    actions = [env.action_space.sample() for _ in range(min(steps, 10_000))]
    env.reset(seed=seed)
    env.action_space.seed(seed)
    start = time.perf_counter()
    for i in range(steps):
        _, _, terminated, truncated, _ = env.step(actions[i % len(actions)])
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200_000, help="steps per env")
    parser.add_argument("--history", type=int, default=64, help="K for the HistoryObservation column")
    parser.add_argument("--envs", nargs="+", default=list(envs.ENV_IDS), help="env ids (default: every registered one)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps < 1 or args.history < 1:
        parser.error(f"--steps {args.steps} / --history {args.history} is invalid: both must be >= 1")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print(f"{args.steps} random-action steps per env, one core")
    header = f"{'env':<28} {'steps/s':>10} {f'with history K={args.history}':>22}"
    print(header)
    print("-" * len(header))
    for env_id in args.envs:
        bare = steps_per_second(gym.make(env_id), args.steps, args.seed)
        wrapped = steps_per_second(HistoryObservation(gym.make(env_id), args.history), args.steps, args.seed)
        print(f"{env_id:<28} {bare:>10.0f} {wrapped:>22.0f}", flush=True)


if __name__ == "__main__":
    main()
