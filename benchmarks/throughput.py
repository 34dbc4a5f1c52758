"""PPO training speed, in env steps per second, and rollout-buffer bytes per stored env step, per method.

    python benchmarks/throughput.py                                   # about 4 minutes
    python benchmarks/throughput.py --env-kwargs corridor_length:50 --history 64 --memories 64 1024

Each method trains PPO (sb3-contrib's RecurrentPPO for ``ppo_lstm``, rlattn's AttentionPPO for
``ppo_attention``) on the same env with the presets ``train.py`` uses, for the same number of env
steps, one after another in this process; the clock runs over ``model.learn`` only (rollouts and
updates, no evaluation or logging). The history-based extractors see ``--history`` steps, ``mlp`` the
newest step; ``ppo_attention`` remembers ``--history`` steps, and once more for each of ``--memories``.
Ratios are against ``mlp`` and ``ppo_lstm`` measured in this run. Bytes per step: every array the
rollout buffer keeps, over its steps (for ``ppo_attention`` with the memory carried into the rollout).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from stable_baselines3.common.buffers import RolloutBuffer

from agents.build import build_model, make_vec, resolve
from agents.config import TrainConfig, parse_key_values

METHODS = (
    "mlp",
    "mlp-stack",
    "attention",
    "attention-residual",
    "local-attention",
    "sparse-attention",
    "ppo_attention",
    "ppo_lstm",
)
VARIANTS = {"attention-residual": ("attention", {"gate": "residual"})}
"""methods that are an extractor with other keywords: the GTrXL gate's cost against a plain residual"""
ALGOS = {"ppo_lstm": ("ppo_lstm", "mlp"), "ppo_attention": ("ppo_attention", "mlp")}


def buffer_bytes_per_step(buffer: RolloutBuffer) -> float:
    """Bytes the rollout buffer keeps per stored env step."""
    if hasattr(buffer, "nbytes_per_step"):  # AttentionPPO's buffer counts its carried memory too
        return float(buffer.nbytes_per_step())
    arrays = [value for value in vars(buffer).values() if isinstance(value, np.ndarray)]
    arrays += (
        [value for value in getattr(buffer, "observations", {}).values()]
        if isinstance(buffer.observations, dict)
        else []
    )
    return sum(a.nbytes for a in arrays) / (buffer.buffer_size * buffer.n_envs)


def measure(method: str, history: int | None, args: argparse.Namespace) -> tuple[float, float]:
    """(env steps per second, rollout-buffer bytes per stored step)."""
    extractor, params = VARIANTS.get(method, (method, {}))
    algo, extractor = ALGOS.get(method, ("ppo", extractor))
    cfg = TrainConfig(
        algo=algo,
        env=args.env,
        env_kwargs=args.env_kwargs,
        extractor=extractor,
        history=history,
        seed=args.seed,
        verbose=0,
        hyperparams=params,
    )
    plan = resolve(cfg)
    venv = make_vec(plan, plan.n_envs, args.seed)
    model = build_model(plan, venv)
    start = time.perf_counter()
    model.learn(args.steps)
    seconds = time.perf_counter() - start
    venv.close()
    return model.num_timesteps / seconds, buffer_bytes_per_step(model.rollout_buffer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="rlattn/TMaze-v0")
    parser.add_argument(
        "--env-kwargs",
        nargs="*",
        action="extend",
        default=[],
        help="env keywords as key:value literals (given twice: joined)",
    )
    parser.add_argument("--steps", type=int, default=16_384, help="env steps per method")
    parser.add_argument("--history", type=int, default=64, help="history length K (ppo_attention: memory W)")
    parser.add_argument("--memories", type=int, nargs="*", default=[], help="more memory lengths for ppo_attention")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    args = parser.parse_args()
    for name in ("steps", "history", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)} is invalid: must be >= 1")
    if any(m < 1 for m in args.memories):
        parser.error(f"--memories {args.memories} is invalid: each must be >= 1")
    args.env_kwargs = parse_key_values(args.env_kwargs, "--env-kwargs")
    torch.set_num_threads(args.threads)
    print(
        f"PPO on {args.env} {args.env_kwargs}, {args.steps} env steps per method, K={args.history}, {args.threads} thread(s)"
    )
    cases = [(m, None if m in ("mlp", "ppo_lstm") else args.history) for m in args.methods]
    cases += [("ppo_attention", w) for w in args.memories if "ppo_attention" in args.methods]
    measured = {(m, k): measure(m, k, args) for m, k in cases}
    speed = {m: sps for (m, k), (sps, _) in measured.items() if k in (None, args.history)}
    header = f"{'method':<20} {'K or W':>7} {'steps/s':>9} {'x mlp':>7} {'x ppo_lstm':>11} {'bytes/step':>11}"
    print(header)
    print("-" * len(header))
    for (method, k), (sps, nbytes) in measured.items():
        vs_mlp = f"{sps / speed['mlp']:.2f}" if "mlp" in speed else "-"
        vs_lstm = f"{sps / speed['ppo_lstm']:.1f}" if "ppo_lstm" in speed else "-"
        print(f"{method:<20} {k or 1:>7} {sps:>9.0f} {vs_mlp:>7} {vs_lstm:>11} {nbytes:>11,.0f}")
    for w in args.memories:
        if ("ppo_attention", w) in measured and ("ppo_attention", args.history) in measured:
            ratio = measured[("ppo_attention", w)][0] / measured[("ppo_attention", args.history)][0]
            print(f"ppo_attention: steps/s with a {w}-step memory / with {args.history}: {ratio:.2f}")


if __name__ == "__main__":
    main()
