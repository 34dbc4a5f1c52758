"""Property tests over every registered env: checkers, determinism, fresh arrays, oracle, memory need.
T-Maze specifics follow; the visual-search envs have their own in test_visual_search.py."""

import itertools

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from envs.glimpse import GlimpseSearchEnv, worst_case_steps
from envs.tmaze import LEFT, RIGHT, UP

TMAZE_IDS = [env_id for env_id in envs.ENV_IDS if "TMaze" in env_id]


def play(env, policy, seed):
    obs, info = env.reset(seed=seed)
    total, infos = 0.0, [info]
    while True:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        total += reward
        infos.append(info)
        if terminated or truncated:
            return total, infos


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_env_checkers(env_id):
    gym_check_env(gym.make(env_id).unwrapped, skip_render_check=False)
    sb3_check_env(gym.make(env_id), warn=True)


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_seeded_episodes_repeat(env_id):
    def rollout(seed):
        env = gym.make(env_id)
        env.action_space.seed(seed)
        obs, _ = env.reset(seed=seed)
        trace = [obs]
        for _ in range(50):
            obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            trace += [obs, reward]
            if terminated or truncated:
                trace.append(env.reset()[0])
        return trace

    for a, b in zip(rollout(3), rollout(3), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_ground_truth_is_randomised_across_seeds(env_id):
    key = "goal" if env_id in TMAZE_IDS else "target_cell"
    truths = {gym.make(env_id).reset(seed=seed)[1][key] for seed in range(20)}
    if key == "goal":
        assert truths == {0, 1}
    else:
        assert len(truths) >= 8


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_observations_are_fresh_arrays(env_id):
    env = gym.make(env_id)
    first, _ = env.reset(seed=0)
    kept = first.copy()
    second, *_ = env.step(0)
    assert not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, kept)


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_oracle_scores_the_maximum(env_id):
    env = gym.make(env_id)
    oracle = envs.oracle_for(env)
    for seed in range(10):
        oracle.reset()
        total, infos = play(env, oracle.act, seed)
        assert total == pytest.approx(1.0)
        assert infos[-1]["is_success"] is True
        unwrapped = env.unwrapped
        if isinstance(unwrapped, GlimpseSearchEnv):
            assert len(infos) - 1 <= worst_case_steps(unwrapped.grid, unwrapped.glimpse)
        else:
            assert len(infos) - 1 == unwrapped.shortest_episode


@pytest.mark.parametrize("env_id", ["rlattn/TMaze-v0", "rlattn/TMazeActive-v0"])
def test_no_memoryless_policy_beats_chance(env_id):
    """All 4^4 deterministic maps from the four distinct observations to actions: none does better than a coin."""
    env = gym.make(env_id, corridor_length=3)
    observations = [(1, 0, 0), (0, 1, 0), (0, 0, 0), (0, 0, 1)]
    best = 0.0
    for actions in itertools.product(range(4), repeat=4):
        table = dict(zip(observations, actions, strict=True))
        wins = [
            play(env, lambda obs, t=table: t[tuple(int(v) for v in obs)], seed)[1][-1]["is_success"]
            for seed in range(60)
        ]
        best = max(best, float(np.mean(wins)))
    assert 0.4 < best < 0.7


def test_junction_observation_hides_the_goal():
    env = gym.make("rlattn/TMaze-v0", corridor_length=3)
    seen = {}
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        for _ in range(3):
            obs, *_ = env.step(RIGHT)
        seen.setdefault(info["goal"], obs)
    np.testing.assert_array_equal(seen[0], seen[1])


def test_penalties_add_up_to_at_most_minus_one():
    env = gym.make("rlattn/TMaze-v0", corridor_length=5, slack=3)
    total, infos = play(env, lambda obs: LEFT, seed=0)
    assert total == -env.unwrapped.max_steps * env.unwrapped.step_penalty and -1.0 <= total < -0.5
    assert infos[-1]["is_success"] is False and len(infos) - 1 == env.unwrapped.max_steps


