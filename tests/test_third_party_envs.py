"""train.py on envs this package did not write (MiniGrid's Dict, POPGym's Tuple): every memory path, its defaults."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

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


@pytest.mark.filterwarnings("ignore:observation key 'mission'")
def test_ppo_lstm_encodes_a_wide_step_before_its_lstm_and_hands_a_narrow_one_on():
    """RecurrentPPO's LSTMs see at most 64 numbers a step: MiniGrid's 1,180 go through Linear + ReLU first
    (its update runs the LSTMs step by step, at a cost that grows with their input width); a narrow step,
    with or without the previous action, is SB3's flattening, so those policies are the ones built before."""
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor

    from agents.build import build_model, make_vec
    from rlattn import StepEncoder

    def built(env, **cfg):
        plan = resolve(TrainConfig(algo="ppo_lstm", env=env, verbose=0, seed=3, **cfg))
        venv = make_vec(plan, 2, seed=0)
        policy = build_model(plan, venv).policy
        venv.close()
        return plan, policy

    _, wide = built(MEMORY)
    assert isinstance(wide.features_extractor, StepEncoder) and wide.features_extractor.features_dim == 64
    assert wide.lstm_actor.input_size == 64 and wide.lstm_critic.input_size == 64
    assert isinstance(wide.features_extractor.encode[0], torch.nn.Linear)
    assert wide.features_extractor.encode[0].in_features == wide.observation_space.shape[0] == 1180
    _, wider = built(MEMORY, hyperparams={"features_dim": 128})
    assert wider.lstm_actor.input_size == 128

    # the Active T-Maze's preset adds the previous action: a one-step history, a Dict step
    for env, default in (("rlattn/TMaze-v0", FlattenExtractor), ("rlattn/TMazeActive-v0", CombinedExtractor)):
        plan, narrow = built(env)
        assert isinstance(narrow.features_extractor.encode, torch.nn.Identity)
        venv = make_vec(plan, 1, seed=0)
        kwargs = {**plan.policy_kwargs, "ortho_init": True}
        sb3 = RecurrentPPO(narrow.__class__, venv, seed=3, policy_kwargs=kwargs, device="cpu").policy
        assert isinstance(sb3.features_extractor, default)
        assert narrow.lstm_actor.input_size == sb3.lstm_actor.input_size
        ours, theirs = narrow.state_dict(), sb3.state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # the same policy, weight for weight
        obs, _ = narrow.obs_to_tensor(venv.reset())
        features = narrow.extract_features(obs, narrow.features_extractor)
        assert torch.equal(features, sb3.extract_features(obs, sb3.features_extractor))
        venv.close()


def test_bad_step_width_for_ppo_lstm_is_one_line():
    from agents.config import ConfigError

    with pytest.raises(ConfigError, match=r"features_dim=0 is invalid: must be an integer >= 1"):
        resolve(TrainConfig(algo="ppo_lstm", env="rlattn/TMaze-v0", verbose=0, hyperparams={"features_dim": 0}))


