"""Does the block router learn to pick the cue? Per checkpoint of a sparse-attention T-Maze run.

    python train.py --algo ppo --extractor sparse-attention --env rlattn/TMaze-v0 \
        --env-kwargs corridor_length:100 -params top_k:1 block_size:8 --save-freq 20000 --seed 0
    python benchmarks/routing.py logs/ppo/rlattn-TMaze-v0_1 --length 100

For each checkpoint (``rl_model_*_steps.zip``, then ``best_model.zip``), plays ``--episodes`` plain
mazes of corridor ``--length`` with deterministic actions and, at the last step acted on, reads the
readout's attention on the explicit path (zero on blocks the router did not choose). Prints the
fraction of (decision, head) pairs whose chosen blocks hold the cue's step (random routing would
give about top_k over the number of other blocks), the mean weight on the cue, and success.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
from stable_baselines3 import PPO

import envs  # noqa: F401  (registers the maze ids)
from agents.cli import OneLineParser
from rlattn import HistoryObservation
from rlattn.callbacks import find_attention_extractor, policy_input


def checkpoints(run: Path) -> list[Path]:
    steps = lambda p: int(re.findall(r"(\d+)_steps", p.name)[0])  # noqa: E731
    return sorted(run.glob("rl_model_*_steps.zip"), key=steps) + [run / "best_model.zip"]


def measure(path: Path, history: int, length: int, episodes: int) -> tuple[float, float, float, int]:
    """(fraction of (decision, head) routed to the cue's block, mean weight on the cue, success, decisions)."""
    model = PPO.load(path, device="cpu")
    extractor = find_attention_extractor(model.policy)
    routed, mass, wins = [], [], []
    for episode in range(episodes):
        env = HistoryObservation(gym.make("rlattn/TMaze-v0", corridor_length=length), history)
        obs, info = env.reset(seed=5_000 + episode)
        done, last = False, obs
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            last = obs
            obs, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
        batch = policy_input(model.policy, {key: value[None] for key, value in last.items()})
        weights = extractor.attention_maps(batch)[0, -1]  # (H, K): the last block's readout
        slot = history - 1 - (int(last["valid"].sum()) - 1 - info["cue_step"])
        if slot >= 0:
            routed.append(float((weights[:, slot] > 0).float().mean()))
            mass.append(float(weights[:, slot].mean()))
        wins.append(bool(info.get("is_success", False)))
    return float(np.mean(routed)), float(np.mean(mass)), float(np.mean(wins)), len(routed)


def main() -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a train.py run folder of --extractor sparse-attention")
    parser.add_argument("--length", type=int, default=100, help="evaluation corridor length")
    parser.add_argument("--episodes", type=int, default=30)
    args = parser.parse_args()
    for name in ("length", "episodes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)} is invalid: must be >= 1")
    configs = sorted(args.run.glob("*/config.json"))
    if not configs:
        parser.error(f"{args.run} is not a train.py run folder: it holds no ENV/config.json")
    history = json.loads(configs[0].read_text())["history"]
    for path in checkpoints(args.run):
        routed, mass, success, n = measure(path, history, args.length, args.episodes)
        print(f"{path.name:28s} cue block routed {routed:.2f} (n={n})  cue mass {mass:.3f}  success {success:.2f}")


if __name__ == "__main__":
    main()