def test_cue_step_is_ground_truth():
    passive = gym.make("rlattn/TMaze-v0")
    assert passive.reset(seed=0)[1]["cue_step"] == 0
    active = gym.make("rlattn/TMazeActive-v0")
    _, info = active.reset(seed=0)
    assert info["cue_step"] == -1
    obs, reward, *_, info = active.step(LEFT)
    assert info["cue_step"] == 1 and obs[info["goal"]] == 1.0 and reward == 0.0


def test_long_corridor():
    env = gym.make("rlattn/TMaze-v0", corridor_length=10_000)
    oracle = envs.oracle_for(env)
    total, infos = play(env, oracle.act, seed=1)
    assert total == pytest.approx(1.0) and len(infos) == 10_002


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"corridor_length": 0}, "corridor_length=0"),
        ({"corridor_length": -5}, "corridor_length=-5"),
        ({"corridor_length": 2.5}, "corridor_length=2.5"),
        ({"corridor_length": True}, "corridor_length=True"),
        ({"corridor_length": 10**9}, "corridor_length=1000000000"),
        ({"slack": -1}, "slack=-1"),
        ({"min_corridor_length": 0}, "min_corridor_length=0"),
        ({"corridor_length": 10, "min_corridor_length": 11}, "min_corridor_length=11"),
        ({"render_mode": "video"}, "render_mode='video'"),
    ],
)
def test_bad_kwargs_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gym.make("rlattn/TMaze-v0", **kwargs)


def test_make_with_module_prefix_registers_ids():
    assert gym.make("envs:rlattn/TMazeActive-L30-v0").unwrapped.corridor_length == 30


@pytest.mark.parametrize("length", [1, 10, 20, 99, 1000, 2047, 9999])
def test_all_penalty_episode_is_never_below_minus_one(length):
    env = gym.make("rlattn/TMaze-v0", corridor_length=length)
    total, _ = play(env, lambda obs: LEFT, seed=0)
    assert -1.0 <= total < -0.5


@pytest.mark.parametrize("env_id", ["rlattn/TMaze-v0", "rlattn/TMazeActive-v0"])
def test_mixed_corridor_lengths_are_log_uniform_and_solvable(env_id):
    env = gym.make(env_id, corridor_length=200, min_corridor_length=2, slack=3)
    maze = env.unwrapped
    longest_steps, space = maze.max_steps, env.observation_space
    lengths = []
    for seed in range(300):
        oracle = envs.oracle_for(env)
        total, infos = play(env, oracle.act, seed=seed)
        lengths.append(maze.corridor_length)
        assert total == pytest.approx(1.0) and len(infos) - 1 == maze.shortest_episode
    assert min(lengths) >= 2 and max(lengths) <= 200 and len(set(lengths)) > 50
    assert np.median(lengths) < 40  # log-uniform: the median is near sqrt(2 * 200) = 20, not 100
    assert maze.max_steps == longest_steps and env.observation_space == space  # sized for the longest


def corridor_lengths(length_exponent, episodes=4000, longest=10_000, shortest=2):
    env = gym.make(
        "rlattn/TMaze-v0", corridor_length=longest, min_corridor_length=shortest, length_exponent=length_exponent
    )
    env.reset(seed=0)
    lengths = []
    for _ in range(episodes):
        env.reset()
        lengths.append(env.unwrapped.corridor_length)
    return np.array(lengths)


@pytest.mark.parametrize("length_exponent", [0.0, 0.5, 1.0, 1.5, 2.5])
def test_length_exponent_draws_lengths_with_that_power_law(length_exponent):
    """The share of corridors at most x long follows the CDF of density ~ length ** -a on [2, 10001)."""
    lengths = corridor_lengths(length_exponent)
    assert lengths.min() >= 2 and lengths.max() <= 10_000
    low, high = 2.0, 10_001.0
    for x in (31, 300, 3000):
        edge = x + 1.0  # int() rounds down: length <= x means a draw below x + 1
        if length_exponent == 1.0:
            expected = np.log(edge / low) / np.log(high / low)
        else:
            p = 1.0 - length_exponent
            expected = (edge**p - low**p) / (high**p - low**p)
        assert np.mean(lengths <= x) == pytest.approx(expected, abs=0.03)


