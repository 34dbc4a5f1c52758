"""AttentionPPO's training pass against its rollout length: chunked queries (the default) against all
keys at once, in the same run.

    python benchmarks/episodic_train_cost.py                                  # about 2 minutes
    python benchmarks/episodic_train_cost.py --n-steps 128 2048 --memories 64 256

For each memory W and rollout length n_steps: one rollout of ``--n-envs`` envs on CartPole-v1 is
collected (not timed), then ``model.train()`` (one epoch over minibatches of ``--envs-per-batch`` whole
env rollouts, forward and backward) is timed ``--repeats`` times, with the training pass encoding
queries in chunks (``EpisodicTransformer.chunk_steps`` None: max(W, 256) per chunk) and with every query
against every key (one chunk). Printed: milliseconds per trained env step (best of the repeats), the
ratio of the two, and the ratio of each to n_steps = the first length's (cost per step as rollouts grow).
Both compute the same features and gradients (``tests/test_episodic.py``).
"""

from __future__ import annotations

import argparse
import time

import torch
from stable_baselines3.common.env_util import make_vec_env

from rlattn import AttentionPPO

WHOLE = 1 << 30
"""``chunk_steps`` so large that every rollout is one chunk: all keys at once"""


def per_step_ms(model: AttentionPPO, chunk: int | None, repeats: int) -> float:
    """Best of ``repeats`` timings of one training pass over the collected rollout, in ms per env step."""
    model.policy.memory_net.chunk_steps = chunk
    steps = model.n_steps * model.n_envs
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model.train()
        best = min(best, time.perf_counter() - start)
    return 1000 * best / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-steps", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--memories", type=int, nargs="+", default=[64])
    parser.add_argument("--n-envs", type=int, default=4)
    parser.add_argument("--envs-per-batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'memory':>6} {'n_steps':>7} {'chunked ms/step':>15} {'all keys ms/step':>16} {'all keys / chunked':>18}")
    for memory in args.memories:
        first: tuple[float, float] | None = None
        for n_steps in args.n_steps:
            env = make_vec_env("CartPole-v1", n_envs=args.n_envs, seed=0)
            model = AttentionPPO(
                "MlpPolicy",
                env,
                memory=memory,
                n_steps=n_steps,
                batch_size=n_steps * args.envs_per_batch,
                n_epochs=1,
                seed=0,
                device="cpu",
            )
            _, callback = model._setup_learn(n_steps * args.n_envs)
            model.collect_rollouts(env, callback, model.rollout_buffer, n_steps)
            chunked = per_step_ms(model, None, args.repeats)
            whole = per_step_ms(model, WHOLE, args.repeats)
            first = first or (chunked, whole)
            print(
                f"{memory:>6} {n_steps:>7} {chunked:>15.3f} {whole:>16.3f} {whole / chunked:>17.2f}x"
                f"   (per step vs n_steps {args.n_steps[0]}: chunked {chunked / first[0]:.2f}x, all keys {whole / first[1]:.2f}x)"
            )
            env.close()


if __name__ == "__main__":
    main()
