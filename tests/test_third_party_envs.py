"""train.py on envs this package did not write (MiniGrid's Dict, POPGym's Tuple): every memory path, its defaults."""

import json

import gymnasium as gym
import pytest

from agents.cli import main
from agents.config import TrainConfig
from agents.plan import resolve
from agents.presets import EPISODIC_HISTORY_CAP, STATELESS_HISTORY_CAP, default_history

MEMORY = "minigrid:MiniGrid-MemoryS13-v0"  # Dict(direction, image 7x7x3, mission text); episodes of up to 845 steps
AUTOENCODE = "popgym:popgym-AutoencodeEasy-v0"  # Tuple(Discrete(2), Discrete(4)); POPGym's own episode cap


@pytest.mark.filterwarnings("ignore:observation key 'mission'")
@pytest.mark.parametrize(
    "algo, extractor, history",
    [
        ("ppo", "attention", STATELESS_HISTORY_CAP),  # the episode cap, capped: K copies per stored step
        ("ppo", "mlp-stack", STATELESS_HISTORY_CAP),
        ("ppo_attention", None, 845),  # an episodic memory holds the whole episode
        ("ppo_lstm", None, 1),
    ],
)
def test_minigrid_memory_defaults_per_memory_path(algo, extractor, history):
    cfg = TrainConfig(algo=algo, env=MEMORY, extractor=extractor)
    plan = resolve(cfg)
    assert plan.history == history
    assert plan.algo_kwargs["n_steps"] in (32, 128) and plan.algo_kwargs["batch_size"] == 256  # the "*" presets


def test_episode_cap_comes_from_the_env_or_its_time_limit():
    assert default_history(gym.make("CartPole-v1")) == STATELESS_HISTORY_CAP  # TimeLimit 500
    assert default_history(gym.make("CartPole-v1"), "episodic") == 500
    assert default_history(gym.make("CartPole-v1", max_episode_steps=40)) == 40
    assert default_history(gym.make("rlattn/TMaze-v0", corridor_length=300)) == 301  # own envs: whole episodes
    assert default_history(gym.make("MiniGrid-MemoryS13-v0"), "episodic") == min(845, EPISODIC_HISTORY_CAP)


@pytest.mark.filterwarnings("ignore:observation key 'mission'")
@pytest.mark.parametrize("env", [MEMORY, AUTOENCODE])
@pytest.mark.parametrize("algo", [["--algo", "ppo", "--extractor", "attention"], ["--algo", "ppo_attention"]])
def test_trains_and_evaluates_on_third_party_envs(env, algo, tmp_path):
    args = [*algo, "--env", env, "-n", "256", "--n-envs", "2", "-params", "n_steps:64", "batch_size:64"]
    args += ["--history", "16", "--eval-freq", "128", "--eval-episodes", "1", "-f", str(tmp_path), "--verbose", "0"]
    assert main(args) == 0
    (result,) = tmp_path.glob("*/*/result.json")
    record = json.loads(result.read_text())
    assert record["env_steps"] == 256 and record["evaluation"]["episodes"] == 1
