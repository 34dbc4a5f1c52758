"""train.py as a user runs it: a tiny real run read back from disk, and bad input as one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.build import build_model, make_vec, resolve
from agents.cli import config_from_args, main
from agents.config import TrainConfig
from agents.runfolder import new_run_folder


class TextObservation(gym.Env):
    """Observes text: no numbers to put in a history (Dict and Tuple of numbers are flattened)."""

    observation_space, action_space = gym.spaces.Text(8), gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return "start", {}

    def step(self, action):
        return "end", 0.0, True, False, {}


gym.register("tests/TextObservation-v0", TextObservation)
gym.register("tests/MissingClass-v0", "tests.test_cli:NoSuchEnv")  # the module imports; the class is not in it
gym.register("tests/MissingModule-v0", "rlattn_no_such_module:Env")
ROOT = Path(__file__).resolve().parents[1]
BUDGET = "-n 512 --n-envs 2 --eval-freq 256".split()
TINY = ["--env-kwargs", "corridor_length:3", *BUDGET, "--eval-episodes", "4", "--save-freq", "256"]


def run_train(args, cwd):
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_tiny_run_writes_the_zoo_layout_and_tensorboard(tmp_path):
    done = run_train(
        ["--algo", "ppo", "--env", "rlattn/TMaze-v0", "--extractor", "attention", "-f", "logs", *TINY], tmp_path
    )
    assert done.returncode == 0, done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith("done: eval success ") and "env steps/s" in summary
    run = tmp_path / "logs" / "ppo" / "rlattn-TMaze-v0_1"
    assert summary.endswith(str(Path("logs/ppo/rlattn-TMaze-v0_1")))
    for name in ("rlattn-TMaze-v0.zip", "best_model.zip", "evaluations.npz", "0.monitor.csv", "rl_model_256_steps.zip"):
        assert (run / name).is_file(), name
    for name in ("args.json", "config.json", "command.txt"):
        assert (run / "rlattn-TMaze-v0" / name).is_file(), name
    evaluations = np.load(run / "evaluations.npz")
    assert evaluations["results"].shape == (2, 4) and evaluations["successes"].shape == (2, 4)

    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in (
        "rollout/success_rate",
        "eval/success_rate",
        "eval/mean_reward",
        "attention/entropy",
        "attention/target_mass",
        "train/loss",
    ):
        assert tag in scalars, tag
    mass = [e.value for e in events.Scalars("attention/target_mass")]
    assert len(mass) == 2 and all(0.0 <= m <= 1.0 for m in mass)
    result = json.loads((run / "result.json").read_text())["evaluation"]
    (final,) = events.Scalars("eval/final_success_rate")  # the final evaluation, as the last line says
    assert final.step == 512 and final.value == pytest.approx(result["success_rate"])
    assert events.Scalars("eval/final_mean_reward")[0].value == pytest.approx(result["mean_return"])
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    heatmap = events.Images("attention/heatmap")
    assert len(heatmap) == 2 and heatmap[-1].width > 0 and heatmap[-1].height > 0


def test_evaluation_runs_on_its_own_env_keywords(tmp_path):
    """Training on corridors of mixed length, evaluating on the longest: every eval episode is 21 steps."""
    mixed = ["--env-kwargs", "corridor_length:20", "min_corridor_length:2", "slack:5"]
    fixed = ["--eval-env-kwargs", "min_corridor_length:None", "slack:0"]
    done = run_train(
        ["--extractor", "attention", "-f", "logs", *mixed, *fixed, *BUDGET, "--eval-episodes", "6"], tmp_path
    )
    assert done.returncode == 0, done.stderr
    run = tmp_path / "logs" / "ppo" / "rlattn-TMaze-v0_1"
    assert (np.load(run / "evaluations.npz")["ep_lengths"] == 21).all()  # the turn or the time-out, both at step 21
    lengths = np.loadtxt(run / "0.monitor.csv", delimiter=",", skiprows=2, usecols=1, ndmin=1)
    assert len(set(lengths.tolist())) > 1  # training episodes vary


def test_a_key_value_flag_given_twice_keeps_both_lists_a_later_key_winning():
    cfg = config_from_args(
        ["-params", "n_steps:64", "batch_size:32", "--env-kwargs", "corridor_length:5"]
        + ["-params", "n_steps:128", "--env-kwargs", "slack:2"]
    )
    assert cfg.hyperparams == {"n_steps": 128, "batch_size": 32}
    assert cfg.env_kwargs == {"corridor_length": 5, "slack": 2}
    assert config_from_args([]).hyperparams == {}


def test_second_run_gets_the_next_folder_and_list_envs(tmp_path):
    for _ in range(2):
        assert run_train(["--extractor", "mlp-stack", "-f", "logs", "--verbose", "0", *TINY], tmp_path).returncode == 0
    assert sorted(p.name for p in (tmp_path / "logs" / "ppo").iterdir()) == ["rlattn-TMaze-v0_1", "rlattn-TMaze-v0_2"]
    listing = run_train(["--list-envs"], tmp_path)
    assert listing.returncode == 0 and "rlattn/TMazeActive-L30-v0" in listing.stdout


BAD_INPUTS = [
    # unknown names
    (["--env", "rlattn/TMaz-v0"], "did you mean rlattn/TMaze-v0"),
    (["--env", "ALE/Pong-v5"], "unknown env 'ALE/Pong-v5'"),
    (["--env", "nosuchmodule:Foo-v0"], "cannot import module 'nosuchmodule'"),
    (["--algo", "sac"], "invalid choice: 'sac'"),
    (["--extractor", "cnnn"], "--extractor 'cnnn' is invalid"),
    (["--vec-env", "ray"], "invalid choice: 'ray'"),
    (["--device", "tpu9"], "--device 'tpu9' is invalid"),
    (["--env-kwargs", "corridor:20"], "--env-kwargs: env keyword 'corridor' is not accepted by rlattn/TMaze-v0"),
    (["-params", "learning_rat:0.1"], "-params key 'learning_rat' is not accepted"),
    (["--extractor", "local-attention", "-params", "attention:'banded'"], "attention='banded' is invalid"),
    # not literals, wrong types
    (["--env-kwargs", "corridor_length:abc"], "corridor_length:abc"),
    (["--env-kwargs", "corridor_length"], "'corridor_length' is invalid: expected key:value"),
    (["--env-kwargs", "corridor_length:2.5"], "corridor_length=2.5 is invalid"),
    (["--seed", "one"], "invalid int value: 'one'"),
    (["--history", "2.5"], "invalid int value: '2.5'"),
    (["-params", "target_kl:'x'"], "target_kl='x' is invalid: must be a number > 0"),
    (["-params", "batch_size:2.5"], "batch_size=2.5 is invalid: must be an integer >= 1"),
    (["-params", "normalize_advantage:'yes'"], "normalize_advantage='yes' is invalid: must be True or False"),
    (["-params", "policy_kwargs:[1]"], "policy_kwargs=[1] is invalid: must be a dict literal"),
    (["-params", "top_k:1.5", "--extractor", "sparse-attention"], "top_k=1.5 is invalid"),
    (["-params", "ent_coef:lin_x"], "ent_coef='lin_x' is invalid: must be lin_ and a number >= 0"),
    (["-params", "learning_rate:lin_-0.1"], "learning_rate='lin_-0.1' is invalid: must be lin_ and a number >= 0"),
    (["-params", "gamma:lin_0.9"], "gamma='lin_0.9' is invalid: a linear schedule (lin_X) is allowed only for"),
    (["-params", "learning_rate:lin_0"], "learning_rate=0.0 is invalid: must be a number > 0"),
    # out of range
    (["--env-kwargs", "corridor_length:0"], "corridor_length=0 is invalid"),
    (["--env-kwargs", "slack:-1"], "slack=-1 is invalid"),
    (["--env-kwargs", "min_corridor_length:11"], "min_corridor_length=11 is invalid"),
    (["--eval-env-kwargs", "min_corridor_length:0"], "--eval-env-kwargs for rlattn/TMaze-v0: min_corridor_length=0"),
    (["--eval-env-kwargs", "corridor:20"], "--eval-env-kwargs: env keyword 'corridor' is not accepted"),
    (["--history", "0"], "--history=0 is invalid"),
    (["-n", "0"], "--n-timesteps=0 is invalid"),
    (["--n-envs", "-2"], "--n-envs=-2 is invalid"),
    (["--eval-episodes", "0"], "--eval-episodes=0 is invalid"),
    (["--eval-freq", "0"], "--eval-freq=0 is invalid"),
    (["--save-freq", "-5"], "--save-freq=-5 is invalid"),
    (["--seed", "-1"], "--seed=-1 is invalid"),
    (["--verbose", "7"], "--verbose=7 is invalid"),
    (["--episodes", "3"], "--episodes is invalid when training: it goes with --replay RUN"),
    (["--video", "run.gif"], "--video is invalid when training: it goes with --replay RUN"),
    (["-params", "learning_rate:-0.001"], "learning_rate=-0.001 is invalid: must be a number > 0"),
    (["-params", "gamma:1.5"], "gamma=1.5 is invalid: must be a number >= 0 and <= 1"),
    (["-params", "n_steps:0"], "n_steps=0 is invalid: must be an integer >= 1"),
    (["--extractor", "sparse-attention", "-params", "top_k:0"], "top_k=0 is invalid"),
    (["--extractor", "attention", "-params", "embed_dim:0"], "embed_dim=0 is invalid"),
    (["-params", "features_dim:0"], "--extractor attention on rlattn/TMaze-v0: features_dim=0 is invalid: must be an"),
    (["--extractor", "mlp-stack", "-params", "features_dim:0"], "features_dim=0 is invalid: must be an integer >= 1"),
    (
        ["--env", "rlattn/VisualSearch-v0", "--extractor", "cnn", "-params", "features_dim:0"],
        "--extractor cnn on rlattn/VisualSearch-v0: features_dim=0 is invalid: must be an integer >= 1",
    ),
    (["--extractor", "local-attention", "-params", "window:100"], "window=100 is invalid"),
    (["--extractor", "attention", "-params", "n_heads:3"], "embed_dim=64 is invalid: must be divisible by n_heads=3"),
    # incompatible combinations
    (["--history", "4", "--extractor", "mlp"], "--history 4 does not go with --extractor mlp"),
    (["--algo", "ppo_lstm", "--extractor", "attention"], "does not go with ppo_lstm"),
    (["--env", "tests/TextObservation-v0"], "--env tests/TextObservation-v0 cannot be given a history"),
    (["--extractor", "attention", "-params", "window:3"], "window=3 is invalid with attention='global'"),
    # images and vectors
    (["--extractor", "cnn"], "--extractor cnn needs image observations"),
    (["--extractor", "patch-attention"], "--extractor patch-attention needs image observations"),
    (
        ["--env", "rlattn/VisualSearch-v0", "--extractor", "attention"],
        "embeds vectors; rlattn/VisualSearch-v0 gives images",
    ),
    (["--env", "rlattn/VisualSearch-v0", "--extractor", "mlp-stack"], "--extractor mlp-stack embeds vectors"),
    (["--env", "rlattn/VisualSearch-v0", "-params", "patch_size:6"], "patch_size=6 does not divide the 64x64 image"),
    (["--env", "rlattn/VisualSearch-v0", "--env-kwargs", "grid:40"], "grid=40 does not fit image_size=64"),
    (["--env", "rlattn/VisualSearch-v0", "--env-kwargs", "set_size:65"], "set_size=65 does not fit grid=8"),
    (["--env", "rlattn/VisualSearch-v0", "--env-kwargs", "search:'colour'"], "search='colour' is invalid"),
    (
        ["--env", "rlattn/VisualSearch-v0", "--extractor", "patch-attention", "--history", "4"],
        "--history 4 does not go with --extractor patch-attention",
    ),
    (["--env", "rlattn/VisualSearch-v0", "--algo", "ppo_lstm", "--extractor", "mlp"], "use cnn"),
    (["--history-inputs", "actions"], "argument --history-inputs: invalid choice: 'actions'"),
    (
        ["--env", "rlattn/VisualSearch-v0", "--extractor", "cnn", "--history-inputs", "action"],
        "--history-inputs action does not go with --extractor cnn, which sees image frames alone",
    ),
    (
        ["--env", "rlattn/VisualSearch-v0", "--algo", "ppo_lstm", "--history-inputs", "reward"],
        "--history-inputs reward does not go with ppo_lstm on images",
    ),
    (
        ["--env", "rlattn/VisualSearch-v0", "--extractor", "cnn", "--env-kwargs", "image_size:32"],
        "--extractor cnn needs images of at least 36x36 pixels",
    ),
    (["--env", "rlattn/CuedVisualSearch-v0", "-params", "readout:'max'"], "readout='max' is invalid"),
    # replay
    (["--replay", "{tmp}/nothing"], "--replay '{tmp}/nothing' is invalid: no such folder or file"),
    (["--replay", "{tmp}/loose"], "holds no run settings"),
    (["--replay", "{tmp}/corrupt.zip"], "cannot read it as a zip"),
    (["--replay", "{tmp}/badconfig"], "cannot read {tmp}/badconfig/rlattn-TMaze-v0/config.json: 'list' object has no"),
    # files and folders
    (["-f", "{tmp}/afile/logs"], "is a file, not a folder"),
    (["-f", "/proc/rlattn-logs"], "cannot write in /proc"),
    (["-tb", "{tmp}/afile"], "-tb"),
    (["-i", "{tmp}/missing.zip"], "no such file"),
    (["-i", "{tmp}/afile"], "not a .zip file"),
    (["-i", "{tmp}/corrupt.zip"], "cannot read it as a zip"),
    (["-i", "{tmp}/other.zip"], "a zip but not a complete SB3 model"),
    (["-i", "{tmp}/loose/model.zip"], "holds no run settings"),
    # tuning (--optimize)
    (["--optimize", "--n-trials", "0"], "--n-trials=0 is invalid"),
    (["--optimize", "--storage", "nosuch://x"], "--storage 'nosuch://x' cannot be opened"),
    (["--optimize", "--storage", "sqlite:///{tmp}/no/such/folder/study.db"], "cannot be opened"),
    (
        ["--optimize", "--search-space", "learning_rat"],
        "--search-space key 'learning_rat' is not searchable for ppo with --extractor attention: allowed are learning_rate",
    ),
    (["--optimize", "--extractor", "mlp", "--search-space", "n_heads"], "'n_heads' is not searchable"),
    (["--optimize", "--search-space", "gamma:0.9:1.5"], "--search-space 'gamma:0.9:1.5' is invalid: gamma=1.5"),
    (["--optimize", "--search-space", "learning_rate:1e-3"], "--search-space 'learning_rate:1e-3' is invalid"),
    (["--optimize", "--search-space", "n_steps:[]"], "--search-space 'n_steps:[]' is invalid"),
    (["--storage", "sqlite:///study.db"], "--storage is only for --optimize"),
    (["--n-trials", "3"], "--n-trials is only for --optimize"),
    (["--objective", "final"], "--objective is only for --optimize"),
    # typed, even at their defaults: what was asked for is refused, not what differs from the default (with a
    # bad --history besides, which is refused later: a run that wrongly accepts the flag stops before training)
    (["--objective", "curve", "--history", "0"], "--objective is only for --optimize: add --optimize, or leave"),
    (["--n-trials", "10", "--history", "0"], "--n-trials is only for --optimize"),
    (["--search-space", "--history", "0"], "--search-space is only for --optimize"),
    (["--study-name", "s", "--history", "0"], "--study-name is only for --optimize"),
    (["--optimize", "--search-space", "n_heads:[3]"], "--search-space can draw n_heads=3, which cannot be built"),
    (
        ["--algo", "ppo_attention", "--optimize", "--search-space", "embed_dim:[36,64]"],
        "--search-space can draw embed_dim=36, which cannot be built",
    ),
    (["--optimize", "--search-space", "embed_dim:1.0:3.5"], "--search-space embed_dim is invalid: it takes integers"),
    (["--algo", "ppo_attention", "-params", "embed_dim:36"], "memory on rlattn/TMaze-v0: embed_dim=36 is invalid"),
    (["--optimize", "--objective", "best"], "argument --objective: invalid choice: 'best'"),
    (["--optimize", "--replay", "{tmp}/loose"], "--optimize does not go with --replay"),
    (["-i", "{tmp}/loose/model.zip", "--eval-episodes", "50"], "--eval-episodes cannot be given when resuming (-i)"),
    (["--replay", "{tmp}/loose", "--seed", "0", "-n", "100000"], "cannot be given when replaying (--replay)"),
    (["-i", "{tmp}/loose/model.zip", "--seed", "0"], "--seed cannot be given when resuming (-i)"),  # typed: counts
    (["--device", "meta"], "--device 'meta' is invalid: allowed are cpu, cuda, cuda:N, mps, auto"),
    (["--device", "cpu:1"], "--device 'cpu:1' is invalid"),
    (["--seed", "4294967296"], "--seed=4294967296 is invalid"),
    (["-params", "stats_window_size:-1"], "-params stats_window_size=-1 is invalid"),
    (["-params", "sde_sample_freq:'x'"], "-params sde_sample_freq='x' is invalid"),
    (["-params", "policy_kwargs:{'foo':1}"], "foo"),
    (
        ["-params", "policy_kwargs:{'features_extractor_kwargs':{'d_model':8}}"],
        "features_extractor_kwargs key 'd_model' is not accepted by ppo with --extractor attention: allowed are",
    ),
    (["-params", "policy_kwargs:{'features_extractor_kwargs':[8]}"], "features_extractor_kwargs=[8] is invalid"),
    (["-params", "policy_kwargs:{'features_extractor_class':'X'}"], "features_extractor_class='X' is invalid"),
    (["--algo", "dqn", "-params", "train_freq:(2,'steps')"], "train_freq=(2, 'steps') is invalid: must be an integer"),
    (["--algo", "dqn", "-params", "train_freq:(0,'step')"], "train_freq=(0, 'step') is invalid"),
    (["--env", "FrozenLake-v1", "--env-kwargs", "map_name:'9x9'"], "--env-kwargs for FrozenLake-v1: KeyError"),
    (["-f", "{tmp}/fileinside"], "is a file, not a folder"),
    (["-tb", "{tmp}/fileinside"], "-tb"),
]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """A plain file, a corrupt zip, a zip that is no model, and a real model outside any run folder."""
    import zipfile

    from stable_baselines3 import PPO

    folder = tmp_path_factory.mktemp("bad")
    (folder / "afile").write_text("not a folder, not a model\n")
    (folder / "fileinside").mkdir()  # a log folder whose ALGO folder is a file
    (folder / "fileinside" / "ppo").write_text("not a folder\n")
    (folder / "corrupt.zip").write_bytes(b"PK\x03\x04 truncated")
    with zipfile.ZipFile(folder / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    (folder / "loose").mkdir()
    settings = folder / "badconfig" / "rlattn-TMaze-v0"  # a run's settings, its config.json valid JSON but no object
    settings.mkdir(parents=True)
    (settings / "args.json").write_text(json.dumps({"env": "rlattn/TMaze-v0", "history_inputs": None}))
    (settings / "config.json").write_text("[1, 2]\n")
    PPO("MlpPolicy", "CartPole-v1", n_steps=64, device="cpu").save(folder / "loose" / "model.zip")
    return folder


@pytest.mark.parametrize("args, expected", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(args, expected, bad_files, tmp_path, capsys):
    args = [a.replace("{tmp}", str(bad_files)) for a in args]
    expected = expected.replace("{tmp}", str(bad_files))
    before = sorted(p.name for p in bad_files.rglob("*"))
    try:
        # a run's own log folder rules -i and --replay (-f with them is itself refused): none given to those
        reruns = any(flag in args for flag in ("-i", "--replay"))
        code = main([*([] if reruns else ["-f", str(tmp_path / "logs")]), *args])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err, err
    assert err.startswith("train.py: error: ")
    assert not (tmp_path / "logs").exists()  # nothing half-written
    assert sorted(p.name for p in bad_files.rglob("*")) == before


def _mujoco_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("mujoco") is not None


@pytest.mark.parametrize(
    "env, expected",
    [
        (
            "tests/MissingClass-v0",
            "'tests.test_cli:NoSuchEnv' cannot be loaded: AttributeError: module 'tests.test_cli'",
        ),
        ("tests/MissingModule-v0", "cannot be loaded: ModuleNotFoundError: No module named 'rlattn_no_such_module'"),
        pytest.param(
            "Hopper-v5",
            "--env Hopper-v5: its entry point 'gymnasium.envs.mujoco.hopper_v5:HopperEnv' cannot be loaded: "
            "DependencyNotInstalled: MuJoCo is not installed",
            marks=pytest.mark.skipif(_mujoco_installed(), reason="MuJoCo is installed here"),
        ),
    ],
)
def test_a_registered_env_whose_entry_point_cannot_be_loaded_is_one_line(env, expected, tmp_path, capsys):
    """Gymnasium's MuJoCo, Box2D and JAX ids without their extra, or an entry point naming what is not there."""
    for flags in ([], ["--eval-env-kwargs", "max_episode_steps:5"]):
        code = main(["--env", env, "-f", str(tmp_path / "logs"), *flags])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and err.startswith("train.py: error: --env "), err
        assert expected in err and "Traceback" not in err, err
    assert not (tmp_path / "logs").exists()