def test_a_larger_length_exponent_gives_shorter_episodes():
    means = [corridor_lengths(a, episodes=2000).mean() for a in (0.0, 1.0, 1.5)]
    assert means[0] > 4000 and 900 < means[1] < 1500 and means[2] < 250


def test_length_exponent_keeps_the_maze_sized_for_the_longest_and_solvable():
    env = gym.make("rlattn/TMaze-v0", corridor_length=300, min_corridor_length=2, slack=5, length_exponent=1.5)
    longest_steps, space = env.unwrapped.max_steps, env.observation_space
    for seed in range(50):
        total, infos = play(env, envs.oracle_for(env).act, seed=seed)
        assert total == pytest.approx(1.0) and len(infos) - 1 == env.unwrapped.shortest_episode
    assert env.unwrapped.max_steps == longest_steps and env.observation_space == space


@pytest.mark.parametrize("length_exponent", [-0.1, 3.5, "1", None, float("nan")])
def test_bad_length_exponent_names_the_value(length_exponent):
    with pytest.raises(ValueError, match=r"^length_exponent=.* is invalid: must be a number from 0 to 3$"):
        gym.make("rlattn/TMaze-v0", length_exponent=length_exponent)


def test_mixed_lengths_time_out_after_their_own_episode():
    env = gym.make("rlattn/TMaze-v0", corridor_length=100, min_corridor_length=5, slack=2)
    for seed in range(5):
        total, infos = play(env, lambda obs: LEFT, seed=seed)
        assert len(infos) - 1 == env.unwrapped.corridor_length + 1 + 2 and infos[-1]["is_success"] is False
        assert -1.0 <= total < 0.0


NOISES = [0.3, 0.9, 1.0]


@pytest.mark.parametrize("env_id", TMAZE_IDS)
@pytest.mark.parametrize("noise", NOISES)
def test_noisy_maze_oracle_scores_the_maximum(env_id, noise):
    env = gym.make(env_id, noise=noise)
    gym_check_env(env.unwrapped)
    oracle = envs.oracle_for(env)
    for seed in range(10):
        oracle.reset()
        total, infos = play(env, oracle.act, seed)
        assert total == pytest.approx(1.0) and infos[-1]["is_success"] is True
        assert len(infos) - 1 == env.unwrapped.shortest_episode


@pytest.mark.parametrize("env_id", ["rlattn/TMaze-v0", "rlattn/TMazeActive-v0"])
def test_noise_changes_the_corridor_but_not_the_cue(env_id):
    """Same seed, with and without noise: the same goal and cue; corridor steps differ, below the cue's 1."""
    oracle_env = gym.make(env_id, corridor_length=6)
    for seed in range(5):
        clean, noisy = gym.make(env_id, corridor_length=6), gym.make(env_id, corridor_length=6, noise=0.5)
        oracle = envs.oracle_for(oracle_env)
        actions = []
        obs, info = oracle_env.reset(seed=seed)
        done = False
        while not done:
            actions.append(oracle.act(obs))
            obs, _, done, _, _ = oracle_env.step(actions[-1])
        steps = [
            list(zip(*trace, strict=True)) for trace in (replay(clean, seed, actions), replay(noisy, seed, actions))
        ]
        (clean_obs, clean_infos), (noisy_obs, noisy_infos) = steps
        cue = noisy_infos[-1]["cue_step"]
        assert cue == clean_infos[-1]["cue_step"] >= 0 and noisy_infos[-1]["goal"] == clean_infos[-1]["goal"]
        np.testing.assert_array_equal(noisy_obs[cue], clean_obs[cue])  # the cue itself is clean
        corridor = [t for t in range(len(noisy_obs)) if t != cue]
        assert all(not np.array_equal(noisy_obs[t], clean_obs[t]) for t in corridor)
        assert all(noisy_obs[t][:2].max() < 1.0 and noisy_obs[t][2] == clean_obs[t][2] for t in corridor)


def replay(env, seed, actions):
    """The (observation, info) of every step of ``actions`` played from ``reset(seed)``."""
    trace = [env.reset(seed=seed)]
    for action in actions:
        obs, _, _, _, info = env.step(action)
        trace.append((obs, info))
    return trace