@pytest.mark.filterwarnings("ignore:observation key 'mission'")
def test_minigrid_starts_plays_a_run_and_sorts_episodes_by_their_first_view(tmp_path, capsys, monkeypatch):
    """On MemoryS7 the room's first cell shows the cue and both end objects, every other start the end objects only;
    a run on another env is one line, exit 2."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import minigrid_starts
    from faithfulness import SEED

    args = ["--algo", "ppo_attention", "--env", "minigrid:MiniGrid-MemoryS7-v0", "-n", "128", "--n-envs", "2"]
    args += [
        "-params",
        "n_steps:64",
        "batch_size:64",
        "--eval-freq",
        "-1",
        "-f",
        str(tmp_path / "mg"),
        "--verbose",
        "0",
    ]
    assert main(args) == 0
    (folder,) = (tmp_path / "mg").glob("*/*/")
    played = minigrid_starts.play(folder, 40, SEED, "final")
    assert len(played) == 40
    views = {(e.start, e.view) for e in played}
    assert {x for x, _ in views} <= {1, 2, 3, 4} and len({x for x, _ in views}) >= 3
    assert all(view == ("cue and end objects" if x == 1 else "end objects only") for x, view in views)
    # the memory's attention at a decision (none where the untrained policy ran out of time): a layer of 4 heads
    assert all(e.cue_mass.shape == (1, 4) and 0 < e.cue_share <= 1 for e in played if e.cue_mass is not None)
    assert all(0 <= m <= 1 + 1e-6 for e in played if e.cue_mass is not None for m in e.cue_mass.ravel())
    minigrid_starts.report(folder, played)
    assert "by first view: cue and end objects:" in capsys.readouterr().out

    # a scripted policy that walks to the end and takes the matching object from odd start columns, the other
    # object from even ones: each episode's success must be its own start's
    envs, original = [], minigrid_starts.make_vec

    def make_vec(*args, **kwargs):
        envs.append(original(*args, **kwargs))
        return envs[-1]

    class Scripted:
        """Walks as above, except from the third column: there it walks west into the room (seeing the cue)
        and on into the wall until time runs out. Its "memory" holds the episode's steps newest first (slot
        j the step at position t - j: slots are not positions) and puts all its weight on position 0."""

        policy = None

        def attention_maps(self, state):  # 256 slots: longer than MemoryS7's 245-step episodes
            slots = np.arange(256)[None]
            positions = np.where(slots <= self.t[:, None], self.t[:, None] - slots, -1)
            weights = np.zeros((len(self.t), 1, 1, 256))
            weights[np.arange(len(self.t)), 0, 0, self.t] = 1.0
            return torch.as_tensor(weights), torch.as_tensor(positions)

        def predict(self, obs, state=None, episode_start=None, deterministic=True):
            env, actions = envs[-1], []
            self.t = np.where(episode_start, 0, getattr(self, "t", 0) + 1)
            for i in range(env.num_envs):
                (x, y), heading = env.get_attr("agent_pos", [i])[0], env.get_attr("agent_dir", [i])[0]
                if episode_start[i]:
                    self.odd = getattr(self, "odd", {}) | {i: x % 2 == 1}
                    self.third = getattr(self, "third", {}) | {i: x == 3}
                (end, good) = env.get_attr("success_pos", [i])[0]
                goal = good if self.odd[i] else 2 * y - good  # the failure cell mirrors the success cell
                need = 0 if x < end else (3 if goal < y else 1)  # east, else north or south
                need = 2 if self.third[i] else need  # west, for ever
                actions.append(2 if heading == need else 0 if (heading - need) % 4 == 1 else 1)
            return np.array(actions), state

    load_run = minigrid_starts.load_run

    def load_scripted(folder, which):
        plan, _, path = load_run(folder, which)
        return plan, Scripted(), path

    monkeypatch.setattr(minigrid_starts, "make_vec", make_vec)
    monkeypatch.setattr(minigrid_starts, "load_run", load_scripted)
    scripted = minigrid_starts.play(folder, 40, SEED, "final")
    assert len(scripted) == 40 and {e.start % 2 for e in scripted} == {0, 1}
    assert all(e.success == (e.start % 2 == 1 and e.start != 3) for e in scripted)
    # from the third column the walk saw the cue and ran out of time: no decision, so no attention at one
    thirds = [e for e in scripted if e.start == 3]
    assert thirds and all(e.cue_steps > 0 and e.cue_mass is None and e.cue_share is None for e in thirds)
    # from the first cell the cue shows at step 0 only (the walk east leaves it behind): all the weight is on
    # it, and it is one of the 6 steps in memory at the decision (4 moves east, a turn, the move onto the end)
    firsts = [e for e in scripted if e.start == 1]
    assert firsts and all(e.cue_mass.item() == 1.0 and e.cue_share == pytest.approx(1 / 6) for e in firsts)
    assert all(e.cue_steps == 1 for e in firsts)
    # starting further east, the walk never sees it
    assert all(e.cue_steps == 0 and e.cue_mass is None for e in scripted if e.start in (2, 4))
    minigrid_starts.report(folder, scripted)
    out = capsys.readouterr().out
    assert "attention at the decision on steps that showed the cue" in out
    assert f"successes ({len(firsts)}): 1.00 (evenly spread: 0.17)" in out and "failures (" not in out
    monkeypatch.undo()

    other = [
        "--algo",
        "ppo",
        "--env",
        "CartPole-v1",
        "-n",
        "64",
        "--n-envs",
        "1",
        "-params",
        "n_steps:64",
        "batch_size:64",
    ]
    assert main([*other, "--eval-freq", "-1", "-f", str(tmp_path / "cp"), "--verbose", "0"]) == 0
    (cartpole,) = (tmp_path / "cp").glob("*/*/")
    monkeypatch.setattr("sys.argv", ["minigrid_starts.py", str(cartpole)])
    assert minigrid_starts.main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CartPole-v1 is not a MiniGrid Memory env" in err[0]
