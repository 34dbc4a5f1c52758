"""PPO training speed, in env steps per second, for each extractor and the LSTM baseline.

    python benchmarks/throughput.py                      # about 3 minutes
    python benchmarks/throughput.py --steps 32768 --history 128

Each method trains PPO (or sb3-contrib's RecurrentPPO for ``ppo_lstm``) on the same env with the
presets ``train.py`` uses, for the same number of env steps, one after another in this process;
the clock runs over ``model.learn`` only (rollouts and updates, no evaluation or logging). The
history-based extractors see ``--history`` steps; ``mlp`` sees the newest step. Ratios are against
``mlp`` and ``ppo_lstm`` measured in this run.
"""

from __future__ import annotations

import argparse
import time

import torch

from agents.build import build_model, make_vec, resolve
from agents.config import TrainConfig

METHODS = ("mlp", "mlp-stack", "attention", "attention-residual", "local-attention", "sparse-attention", "ppo_lstm")
VARIANTS = {"attention-residual": ("attention", {"gate": "residual"})}
"""methods that are an extractor with other keywords: the GTrXL gate's cost against a plain residual"""


def steps_per_second(method: str, args: argparse.Namespace) -> float:
    extractor, params = VARIANTS.get(method, (method, {}))
    algo, extractor = ("ppo_lstm", "mlp") if method == "ppo_lstm" else ("ppo", extractor)
    history = None if method in ("mlp", "ppo_lstm") else args.history
    cfg = TrainConfig(
        algo=algo, env=args.env, extractor=extractor, history=history, seed=args.seed, verbose=0, hyperparams=params
    )
    plan = resolve(cfg)
    venv = make_vec(plan, plan.n_envs, args.seed)
    model = build_model(plan, venv)
    start = time.perf_counter()
    model.learn(args.steps)
    seconds = time.perf_counter() - start
    venv.close()
    return model.num_timesteps / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="rlattn/TMaze-v0")
    parser.add_argument("--steps", type=int, default=16_384, help="env steps per method")
    parser.add_argument("--history", type=int, default=64, help="history length K for the history extractors")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    args = parser.parse_args()
    for name in ("steps", "history", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)} is invalid: must be >= 1")
    torch.set_num_threads(args.threads)
    print(f"PPO on {args.env}, {args.steps} env steps per method, history K={args.history}, {args.threads} thread(s)")
    header = f"{'method':<18} {'steps/s':>9} {'x mlp':>7} {'x ppo_lstm':>11}"
    print(header)
    print("-" * len(header))
    measured: dict[str, float] = {}
    for method in args.methods:
        measured[method] = steps_per_second(method, args)
    for method, sps in measured.items():
        vs_mlp = f"{sps / measured['mlp']:.2f}" if "mlp" in measured else "-"
        vs_lstm = f"{sps / measured['ppo_lstm']:.1f}" if "ppo_lstm" in measured else "-"
        print(f"{method:<18} {sps:>9.0f} {vs_mlp:>7} {vs_lstm:>11}")


if __name__ == "__main__":
    main()