@pytest.mark.parametrize("env_id", ["rlattn/TMaze-v0", "rlattn/TMazeActive-v0"])
def test_noisy_maze_no_memoryless_policy_beats_chance(env_id):
    """Every map from what one noisy step shows (cue up, cue down, a distractor; junction or not) to actions."""
    env = gym.make(env_id, corridor_length=3, noise=0.9)

    def seen(obs):
        return (int(obs[0] >= 1.0), int(obs[1] >= 1.0), int(obs[2]))

    observations = [(1, 0, 0), (0, 1, 0), (0, 0, 0), (0, 0, 1)]
    best = 0.0
    for actions in itertools.product(range(4), repeat=4):
        table = dict(zip(observations, actions, strict=True))
        wins = [play(env, lambda obs, t=table: t[seen(obs)], seed)[1][-1]["is_success"] for seed in range(60)]
        best = max(best, float(np.mean(wins)))
    assert 0.4 < best < 0.7


def test_noisy_junction_says_nothing_about_the_goal():
    """The junction's distractors are drawn independently of the goal: their means match across goals."""
    env = gym.make("rlattn/TMaze-v0", corridor_length=2, noise=1.0)
    seen: dict[int, list] = {0: [], 1: []}
    for seed in range(400):
        obs, info = env.reset(seed=seed)
        for _ in range(2):
            obs, *_ = env.step(RIGHT)
        seen[info["goal"]].append(obs)
    means = {goal: np.mean(found, axis=0) for goal, found in seen.items()}
    np.testing.assert_allclose(means[0], means[1], atol=0.08)
    assert all(np.asarray(found)[:, :2].max() < 1.0 for found in seen.values())


@pytest.mark.parametrize("noise", [-0.1, 1.5, float("nan"), "0.5", True, None])
def test_bad_noise_names_the_value(noise):
    with pytest.raises(ValueError, match=r"^noise=.* is invalid: must be a number from 0 to 1$"):
        gym.make("rlattn/TMaze-v0", noise=noise)


def test_zero_noise_is_the_plain_maze():
    plain, zero = gym.make("rlattn/TMaze-v0"), gym.make("rlattn/TMaze-v0", noise=0)
    for env in (plain, zero):
        env.reset(seed=3)
    for _ in range(5):
        np.testing.assert_array_equal(plain.step(RIGHT)[0], zero.step(RIGHT)[0])


def time_limits(env, episodes, seed=0):
    """Steps each episode lasts when the agent only bumps into walls (it always runs out of time)."""
    lengths = []
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        steps, done = 0, False
        while not done:
            _, _, terminated, truncated, _ = env.step(UP)
            steps, done = steps + 1, terminated or truncated
        lengths.append(steps)
    return np.array(lengths)


def test_tight_fraction_takes_the_slack_from_that_share_of_episodes():
    env = gym.make("rlattn/TMaze-v0", corridor_length=5, slack=4, tight_fraction=0.3)
    lengths = time_limits(env, 400)
    assert set(lengths) == {6, 10}  # a shortest episode, or with the slack
    assert 0.22 < np.mean(lengths == 6) < 0.38
    assert env.unwrapped.max_steps == 10  # spaces and the step penalty stay those with slack
    assert (time_limits(gym.make("rlattn/TMaze-v0", corridor_length=5, slack=4, tight_fraction=1.0), 20) == 6).all()


def test_no_tight_fraction_is_the_maze_as_before():
    """0 draws nothing: seeded episodes (goal, corridor length) are those of a maze without the keyword."""
    kwargs = {"corridor_length": 40, "slack": 4, "min_corridor_length": 3}
    before, zero = gym.make("rlattn/TMaze-v0", **kwargs), gym.make("rlattn/TMaze-v0", tight_fraction=0, **kwargs)
    for seed in range(10):
        assert before.reset(seed=seed)[1] == zero.reset(seed=seed)[1]
        assert before.unwrapped.corridor_length == zero.unwrapped.corridor_length
    np.testing.assert_array_equal(time_limits(before, 10), time_limits(zero, 10))


