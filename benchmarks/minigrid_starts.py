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
each kind of first view. For a run with an episodic memory (``ppo_attention``) it also prints where the
memory looked at each episode's decision (its last step, the move onto one of the two end cells): the
attention weight of each layer and head on the steps whose observation showed the cue, averaged over
the episodes that saw the cue and reached an end cell, beside the share those steps hold of the memory
(what weights spread evenly would put there), for the successes and the failures apart.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
from faithfulness import SIDE_BY_SIDE, add_run_arguments, load_run
from stable_baselines3.common.vec_env import VecEnv

from agents.build import make_vec
from agents.cli import OneLineParser
from agents.config import ConfigError

VIEWS = ("cue and end objects", "cue only", "end objects only", "neither")


class Episode(NamedTuple):
    start: int
    """the start cell's column"""
    view: str
    """what the first observation shows (one of ``VIEWS``)"""
    success: bool
    """the matching object reached"""
    cue_mass: np.ndarray | None = None
    """(L, H) the memory's attention at the decision on the steps that showed the cue; None without an
    episodic memory, when no step in the memory showed the cue (none did, or they left its window), or
    when the episode ran out of time (no decision)"""
    cue_share: float | None = None
    """the share of the memory's steps at the decision that showed the cue"""
    cue_steps: int = 0
    """how many of the episode's observations showed the cue (counted for an episodic memory only)"""


def sees_cue(env: VecEnv, index: int) -> bool:
    height = int(env.get_attr("height", [index])[0])
    return bool(env.env_method("agent_sees", 1, height // 2 - 1, indices=[index])[0])


def first_view(env: VecEnv, index: int) -> tuple[int, str]:
    """The start cell's column and what the first observation shows, for the episode env ``index`` starts now."""
    x = int(env.get_attr("agent_pos", [index])[0][0])
    height = int(env.get_attr("height", [index])[0])
    end = int(env.get_attr("success_pos", [index])[0][0])  # the end objects' column

    def sees(cell: tuple[int, int]) -> bool:
        return bool(env.env_method("agent_sees", *cell, indices=[index])[0])

    cue = sees_cue(env, index)
    ends = sees((end, height // 2 - 2)) and sees((end, height // 2 + 2))
    return x, VIEWS[0] if cue and ends else VIEWS[1] if cue else VIEWS[2] if ends else VIEWS[3]


def play(folder: Path, episodes: int, seed: int, which: str) -> list[Episode]:
    """The start, first view, success and (with an episodic memory) the attention on the cue at the decision
    of ``episodes`` deterministic episodes; episode ``i`` has seed ``seed + i`` (the envs play them
    ``SIDE_BY_SIDE`` at a time, each its first episode after a seeded reset)."""
    plan, model, _ = load_run(folder, which)
    if "MiniGrid-Memory" not in plan.config.env:
        raise ConfigError(f"run {str(folder)!r} is invalid: its env {plan.config.env} is not a MiniGrid Memory env")
    reads_reward = getattr(model.policy, "include_reward", False)  # a memory that reads rewards gets them
    attends = callable(getattr(model, "attention_maps", None))  # an episodic memory (AttentionPPO)
    n_envs = min(episodes, SIDE_BY_SIDE)
    env = make_vec(plan, n_envs, seed, evaluation=True)  # evaluation envs pay the env's own rewards
    played: list[Episode] = []
    for first in range(0, episodes, n_envs):
        env.seed(seed + first)
        obs = env.reset()
        batch = min(n_envs, episodes - first)
        starts = [first_view(env, i) for i in range(batch)]
        ended: list[bool | None] = [None] * batch
        shown: list[list[int]] = [[] for _ in range(batch)]  # episode positions whose observation showed the cue
        looked: list[tuple[np.ndarray | None, float | None]] = [(None, None)] * batch  # at the latest step
        decided = list(looked)
        t = 0
        state, episode_start, rewards = None, np.ones(n_envs, dtype=bool), np.zeros(n_envs, dtype=np.float32)
        while any(e is None for e in ended):
            playing = [i for i in range(batch) if ended[i] is None]
            if attends:
                shown = [cues + [t] if i in playing and sees_cue(env, i) else cues for i, cues in enumerate(shown)]
            paid = {"reward": rewards} if reads_reward else {}
            actions, state = model.predict(obs, state=state, episode_start=episode_start, deterministic=True, **paid)  # type: ignore[arg-type]
            if attends:
                weights, positions = (a.cpu().numpy() for a in model.attention_maps(state))  # (B, L, H, W), (B, W)
                for i in playing:
                    on_cue = np.isin(positions[i], shown[i]) & (positions[i] >= 0)
                    looked[i] = (
                        (weights[i][..., on_cue].sum(-1), float(on_cue.sum() / (positions[i] >= 0).sum()))
                        if on_cue.any()
                        else (None, None)
                    )
            obs, rewards, episode_start, infos = env.step(actions)
            t += 1
            for i in np.flatnonzero(episode_start[:batch]):
                if ended[i] is None:  # the matching object pays > 0; the other object and a time-out pay 0
                    ended[i] = bool(infos[i]["episode"]["r"] > 0)
                    decided[i] = (None, None) if infos[i].get("TimeLimit.truncated") else looked[i]
        played += [
            Episode(x, view, bool(success), *looked_at, len(cues))
            for (x, view), success, looked_at, cues in zip(starts, ended, decided, shown, strict=True)
        ]
    env.close()
    return played


def report(folder: Path, played: list[Episode]) -> None:
    print(f"{folder}: {len(played)} episodes, success {np.mean([e.success for e in played]):.2f}")
    for label, key in (("start column", "start"), ("first view", "view")):
        groups: dict[object, list[bool]] = defaultdict(list)
        for episode in played:
            groups[getattr(episode, key)].append(episode.success)
        order = sorted(groups) if key == "start" else [v for v in VIEWS if v in groups]
        cells = [f"{value}: {np.mean(groups[value]):.2f} ({len(groups[value])})" for value in order]
        print(f"  by {label}: " + ", ".join(cells))
    seen = [e for e in played if e.cue_mass is not None]
    if not seen:
        return
    print(f"  attention at the decision on steps that showed the cue ({len(seen)} episodes saw it; per layer, heads):")
    for label, success in (("successes", True), ("failures", False)):
        group = [e for e in seen if e.success == success]
        if not group:
            continue
        mass = np.mean([e.cue_mass for e in group], axis=0)  # (L, H)
        layers = "; ".join(" ".join(f"{m:.2f}" for m in row) for row in mass)
        share = np.mean([e.cue_share for e in group])
        print(f"    {label} ({len(group)}): {layers} (evenly spread: {share:.2f})")


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
