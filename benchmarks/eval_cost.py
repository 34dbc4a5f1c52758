"""What an evaluation round costs: episodes one at a time against side by side (one env each, one batched call).

    python benchmarks/eval_cost.py                                   # T-Maze corridor 1000, 20 episodes
    python benchmarks/eval_cost.py --corridor 300 --episodes 50

The policy is the shipped preset's, untrained: on the slack-free evaluation maze its episodes run to
the time limit, as long as a solved episode (corridor + 1 steps), so the cost is a trained agent's.
Both ways play the same episodes (seeds ``seed .. seed + episodes - 1``); the table gives wall time,
policy calls and the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from agents.build import build_model, make_vec, resolve
from agents.config import TrainConfig
from agents.evaluate import evaluate
from agents.run import eval_envs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corridor", type=int, default=1000)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=10_000)
    args = parser.parse_args()
    if args.corridor < 1 or args.episodes < 1:
        parser.error(f"--corridor {args.corridor} / --episodes {args.episodes} is invalid: both must be >= 1")
    torch.manual_seed(0)
    plan = resolve(TrainConfig(env="rlattn/TMaze-v0", env_kwargs={"corridor_length": args.corridor}, verbose=0))
    model = build_model(plan, make_vec(plan, plan.n_envs, 0))
    print(
        f"T-Maze corridor {args.corridor}, history {plan.history}, {args.episodes} episodes, {torch.get_num_threads()} threads"
    )
    print(f"{'envs':>5} {'wall s':>8} {'policy calls':>13} {'x faster':>9}")
    baseline = None
    predict, calls = model.predict, [0]

    def counted(*a, **k):
        calls[0] += 1
        return predict(*a, **k)

    model.predict = counted  # type: ignore[method-assign]
    for n_envs in (1, eval_envs(args.episodes)):
        venv = make_vec(plan, n_envs, args.seed, evaluation=True)
        calls[0] = 0
        start = time.perf_counter()
        result = evaluate(model, venv, args.episodes)
        wall = time.perf_counter() - start
        venv.close()
        baseline = baseline or wall
        print(f"{n_envs:>5} {wall:>8.1f} {calls[0]:>13,} {baseline / wall:>9.1f}   ({result})")


if __name__ == "__main__":
    main()
