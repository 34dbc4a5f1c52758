"""Visual search, cued visual search and glimpse search: pixels against a plain reference drawing,
the distractor rules, the cue's memory demand, the glimpse window, oracles and keyword errors."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from envs.glimpse import DECLARE, DOWN, LEFT, RIGHT, UNSEEN, UP, worst_case_steps
from envs.visual_search import PALETTE, TARGET, shape_masks

SEARCH_IDS = [env_id for env_id in envs.ENV_IDS if "Search" in env_id]
ONE_LOOK_IDS = ["rlattn/VisualSearch-v0", "rlattn/VisualSearchConjunction-v0"]


def reference_scene(env):
    """The display drawn item by item with plain loops (the env draws all items in one assignment)."""
    search, display = env.unwrapped, env.unwrapped.display
    image = np.zeros(env.observation_space.shape, np.uint8)
    for cell, colour, shape in search.items:
        row, col = divmod(cell, search.grid)
        y, x = display.offset + row * display.cell, display.offset + col * display.cell
        image[:, y : y + display.cell, x : x + display.cell] = display.sprites[colour, shape]
    return image


def play(env, policy, seed):
    obs, info = env.reset(seed=seed)
    total, infos = 0.0, [info]
    while True:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        total, infos = total + reward, infos + [info]
        if terminated or truncated:
            return total, infos


def test_sprites_are_distinct_and_leave_a_margin():
    assert PALETTE.max() <= 230 and len({tuple(c) for c in PALETTE.tolist()}) == 4
    for cell in range(4, 33):
        masks = shape_masks(cell)
        assert len({m.tobytes() for m in masks}) == 4
        assert not masks[:, -1].any() and not masks[:, :, -1].any()
    sprites = gym.make("rlattn/VisualSearch-v0").unwrapped.display.sprites
    assert sprites.shape == (4, 4, 3, 8, 8) and not sprites.flags.writeable
    np.testing.assert_array_equal(sprites[0, 0][:, :7, :7], np.broadcast_to(PALETTE[0][:, None, None], (3, 7, 7)))


@pytest.mark.parametrize("env_id", ONE_LOOK_IDS)
@pytest.mark.parametrize("image_size, grid", [(64, 8), (67, 8), (16, 4), (100, 7)])
def test_display_matches_the_reference_drawing_and_the_target_cell(env_id, image_size, grid):
    env = gym.make(env_id, image_size=image_size, grid=grid, set_size=min(16, grid * grid))
    for seed in range(5):
        obs, info = env.reset(seed=seed)
        items = env.unwrapped.items
        np.testing.assert_array_equal(obs, reference_scene(env))
        assert len({cell for cell, _, _ in items}) == len(items) == env.unwrapped.set_size
        assert items[0] == (info["target_cell"], *TARGET) and type(info["target_cell"]) is int
        top, left, bottom, right = info["target_box"]
        np.testing.assert_array_equal(obs[:, top:bottom, left:right], env.unwrapped.display.sprites[TARGET])
        final, reward, terminated, truncated, final_info = env.step(info["target_cell"])
        np.testing.assert_array_equal(final, obs)
        assert (reward, terminated, truncated, final_info["is_success"]) == (1.0, True, False, True)


def test_feature_and_conjunction_distractor_rules():
    feature, conjunction = gym.make(ONE_LOOK_IDS[0]), gym.make(ONE_LOOK_IDS[1])
    shared = []
    for seed in range(20):
        feature.reset(seed=seed)
        assert all(colour != 0 and shape == 0 for _, colour, shape in feature.unwrapped.items[1:])
        conjunction.reset(seed=seed)
        for _, colour, shape in conjunction.unwrapped.items[1:]:
            assert (colour == 0) != (shape == 0)
            shared.append(colour == 0)
    assert 0.35 < np.mean(shared) < 0.65


def test_noise_is_uniform_saturating_and_seeded():
    env = gym.make("rlattn/VisualSearch-v0", noise=32)
    obs, _ = env.reset(seed=0)
    clean = reference_scene(env).astype(int)
    added = obs.astype(int) - clean
    assert added.min() == 0 and (added <= 32).all() and (obs <= 255).all()
    assert abs(added[clean < 223].mean() - 16) < 0.5
    np.testing.assert_array_equal(obs, gym.make("rlattn/VisualSearch-v0", noise=32).reset(seed=0)[0])


@pytest.mark.parametrize("env_id", SEARCH_IDS)
@pytest.mark.parametrize("image_size, grid", [(32, 4), (64, 8), (96, 12), (128, 16), (64, 16)])
@pytest.mark.parametrize("noise", [0, 64])
def test_oracle_scores_one_at_any_size_and_noise(env_id, image_size, grid, noise):
    kwargs = {"image_size": image_size, "grid": grid, "noise": noise}
    if "Glimpse" in env_id:
        kwargs["max_steps"] = worst_case_steps(grid, 3)
    env = gym.make(env_id, **kwargs)
    oracle = envs.oracle_for(env)
    for seed in range(8):
        oracle.reset()
        total, infos = play(env, oracle.act, seed)
        assert total == 1.0 and infos[-1]["is_success"] is True


@pytest.mark.parametrize("env_id", SEARCH_IDS)
def test_random_policy_is_far_below_the_oracle(env_id):
    env = gym.make(env_id)
    env.action_space.seed(0)
    wins = [play(env, lambda obs: env.action_space.sample(), seed)[0] for seed in range(300)]
    assert np.mean(wins) < 0.1  # about 1 / grid^2 for a one-look answer


def test_info_holds_the_ground_truth_in_every_step():
    for env_id in SEARCH_IDS:
        env = gym.make(env_id)
        env.action_space.seed(1)
        _, infos = play(env, lambda obs, env=env: env.action_space.sample(), seed=1)
        assert len({info["target_cell"] for info in infos}) == 1  # the target stays where reset put it
        top, left, bottom, right = infos[-1]["target_box"]
        colour, shape = getattr(env.unwrapped, "_target", TARGET)
        scene = reference_scene(env)[:, top:bottom, left:right]  # the box holds the target's picture
        np.testing.assert_array_equal(scene, env.unwrapped.display.sprites[colour, shape])
        assert type(infos[-1]["is_success"]) is bool


def test_cue_blanks_then_display_without_the_cue():
    env = gym.make("rlattn/CuedVisualSearch-v0", delay=3)
    targets = set()
    for seed in range(12):
        cue, info = env.reset(seed=seed)
        cued = env.unwrapped
        targets.add(info["target"])
        assert info["cue_step"] == 0 and cued.items[0] == (info["target_cell"], *info["target"])
        big = cued.display.sprites[info["target"]].repeat(2, axis=1).repeat(2, axis=2)
        np.testing.assert_array_equal(cue[cued.cue_box], big)
        assert cue.sum() == big.sum()  # nothing else on the cue frame
        frames = [env.step(0) for _ in range(4)]
        assert all(not obs.any() and reward == 0.0 and not done for obs, reward, done, *_ in frames[:3])
        display, _, terminated, *_ = frames[3]
        assert not terminated and not np.array_equal(display[cued.cue_box], big)
        np.testing.assert_array_equal(display, reference_scene(env))
        assert all((colour, shape) != info["target"] for _, colour, shape in cued.items[1:])
        *_, terminated, _, last = env.step(info["target_cell"])
        assert terminated and last["is_success"] is True
    assert len(targets) >= 6


def test_cued_display_alone_does_not_identify_the_target():
    """Two episodes with pixel-identical displays and different cues: no memoryless answer fits both."""
    env = gym.make("rlattn/CuedVisualSearch-v0", image_size=16, grid=2, set_size=2, delay=0)
    by_display = {}
    for seed in range(400):
        cue, info = env.reset(seed=seed)
        display, *_ = env.step(0)
        by_display.setdefault(display.tobytes(), {})[info["target"]] = cue
    ambiguous = [cues for cues in by_display.values() if len(cues) > 1]
    assert ambiguous
    first, second = list(ambiguous[0].values())[:2]
    assert not np.array_equal(first, second)


def test_glimpse_shows_only_the_window():
    env = gym.make("rlattn/GlimpseSearch-v0", image_size=67, noise=20)
    obs, info = env.reset(seed=3)
    scene, radius, grid, display = reference_scene(env), 1, 8, env.unwrapped.display
    for action in [UP, UP, LEFT, LEFT, LEFT, DOWN, RIGHT] * 3:
        row, col = divmod(info["cursor"], grid)
        rows = slice(display.offset + max(0, row - radius) * 8, display.offset + (min(grid - 1, row + radius) + 1) * 8)
        cols = slice(display.offset + max(0, col - radius) * 8, display.offset + (min(grid - 1, col + radius) + 1) * 8)
        window = np.zeros(obs.shape, bool)
        window[:, rows, cols] = True
        assert (obs[~window] == UNSEEN).all()
        added = obs[window].astype(int) - scene[window]
        assert added.min() >= 0 and (added <= 20).all()
        obs, _, _, _, info = env.step(action)


def test_glimpse_moves_clip_at_the_edges_and_declare_scores():
    env = gym.make("rlattn/GlimpseSearch-v0", max_steps=100)
    _, info = env.reset(seed=0)
    for action, expected in [(UP, 0), (LEFT, 0), (DOWN, 7), (RIGHT, 7)]:
        for _ in range(9):
            _, reward, terminated, _, info = env.step(action)
        axis = 0 if action in (UP, DOWN) else 1
        assert divmod(info["cursor"], 8)[axis] == expected and reward == 0.0 and not terminated
    target = divmod(info["target_cell"], 8)
    while info["cursor"] != info["target_cell"]:
        row, col = divmod(info["cursor"], 8)
        _, _, _, _, info = env.step(
            UP if target[0] < row else DOWN if target[0] > row else LEFT if target[1] < col else RIGHT
        )
    _, reward, terminated, truncated, info = env.step(DECLARE)
    assert (reward, terminated, truncated, info["is_success"]) == (1.0, True, False, True)
    _, info = env.reset(seed=0)
    assert info["cursor"] != info["target_cell"]
    _, reward, terminated, _, info = env.step(DECLARE)
    assert (reward, terminated, info["is_success"]) == (0.0, True, False)


def test_glimpse_runs_out_of_time_without_success():
    env = gym.make("rlattn/GlimpseSearch-v0", max_steps=5)
    total, infos = play(env, lambda obs: UP, seed=0)
    assert total == 0.0 and len(infos) - 1 == 5 and infos[-1]["is_success"] is False


def test_default_max_steps_covers_the_glimpse_oracle():
    env = gym.make("rlattn/GlimpseSearch-v0")
    bound = worst_case_steps(8, 3)
    assert bound <= env.unwrapped.max_steps
    oracle = envs.oracle_for(env)
    lengths = []
    for seed in range(60):
        oracle.reset()
        total, infos = play(env, oracle.act, seed)
        lengths.append(len(infos) - 1)
        assert total == 1.0
    assert max(lengths) <= bound


def test_glimpse_near_start_puts_the_cursor_a_few_moves_from_the_target():
    """near_start 1: every start 0 .. glimpse moves away, each distance about as often; 0: the plain draw."""
    near = gym.make("rlattn/GlimpseSearch-v0", near_start=1.0)
    distances = []
    for seed in range(800):
        _, info = near.reset(seed=seed)
        (ty, tx), (cy, cx) = divmod(info["target_cell"], 8), divmod(info["cursor"], 8)
        distances.append(abs(ty - cy) + abs(tx - cx))
    counts = np.bincount(distances, minlength=4)
    assert len(counts) == 4 and counts.min() > 150  # 0, 1, 2, 3 moves (glimpse 3), 200 each expected
    plain, unchanged = gym.make("rlattn/GlimpseSearch-v0"), gym.make("rlattn/GlimpseSearch-v0", near_start=0.0)
    far = [plain.reset(seed=s)[1]["cursor"] for s in range(50)]
    assert far == [unchanged.reset(seed=s)[1]["cursor"] for s in range(50)]
    assert sum(abs(c // 8 - t // 8) + abs(c % 8 - t % 8) > 3 for c, t in zip(
        far, [plain.reset(seed=s)[1]["target_cell"] for s in range(50)], strict=True)) > 10  # fmt: skip


@pytest.mark.parametrize(
    "env_id, kwargs, match",
    [
        ("rlattn/VisualSearch-v0", {"grid": 40}, "grid=40 does not fit image_size=64: .* grid <= 16"),
        ("rlattn/VisualSearch-v0", {"grid": 33, "image_size": 256}, "grid=33 is invalid"),
        ("rlattn/VisualSearch-v0", {"set_size": 65}, "set_size=65 does not fit grid=8: .* 64"),
        ("rlattn/VisualSearch-v0", {"set_size": 0}, "set_size=0"),
        ("rlattn/VisualSearch-v0", {"search": "colour"}, "search='colour' is invalid: allowed are 'feature', 'conj"),
        ("rlattn/VisualSearch-v0", {"image_size": 8}, "image_size=8"),
        ("rlattn/VisualSearch-v0", {"image_size": 64.0}, "image_size=64.0"),
        ("rlattn/VisualSearch-v0", {"noise": -1}, "noise=-1"),
        ("rlattn/VisualSearch-v0", {"noise": 129}, "noise=129"),
        ("rlattn/VisualSearch-v0", {"render_mode": "video"}, "render_mode='video'"),
        ("rlattn/CuedVisualSearch-v0", {"delay": -1}, "delay=-1"),
        ("rlattn/CuedVisualSearch-v0", {"set_size": 17, "grid": 4, "image_size": 16}, "set_size=17"),
        ("rlattn/GlimpseSearch-v0", {"glimpse": 4}, "glimpse=4"),
        ("rlattn/GlimpseSearch-v0", {"glimpse": 9}, "glimpse=9 does not fit grid=8"),
        ("rlattn/GlimpseSearch-v0", {"max_steps": 0}, "max_steps=0"),
        ("rlattn/GlimpseSearch-v0", {"near_start": 1.5}, "near_start=1.5 is invalid: must be a number from 0 to 1"),
        ("rlattn/GlimpseSearch-v0", {"search": None}, "search=None"),
    ],
)
def test_bad_kwargs_name_the_value(env_id, kwargs, match):
    with pytest.raises(ValueError, match=match) as error:
        gym.make(env_id, **kwargs)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "env_id, kwargs",
    [
        ("rlattn/VisualSearch-v0", {"image_size": 48, "grid": 6, "set_size": 36, "search": "conjunction", "noise": 16}),
        ("rlattn/CuedVisualSearch-v0", {"image_size": 40, "grid": 5, "set_size": 3, "delay": 0, "noise": 8}),
        ("rlattn/GlimpseSearch-v0", {"image_size": 37, "grid": 5, "set_size": 2, "glimpse": 1, "max_steps": 9}),
    ],
)
def test_env_checkers_with_other_keywords(env_id, kwargs):
    gym_check_env(gym.make(env_id, **kwargs).unwrapped, skip_render_check=False)
    sb3_check_env(gym.make(env_id, **kwargs), warn=True)
    frame = gym.make(env_id, render_mode="rgb_array", **kwargs)
    frame.reset(seed=0)
    image = frame.render()
    size = 256 // kwargs["image_size"] * kwargs["image_size"]
    assert image.dtype == np.uint8 and image.shape == (size, size, 3)