def test_bad_input_table_is_large():
    assert len(BAD_INPUTS) >= 30


SMALL_IMAGES = ["--env-kwargs", "image_size:32", "grid:4", "set_size:3"]
CNN_IMAGES = ["--env-kwargs", "image_size:40", "grid:5", "set_size:3"]


@pytest.mark.parametrize(
    "args",
    [
        ["--algo", "a2c", "--extractor", "local-attention"],
        ["--algo", "ppo", "--extractor", "sparse-attention"],
        ["--algo", "dqn", "--extractor", "attention", "-params", "learning_starts:64", "buffer_size:1000"],
        ["--algo", "ppo_lstm", "-params", "n_steps:64", "batch_size:64"],
        # the previous action and reward with the observation: a one-step history for the LSTM
        ["--algo", "ppo_lstm", "--history-inputs", "action", "reward", "-params", "n_steps:64", "batch_size:64"],
        ["--algo", "ppo", "--extractor", "mlp", "--vec-env", "subproc"],
        [
            "--algo",
            "ppo",
            "--extractor",
            "mlp-stack",
            "--env",
            "CartPole-v1",
            "--history",
            "4",
            "-params",
            "n_steps:64",
        ],
        ["--algo", "ppo", "--extractor", "patch-attention", "--env", "rlattn/VisualSearch-v0", *SMALL_IMAGES],
        ["--algo", "a2c", "--extractor", "patch-attention", "--env", "rlattn/VisualSearch-v0", *SMALL_IMAGES],
        ["--algo", "ppo", "--extractor", "cnn", "--env", "rlattn/VisualSearchConjunction-v0", *CNN_IMAGES],
        [
            "--algo",
            "ppo",
            "--extractor",
            "spatiotemporal-attention",
            "--env",
            "rlattn/CuedVisualSearch-v0",
            *SMALL_IMAGES,
            "delay:1",
        ],
        ["--algo", "ppo", "--extractor", "cnn-stack", "--env", "rlattn/CuedVisualSearch-v0", *CNN_IMAGES, "delay:1"],
        [
            "--algo",
            "ppo",
            "--extractor",
            "spatiotemporal-attention",
            "--env",
            "rlattn/GlimpseSearch-v0",
            *SMALL_IMAGES,
            "--history",
            "4",
        ],
        [
            "--algo",
            "ppo_lstm",
            "--env",
            "rlattn/VisualSearch-v0",
            *CNN_IMAGES,
            "-params",
            "n_steps:64",
            "batch_size:64",
        ],
        [
            "--algo",
            "dqn",
            "--extractor",
            "patch-attention",
            "--env",
            "rlattn/VisualSearch-v0",
            *SMALL_IMAGES,
            "-params",
            "learning_starts:64",
            "buffer_size:1000",
        ],
    ],
    ids=lambda a: " ".join(a[:6]),
)
def test_every_algo_and_extractor_runs(args, tmp_path):
    extra = [] if "--env" in args else ["--env-kwargs", "corridor_length:3"]
    quiet = "-f logs -tb tb --verbose 0 --eval-episodes 2".split()
    done = run_train([*args, *extra, *quiet, *BUDGET], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("done: eval ")
    algo = args[1]
    (run,) = (tmp_path / "logs" / algo).iterdir()
    assert (run / f"{run.name.rsplit('_', 1)[0]}.zip").is_file() and (run / "evaluations.npz").is_file()
    assert list((tmp_path / "tb" / algo / run.name).glob("events.out.tfevents.*"))


def test_mazes_train_on_mixed_lengths_and_evaluate_on_the_plain_maze():
    """T-Maze presets train on corridors L/10 (at most 10) .. L with L/10 slack; evaluation is the env as given."""
    plan = resolve(TrainConfig(env="rlattn/TMaze-L300-v0", verbose=0))
    assert plan.env_kwargs == {"min_corridor_length": 10, "slack": 30} and plan.eval_env_kwargs == {}
    assert plan.history == 331 and plan.n_timesteps == 500_000  # the history holds the longest training episode
    # from L = 1000 on every algorithm trains from corridor 2 (README, "L = 1000 over seeds")
    for algo in ("ppo", "ppo_lstm"):
        long = resolve(TrainConfig(algo=algo, env="rlattn/TMaze-v0", env_kwargs={"corridor_length": 1000}, verbose=0))
        assert long.env_kwargs == {"corridor_length": 1000, "min_corridor_length": 2, "slack": 100}
    short = resolve(TrainConfig(algo="ppo_lstm", env="rlattn/TMaze-v0", verbose=0))
    assert short.env_kwargs == {"min_corridor_length": 1, "slack": 1}

    # the episodic memory from L = 1000 on trains from corridor 2, half its episodes without slack; from
    # L = 10,000 on its training corridors are drawn with more short ones (density ~ length ** -1.5)
    def episodic(length):
        return resolve(
            TrainConfig(algo="ppo_attention", env="rlattn/TMaze-v0", env_kwargs={"corridor_length": length}, verbose=0)
        )

    mixed = {"min_corridor_length": 2, "tight_fraction": 0.5}
    assert episodic(1000).env_kwargs == {"corridor_length": 1000, "slack": 100, **mixed}
    longest = episodic(10_000)
    assert longest.env_kwargs == {"corridor_length": 10_000, "slack": 1000, "length_exponent": 1.5, **mixed}
    assert longest.n_timesteps == 2_000_000 and longest.history == 11_001
    stateless = resolve(TrainConfig(env="rlattn/TMaze-v0", env_kwargs={"corridor_length": 10_000}, verbose=0))
    assert "length_exponent" not in stateless.env_kwargs  # only the episodic memory's preset has it
    # on the active maze from L = 1000 on, each training episode's penalty follows its own time limit
    active_1000 = resolve(
        TrainConfig(algo="ppo_attention", env="rlattn/TMazeActive-v0", env_kwargs={"corridor_length": 1000}, verbose=0)
    )
    assert active_1000.env_kwargs == {"corridor_length": 1000, "slack": 100, "episode_penalty": True, **mixed}
    assert active_1000.eval_env_kwargs == {"corridor_length": 1000}
    assert "episode_penalty" not in episodic(1000).env_kwargs and "episode_penalty" not in longest.env_kwargs
    active_100 = resolve(TrainConfig(algo="ppo_attention", env="rlattn/TMazeActive-L100-v0", verbose=0))
    assert "episode_penalty" not in active_100.env_kwargs
    active = resolve(TrainConfig(env="rlattn/TMazeActive-L30-v0", verbose=0))
    assert active.env_kwargs == {"min_corridor_length": 3, "slack": 3} and active.history == 36
    # any keyword of the user's own, or evaluation keywords, switch it off
    own = resolve(TrainConfig(env="rlattn/TMaze-L300-v0", env_kwargs={"slack": 0}, verbose=0))
    assert own.env_kwargs == own.eval_env_kwargs == {"slack": 0} and own.history == 301
    told = resolve(TrainConfig(env="rlattn/TMaze-L300-v0", eval_env_kwargs={"slack": 0}, verbose=0))
    assert told.env_kwargs == {} and told.eval_env_kwargs == {"slack": 0}
    # other envs have no training-only keywords
    assert resolve(TrainConfig(env="CartPole-v1", verbose=0)).env_kwargs == {}


def test_active_mazes_see_the_previous_action():
    """Active T-Maze presets add the previous action to each step, for every method; passive ones do not."""
    from agents.build import make_vec

    active = resolve(TrainConfig(env="rlattn/TMazeActive-L30-v0", verbose=0))
    assert active.history_inputs == ("action",)
    venv = make_vec(active, 1, seed=0)
    first = venv.reset()
    assert first["action"].shape == (1, 36, 4) and not first["action"].any()  # nothing led to the first step
    after, *_ = venv.step(np.array([1]))  # left, onto the cue
    assert after["action"][0, -1].tolist() == [0.0, 1.0, 0.0, 0.0] and after["obs"][0, -1, :2].sum() == 1.0
    lstm = resolve(TrainConfig(algo="ppo_lstm", env="rlattn/TMazeActive-v0", verbose=0))
    assert lstm.history_inputs == ("action",) and lstm.observation == "history" and lstm.history == 1
    for method in ({}, {"extractor": "mlp-stack"}, {"extractor": "mlp"}, {"algo": "a2c"}, {"algo": "dqn"}):
        assert resolve(TrainConfig(env="rlattn/TMazeActive-v0", verbose=0, **method)).history_inputs == ("action",)
    passive = resolve(TrainConfig(env="rlattn/TMaze-L30-v0", verbose=0))
    assert passive.history_inputs == () and "action" not in make_vec(passive, 1, seed=0).observation_space.spaces
    assert resolve(TrainConfig(algo="ppo_lstm", env="rlattn/TMaze-v0", verbose=0)).observation == "frame"
    # the flag overrides the preset: none at all, or both in a fixed order whatever the order given
    assert resolve(TrainConfig(env="rlattn/TMazeActive-v0", history_inputs=[], verbose=0)).history_inputs == ()
    both = resolve(TrainConfig(env="rlattn/TMaze-v0", history_inputs=["reward", "action", "reward"], verbose=0))
    assert both.history_inputs == ("action", "reward")
    assert set(make_vec(both, 1, seed=0).observation_space.spaces) == {"obs", "action", "reward", "valid"}
    assert resolve(TrainConfig(env="CartPole-v1", verbose=0)).history_inputs == ()


def test_runs_started_together_get_their_own_folders(tmp_path, monkeypatch):
    """Two runs into one log folder: the second lists the folder before the first creates ENV_1."""
    first = new_run_folder(str(tmp_path), "ppo", "rlattn/TMaze-v0")
    calls, listing = [], Path.glob

    def glob(self, pattern):  # the first listing was made before the first run's mkdir
        calls.append(pattern)
        return iter(()) if len(calls) == 1 else listing(self, pattern)

    monkeypatch.setattr(Path, "glob", glob)
    second = new_run_folder(str(tmp_path), "ppo", "rlattn/TMaze-v0")
    assert first.name == "rlattn-TMaze-v0_1" and second.name == "rlattn-TMaze-v0_2" and len(calls) == 2


TAB = ["rollout/ep_rew_mean", "eval/mean_reward", "eval/success_rate"]
FINAL = ["eval/final_mean_reward", "eval/final_success_rate"]


@pytest.mark.parametrize(
    ("env", "algo", "extractor", "eval_freq", "expected"),
    [
        ("rlattn/TMaze-v0", "ppo", "attention", 100, [*TAB, "attention/target_mass", *FINAL]),
        ("CartPole-v1", "ppo", "attention", 100, ["rollout/ep_rew_mean", "eval/mean_reward", FINAL[0]]),
        ("CartPole-v1", "ppo", "attention", -1, ["rollout/ep_rew_mean", FINAL[0]]),
        ("rlattn/VisualSearch-v0", "ppo", "patch-attention", 100, [*TAB, "attention/target_mass", *FINAL]),
        ("rlattn/VisualSearch-v0", "ppo_attention", "patch-attention", 100, [*TAB, "attention/target_mass", *FINAL]),
        ("rlattn/VisualSearch-v0", "ppo_attention", "cnn", 100, [*TAB, *FINAL]),  # no readout over patches
    ],
)
def test_hparams_tab_links_only_the_metrics_the_run_logs(tmp_path, env, algo, extractor, eval_freq, expected):
    """An env without is_success or an attention target gets no column that would stay empty."""
    from agents.build import make_vec
    from agents.callbacks import HParamCallback, run_callbacks

    plan = resolve(TrainConfig(env=env, algo=algo, extractor=extractor, eval_freq=eval_freq, verbose=0))
    eval_env = make_vec(plan, 1, 0, evaluation=True)
    try:
        callbacks = run_callbacks(plan, tmp_path, eval_env, resumed=False)
    finally:
        eval_env.close()
    (hparams,) = [c for c in callbacks if isinstance(c, HParamCallback)]
    assert list(hparams.metrics) == expected
    assert hparams.hparams["env"] == env


def test_a_preset_training_env_switched_off_by_the_users_keywords_is_named_in_a_warning():
    import warnings

    from agents.plan import preflight

    def warned(cfg: TrainConfig) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            preflight(resolve(cfg))
        return [str(w.message) for w in caught if "training-env keywords" in str(w.message)]

    long = {"corridor_length": 100}
    assert warned(TrainConfig(env="rlattn/TMaze-v0", env_kwargs=long, verbose=0)) == []  # the preset's, applied
    (line,) = warned(TrainConfig(env="rlattn/TMaze-v0", env_kwargs=long, eval_env_kwargs={"slack": 0}, verbose=0))
    assert line.startswith("the preset's training-env keywords are off (--eval-env-kwargs is given): ")
    assert "min_corridor_length:" in line and line.endswith("add them to --env-kwargs to train with them")
    (line,) = warned(TrainConfig(env="rlattn/TMaze-v0", env_kwargs={**long, "slack": 3}, verbose=0))
    assert "(--env-kwargs sets slack)" in line
    assert warned(TrainConfig(env="CartPole-v1", verbose=0)) == []  # no preset env keywords
    # the preset applied where its own keywords move the env to a longer family's preset (slack past its cap)
    for length in (44, 45, 48):
        cfg = TrainConfig(
            algo="ppo_attention", env="rlattn/TMaze-v0", env_kwargs={"corridor_length": length}, verbose=0
        )
        assert warned(cfg) == [], length


def test_runs_sharing_one_tensorboard_folder_get_a_tensorboard_run_each(tmp_path):
    """Two -f folders, one -tb: the second run's events go to a folder of its own, and its resume goes on there."""
    tiny = [*TINY, "--save-freq", "256", "--eval-freq", "-1", "-tb", "tb"]
    for logs in ("a", "b"):
        done = run_train(["--extractor", "mlp", "-f", logs, *tiny], tmp_path)
        assert done.returncode == 0, done.stderr
    first, second = tmp_path / "tb" / "ppo" / "rlattn-TMaze-v0_1", tmp_path / "tb" / "ppo" / "rlattn-TMaze-v0_1-2"
    assert len(list(first.glob("events.out.tfevents.*"))) == 1
    assert len(list(second.glob("events.out.tfevents.*"))) == 1
    run_b = tmp_path / "b" / "ppo" / "rlattn-TMaze-v0_1"
    assert (run_b / (run_b / "tensorboard.txt").read_text().strip()).resolve() == second.resolve()
    resumed = run_train(["-i", str(run_b / "rl_model_256_steps.zip"), "-n", "768", "--verbose", "0"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert len(list(second.glob("events.out.tfevents.*"))) == 2 and len(list(first.glob("events.*"))) == 1


def test_the_attention_views_envs_are_closed_when_the_run_ends(tmp_path, monkeypatch):
    from stable_baselines3.common.vec_env import DummyVecEnv

    closed: list[int] = []
    close = DummyVecEnv.close

    def counted(self):
        closed.append(self.num_envs)
        return close(self)

    monkeypatch.setattr(DummyVecEnv, "close", counted)
    assert main(["--extractor", "attention", "-f", str(tmp_path / "logs"), *TINY, "--verbose", "0"]) == 0
    assert 8 in closed  # the 8 side-by-side episodes of the attention views (training: 2 envs, evaluation: 4)


def test_a_run_whose_saved_folders_are_gone_resumes_and_replays_where_it_is(tmp_path):
    """A run folder copied from another machine: its args.json names log and TensorBoard folders this
    machine does not have (and cannot write); -i and --replay work where the run is, from any folder."""
    done = run_train(["--extractor", "mlp", *TINY, "--eval-freq", "-1", "-tb", "tb"], tmp_path)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "logs" / "ppo" / "rlattn-TMaze-v0_1"
    args = run / "rlattn-TMaze-v0" / "args.json"
    saved = json.loads(args.read_text())
    args.write_text(json.dumps({**saved, "log_folder": "/proc/gone/logs", "tensorboard_log": "/proc/gone/tb"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = run_train(["-i", str(run / "rl_model_256_steps.zip"), "-n", "768", "--verbose", "0"], elsewhere)
    assert resumed.returncode == 0, resumed.stderr
    tb = tmp_path / "tb" / "ppo" / "rlattn-TMaze-v0_1"
    assert len(list(tb.glob("events.out.tfevents.*"))) == 2 and not (elsewhere / "tb").exists()
    assert (tb / "progress_until_256.csv").is_file()  # the first part's rows, kept beside the events
    replay = run_train(["--replay", str(run), "--episodes", "1"], elsewhere)
    assert replay.returncode == 0, replay.stderr


def test_replay_checks_its_own_flags_before_playing(tmp_path):
    done = run_train(["--extractor", "mlp", *TINY, "--eval-freq", "-1", "--save-freq", "-1"], tmp_path)
    assert done.returncode == 0, done.stderr
    run = str(tmp_path / "logs" / "ppo" / "rlattn-TMaze-v0_1")
    for flags, expected in (
        (["--seed", "-1"], "--seed=-1 is invalid"),
        (["--verbose", "9"], "--verbose=9 is invalid"),
        (["--video", "/proc/nowhere/replay.gif"], "--video '/proc/nowhere' is invalid: cannot write in /proc"),
    ):
        replay = run_train(["--replay", run, "--episodes", "1", *flags], tmp_path)
        assert replay.returncode == 2, replay.stderr
        (line,) = replay.stderr.strip().splitlines()
        assert expected in line, line
    # a run that crashed has only its crashed model: that is what --replay plays
    folder = Path(run)
    (folder / "rlattn-TMaze-v0.zip").rename(folder / "crashed_model.zip")
    replay = run_train(["--replay", run, "--episodes", "1"], tmp_path)
    assert replay.returncode == 0, replay.stderr
    assert "crashed_model.zip" in replay.stdout


def test_a_budget_below_one_rollout_is_named_in_a_warning():
    import warnings

    from agents.plan import preflight

    for n, warned in ((64, True), (1024, False)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            preflight(resolve(TrainConfig(env="rlattn/TMaze-v0", n_timesteps=n, verbose=0)))
        lines = [str(w.message) for w in caught if "less than one rollout" in str(w.message)]
        assert lines == (
            ["-n 64 is less than one rollout (n_steps 128 x 8 envs = 1024): the run trains 1024 env steps"]
            if warned
            else []
        )


def test_whole_number_floats_for_integer_keywords_are_integers():
    plan = resolve(
        TrainConfig(env="rlattn/TMaze-v0", hyperparams={"n_steps": 64.0, "stats_window_size": 100.0}, verbose=0)
    )
    assert plan.algo_kwargs["n_steps"] == 64 and type(plan.algo_kwargs["n_steps"]) is int
    assert type(plan.algo_kwargs["stats_window_size"]) is int


def test_extractor_keywords_inside_policy_kwargs_reach_the_extractor():
    """build.py sets ``features_extractor_kwargs`` from the plan: keywords given inside ``policy_kwargs``
    must land in the plan's extractor keywords, not be overwritten."""
    given = {"policy_kwargs": {"features_extractor_kwargs": {"embed_dim": 24}, "net_arch": [32]}}
    plan = resolve(TrainConfig(env="rlattn/TMaze-v0", hyperparams=given, verbose=0))
    assert plan.extractor_kwargs["embed_dim"] == 24
    assert plan.policy_kwargs == {"net_arch": [32]}


def test_policy_kwargs_of_an_algorithm_with_its_own_extractors_are_handed_on_as_given():
    """ppo_attention and ppo_lstm set no features_extractor_kwargs of their own: the user's reach the
    frame encoder (here the CNN) untouched, not the memory."""
    given = {"policy_kwargs": {"features_extractor_kwargs": {"features_dim": 128}}}
    for algo in ("ppo_attention", "ppo_lstm"):
        cfg = TrainConfig(env="rlattn/VisualSearch-v0", algo=algo, extractor="cnn", hyperparams=given, verbose=0)
        plan = resolve(cfg)
        assert plan.policy_kwargs["features_extractor_kwargs"] == {"features_dim": 128}
        assert plan.extractor_kwargs.get("features_dim") != 128
    given = {"policy_kwargs": {"features_extractor_kwargs": {"look_dim": 16}}}  # over the encoder's own keywords
    cfg = TrainConfig(
        env="rlattn/VisualSearch-v0", algo="ppo_attention", extractor="patch-attention", hyperparams=given
    )
    plan = resolve(cfg)
    model = build_model(plan, make_vec(plan, 1, 0))
    assert model.policy.features_extractor.look_dim == 16
    assert model.policy_kwargs["features_extractor_kwargs"]["patch_size"] == plan.extractor_kwargs["patch_size"]


def test_sb3s_tuple_form_of_train_freq_is_accepted():
    for given in ((2, "episode"), [2, "episode"]):
        plan = resolve(TrainConfig(env="rlattn/TMaze-v0", algo="dqn", hyperparams={"train_freq": given}, verbose=0))
        assert plan.algo_kwargs["train_freq"] == (2, "episode")  # a tuple: SB3 refuses a list


def test_a_copied_runs_resume_leaves_the_originals_tensorboard_alone(tmp_path):
    import shutil

    done = run_train(["--extractor", "mlp", *TINY, "--eval-freq", "-1", "-tb", "tb"], tmp_path)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "logs" / "ppo" / "rlattn-TMaze-v0_1"
    tb = tmp_path / "tb" / "ppo" / "rlattn-TMaze-v0_1"

    def steps(folder: Path) -> list[int]:
        raw = EventAccumulator(str(folder), size_guidance={"scalars": 0}, purge_orphaned_data=False)
        raw.Reload()
        return [e.step for e in raw.Scalars("time/fps")]

    before = steps(tb)
    assert before[-1] == 512 and len(before) == 2
    copy = tmp_path / "logs" / "ppo" / "branch"
    shutil.copytree(run, copy)
    resumed = run_train(["-i", str(copy / "rl_model_256_steps.zip"), "-n", "768", "--verbose", "0"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert steps(tb) == before  # the original's points, all of them
    assert steps(copy)[-1] == 768 and (copy / "tensorboard.txt").read_text() == ".\n"  # the copy's own, in its folder
    progress = (tb / "progress.csv").read_text()
    again = run_train(["-i", str(copy / "rlattn-TMaze-v0.zip"), "-n", "1024", "--verbose", "0"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert steps(tb) == before and (tb / "progress.csv").read_text() == progress  # a second resume too
    assert steps(copy)[-1] == 1024 and sorted(p.name for p in (tmp_path / "tb" / "ppo").iterdir()) == [tb.name]
    # -tb naming the -f folder: the events stay in the run folder, also resumed from another working folder
    same = run_train(["--extractor", "mlp", *TINY, "--eval-freq", "-1", "-f", "logs2", "-tb", "logs2"], tmp_path)
    assert same.returncode == 0, same.stderr
    run2 = tmp_path / "logs2" / "ppo" / "rlattn-TMaze-v0_1"
    assert list((tmp_path / "logs2" / "ppo").iterdir()) == [run2]
    other = tmp_path / "other"
    other.mkdir()
    resumed2 = run_train(["-i", str(run2 / "rl_model_256_steps.zip"), "-n", "768", "--verbose", "0"], other)
    assert resumed2.returncode == 0, resumed2.stderr
    assert not (other / "logs2").exists() and steps(run2)[-1] == 768


def test_where_a_resumed_runs_tensorboard_events_go(tmp_path):
    from agents.runfolder import TENSORBOARD_NOTE, TENSORBOARD_OWNER, tensorboard_folder

    run, tb = tmp_path / "logs" / "ppo" / "X_1", tmp_path / "tb" / "ppo" / "X_1"
    run.mkdir(parents=True)
    target, own, settle = tensorboard_folder(run, str(tmp_path / "tb"), "ppo", resumed=False)
    assert (target, own) == (tb, True) and not (run / TENSORBOARD_NOTE).exists()  # noted once the run starts
    settle()
    assert Path((run / TENSORBOARD_NOTE).read_text().strip()) == tb.resolve()  # an absolute -tb, noted absolute
    assert tensorboard_folder(run, None, "ppo", resumed=True)[:2] == (tb, True)
    # noted before owners were marked: that folder, not rewritten
    (tb / TENSORBOARD_OWNER).unlink()
    assert tensorboard_folder(run, None, "ppo", resumed=True)[:2] == (tb, False)
    # moved: the owner's folder is gone, so the folder is the moved run's (once it starts)
    (tb / TENSORBOARD_OWNER).write_text(str(tmp_path / "gone" / "X_1") + "\n")
    target, own, settle = tensorboard_folder(run, None, "ppo", resumed=True)
    assert (target, own) == (tb, True)
    settle()
    assert (tb / TENSORBOARD_OWNER).read_text().strip() == str(run.resolve())
    # the folder missing on this machine: the run folder, with a warning, noted as such once it starts
    (run / TENSORBOARD_NOTE).write_text(str(tmp_path / "elsewhere") + "\n")
    with pytest.warns(UserWarning, match="is not here: its events go to the run folder"):
        target, own, settle = tensorboard_folder(run, None, "ppo", resumed=True)
    assert (target, own) == (run, True) and (run / TENSORBOARD_NOTE).read_text().strip() != "."
    settle()
    assert tensorboard_folder(run, str(tmp_path / "tb"), "ppo", resumed=True)[:2] == (run, True)


def test_a_run_that_cannot_start_removes_the_folders_it_made_and_no_other(tmp_path, capsys):
    """Caught when the model is built (after the run folder is made): every folder this run made goes, down to
    the first that was there before."""
    there = tmp_path / "there"
    (there / "kept").mkdir(parents=True)  # made before the run: stays
    logs, tb = there / "a" / "b" / "logs", there / "kept" / "c" / "tb"
    args = ["-f", str(logs), "-tb", str(tb), "-params", "batch_size:1", "-n", "64", "--verbose", "0"]
    assert main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "`batch_size` must be greater than 1" in line, line
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["there", "there/kept"]


def test_a_replay_buffer_that_cannot_be_reserved_is_one_line_naming_buffer_size_and_history(
    tmp_path, capsys, monkeypatch
):
    """SB3 allocates the whole buffer_size up front, however few steps the run takes: a machine that cannot
    reserve it (here one that lets 1 GiB be reserved) refuses before anything is built."""
    import agents.plan as plan_module

    monkeypatch.setattr(plan_module, "reservable_memory", lambda: ("each", 2**30), raising=False)
    args = ["--algo", "dqn", "-n", "64", "-params", "buffer_size:100000000", "-f", str(tmp_path / "logs")]
    assert main([*args, "--verbose", "0"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("train.py: error: --algo dqn on rlattn/TMaze-v0: SB3 reserves the whole replay buffer")
    assert "(buffer_size 100,000,000 transitions" in line and "more than this machine lets be reserved (1.0 GiB" in line
    assert line.endswith("lower -params buffer_size:N or --history K") and not (tmp_path / "logs").exists()


STARTING = "train.py: interrupted before training started; nothing was saved"


def test_ctrl_c_while_a_run_starts_is_one_line_and_exit_130(tmp_path):
    """A real SIGINT while train.py imports the user's env module (before training's own handling is on)."""
    import os
    import signal
    import time

    ready = tmp_path / "importing"
    (tmp_path / "slowenv.py").write_text(
        f"import pathlib, time\npathlib.Path({str(ready)!r}).touch()\ntime.sleep(60)\n"
    )
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "--env", "slowenv:Slow-v0", "-f", "logs"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # not ignored, as in a background job
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.strip() == STARTING, err
    assert not (tmp_path / "logs").exists()


def test_ctrl_c_before_training_removes_the_run_folder_it_made(tmp_path, capsys, monkeypatch):
    import agents.run as run_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    for stage in ("preflight", "build_model"):  # before the run folder is made, and after
        with monkeypatch.context() as patch:
            patch.setattr(run_module, stage, interrupted)
            try:
                code = main(["-f", str(tmp_path / "new" / "logs"), "-n", "64", "--verbose", "0"])
            except KeyboardInterrupt:
                pytest.fail(f"Ctrl-C in {stage} escaped train.py's main")
        assert code == 130 and capsys.readouterr().err.strip() == STARTING
        assert list(tmp_path.iterdir()) == []  # the folders it made are gone


def test_ctrl_c_while_train_py_imports_is_one_line(capsys, monkeypatch):
    import runpy
    import types

    class Loading(types.ModuleType):
        def __getattr__(self, name):
            if name == "main":
                raise KeyboardInterrupt  # Ctrl-C while torch, SB3 and the envs load
            raise AttributeError(name)

    monkeypatch.setitem(sys.modules, "agents.cli", Loading("agents.cli"))
    with pytest.raises(SystemExit) as exit_:
        try:
            runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
        except KeyboardInterrupt:
            pytest.fail("Ctrl-C while train.py imports escaped it")
    assert exit_.value.code == 130 and capsys.readouterr().err.strip() == STARTING