@pytest.mark.parametrize("tight_fraction", [-0.5, 1.01, "1", None])
def test_bad_tight_fraction_names_the_value(tight_fraction):
    with pytest.raises(ValueError, match=r"^tight_fraction=.* is invalid: must be a number from 0 to 1$"):
        gym.make("rlattn/TMaze-v0", tight_fraction=tight_fraction)


def walk_to_junction(env, seed=0):
    env.reset(seed=seed)
    for _ in range(env.unwrapped.corridor_length):
        env.step(RIGHT)


@pytest.mark.parametrize("wait", [0, 2])
def test_junction_wait_ends_an_episode_that_hesitates_there(wait):
    env = gym.make("rlattn/TMaze-v0", corridor_length=4, slack=10, junction_wait=wait)
    walk_to_junction(env)
    for _ in range(wait):
        assert not env.step(RIGHT)[2]  # waiting this long is allowed
    _, _, terminated, _, info = env.step(RIGHT)
    assert terminated and info["is_success"] is False
    walk_to_junction(env, seed=1)  # turning in time still ends it as usual
    for _ in range(wait):
        env.step(RIGHT)
    _, reward, terminated, _, info = env.step(UP + env.unwrapped._goal)
    assert terminated and info["is_success"] and reward == 1.0


def test_without_junction_wait_the_time_limit_alone_ends_a_wait():
    env = gym.make("rlattn/TMaze-v0", corridor_length=4, slack=10)
    walk_to_junction(env)
    for _ in range(10):
        assert not env.step(RIGHT)[2]
    assert env.step(RIGHT)[2]


@pytest.mark.parametrize("wait", [-1, 1.5, "0"])
def test_bad_junction_wait_names_the_value(wait):
    with pytest.raises(ValueError, match=r"^junction_wait=.* is invalid"):
        gym.make("rlattn/TMaze-v0", junction_wait=wait)


def bump_returns(env, episodes, seed=0):
    """(time limit, return) of episodes where the agent only bumps into walls: every step is penalised."""
    lengths = time_limits(env, episodes, seed)
    returns = []
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(UP)
            total, done = total + reward, terminated or truncated
        returns.append(total)
    return lengths, np.array(returns)


@pytest.mark.parametrize("env_id", ["rlattn/TMaze-v0", "rlattn/TMazeActive-v0"])
def test_episode_penalty_scales_each_episode_penalty_to_its_own_time_limit(env_id):
    kwargs = {"corridor_length": 200, "slack": 20, "min_corridor_length": 2, "tight_fraction": 0.5}
    env = gym.make(env_id, episode_penalty=True, **kwargs)
    lengths, returns = bump_returns(env, 60)
    assert lengths.min() < 10 and lengths.max() > 100  # short and long episodes both drawn
    penalties = -returns / lengths
    np.testing.assert_array_equal(penalties, 2.0 ** -np.ceil(np.log2(lengths)))  # a power of two, <= 1 / limit
    assert (returns >= -1.0).all() and (returns < -0.5).all()  # an all-penalty episode costs between 1/2 and 1
    longest = env.unwrapped.step_penalty
    assert longest == 2.0**-8 and penalties.min() == longest  # the attribute stays the longest corridor's
    # without it every episode pays the longest corridor's penalty, and seeded episodes are the same
    plain_lengths, plain_returns = bump_returns(gym.make(env_id, **kwargs), 60)
    np.testing.assert_array_equal(plain_lengths, lengths)
    np.testing.assert_array_equal(-plain_returns / plain_lengths, longest)


@pytest.mark.parametrize("env_id", ["rlattn/TMaze-v0", "rlattn/TMazeActive-v0"])
def test_episode_penalty_is_the_same_on_the_plain_maze(env_id):
    kwargs = {"corridor_length": 30, "slack": 3}
    with_it, without = (gym.make(env_id, episode_penalty=flag, **kwargs) for flag in (True, False))
    np.testing.assert_array_equal(bump_returns(with_it, 3)[1], bump_returns(without, 3)[1])


@pytest.mark.parametrize("value", [1, "True", None])
def test_bad_episode_penalty_names_the_value(value):
    with pytest.raises(ValueError, match=r"^episode_penalty=.* is invalid: must be True or False$"):
        gym.make("rlattn/TMaze-v0", episode_penalty=value)
