"""MiniGrid Memory: a trained run's success by what its first observation shows.

    python benchmarks/minigrid_starts.py logs/sweeps/third_party/MemoryS11_ppo-attention_2000000_0_*/ppo_attention/*/
    python benchmarks/minigrid_starts.py RUN [RUN ...] --episodes 400 --model best

The agent starts anywhere from the start room to the end of the hallway, facing the hallway's end.
Whether its first observation holds the cue (the object in the start room) and the two objects at
the hallway's end decides what the task asks of a memory there:

- cue and end objects in one view (``MemoryS7`` from the room's first cell): the answer is in that
  one observation; a memory only has to find that step again;
- the cue alone: the cue must be held and combined later with the end's layout, seen many steps on;
- the end objects alone, or nothing: the agent must first turn back to see the cue.

For each run folder written by ``train.py`` (its model loaded with the run's own settings), plays
``--episodes`` deterministic evaluation episodes (episode ``i`` on env seed ``--seed`` + i; training
and its evaluations use other seeds, though ``MemoryS7`` has only a few layouts) and prints the success rate (the matching object reached) for each start cell and for
each kind of first view.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from faithfulness import SIDE_BY_SIDE, add_run_arguments, load_run
from stable_baselines3.common.vec_env import VecEnv

from agents.build import make_vec
from agents.cli import OneLineParser
from agents.config import ConfigError

VIEWS = ("cue and end objects", "cue only", "end objects only", "neither")


def first_view(env: VecEnv, index: int) -> tuple[int, str]:
    """The start cell's column and what the first observation shows, for the episode env ``index`` starts now."""
    x = int(env.get_attr("agent_pos", [index])[0][0])
    height = int(env.get_attr("height", [index])[0])
    end = int(env.get_attr("success_pos", [index])[0][0])  # the end objects' column

    def sees(cell: tuple[int, int]) -> bool:
        return bool(env.env_method("agent_sees", *cell, indices=[index])[0])

    cue = sees((1, height // 2 - 1))
    ends = sees((end, height // 2 - 2)) and sees((end, height // 2 + 2))
    return x, VIEWS[0] if cue and ends else VIEWS[1] if cue else VIEWS[2] if ends else VIEWS[3]


def play(folder: Path, episodes: int, seed: int, which: str) -> list[tuple[int, str, bool]]:
    """(start column, first view, success) for each of ``episodes`` deterministic episodes; episode ``i`` has
    seed ``seed + i`` (the envs play them ``SIDE_BY_SIDE`` at a time, each its first episode after a seeded reset)."""
    plan, model, _ = load_run(folder, which)
    if "MiniGrid-Memory" not in plan.config.env:
        raise ConfigError(f"run {str(folder)!r} is invalid: its env {plan.config.env} is not a MiniGrid Memory env")
    reads_reward = getattr(model.policy, "include_reward", False)  # a memory that reads rewards gets them
    n_envs = min(episodes, SIDE_BY_SIDE)
    env = make_vec(plan, n_envs, seed, evaluation=True)  # evaluation envs pay the env's own rewards
    played: list[tuple[int, str, bool]] = []
    for first in range(0, episodes, n_envs):
        env.seed(seed + first)
        obs = env.reset()
        batch = min(n_envs, episodes - first)
        starts = [first_view(env, i) for i in range(batch)]
        ended: list[bool | None] = [None] * batch
        state, episode_start, rewards = None, np.ones(n_envs, dtype=bool), np.zeros(n_envs, dtype=np.float32)
        while any(e is None for e in ended):
            paid = {"reward": rewards} if reads_reward else {}
            actions, state = model.predict(obs, state=state, episode_start=episode_start, deterministic=True, **paid)  # type: ignore[arg-type]
            obs, rewards, episode_start, infos = env.step(actions)
            for i in np.flatnonzero(episode_start[:batch]):
                if ended[i] is None:  # the matching object pays > 0; the other object and a time-out pay 0
                    ended[i] = bool(infos[i]["episode"]["r"] > 0)
        played += [(x, view, bool(success)) for (x, view), success in zip(starts, ended, strict=True)]
    env.close()
    return played


def report(folder: Path, played: list[tuple[int, str, bool]]) -> None:
    print(f"{folder}: {len(played)} episodes, success {np.mean([s for _, _, s in played]):.2f}")
    for label, key in (("start column", 0), ("first view", 1)):
        groups: dict[object, list[bool]] = defaultdict(list)
        for episode in played:
            groups[episode[key]].append(episode[2])
        order = sorted(groups) if key == 0 else [v for v in VIEWS if v in groups]
        cells = [f"{value}: {np.mean(groups[value]):.2f} ({len(groups[value])})" for value in order]
        print(f"  by {label}: " + ", ".join(cells))


def main() -> int:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, 400, "evaluation episodes per run", "final")
    args = parser.parse_args()
    if args.episodes < 1:
        parser.error(f"--episodes {args.episodes} is invalid: must be >= 1")
    try:
        for folder in args.runs:
            report(folder, play(folder, args.episodes, args.seed, args.model))
    except ConfigError as error:
        print(f"minigrid_starts.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
