"""train.py as a user runs it: a tiny real run read back from disk, and bad input as one-line errors."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.cli import main

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
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    heatmap = events.Images("attention/heatmap")
    assert len(heatmap) == 2 and heatmap[-1].width > 0 and heatmap[-1].height > 0


def test_second_run_gets_the_next_folder_and_list_envs(tmp_path):
    for _ in range(2):
        assert run_train(["--extractor", "mlp-stack", "-f", "logs", "--verbose", "0", *TINY], tmp_path).returncode == 0
    assert sorted(p.name for p in (tmp_path / "logs" / "ppo").iterdir()) == ["rlattn-TMaze-v0_1", "rlattn-TMaze-v0_2"]
    listing = run_train(["--list-envs"], tmp_path)
    assert listing.returncode == 0 and "rlattn/TMazeActive-L30-v0" in listing.stdout


BAD_INPUTS = [
    (["--env", "rlattn/TMaz-v0"], "did you mean rlattn/TMaze-v0"),
    (["--algo", "sac"], "invalid choice: 'sac'"),
    (["--extractor", "cnn"], "--extractor 'cnn' is invalid"),
    (["--env-kwargs", "corridor_length:abc"], "corridor_length:abc"),
    (["--env-kwargs", "corridor_length"], "'corridor_length' is invalid: expected key:value"),
    (["--env-kwargs", "corridor:20"], "env keyword 'corridor' is not accepted"),
    (["--env-kwargs", "corridor_length:0"], "corridor_length=0 is invalid"),
    (["--history", "0"], "--history=0 is invalid"),
    (["--history", "4", "--extractor", "mlp"], "--history 4 does not go with --extractor mlp"),
    (["--extractor", "local-attention", "-params", "window:100"], "window=100 is invalid"),
    (["--algo", "ppo_lstm", "--extractor", "attention"], "does not go with ppo_lstm"),
    (["--extractor", "sparse-attention", "-params", "top_k:0"], "top_k=0 is invalid"),
    (["-params", "learning_rat:0.1"], "-params key 'learning_rat' is not accepted"),
    (["-n", "0"], "--n-timesteps=0 is invalid"),
    (["--n-envs", "-2"], "--n-envs=-2 is invalid"),
    (["--vec-env", "ray"], "invalid choice: 'ray'"),
    (["--seed", "one"], "invalid int value: 'one'"),
    (["--env", "Blackjack-v1"], "--env Blackjack-v1 cannot be given a history"),
    (["--device", "tpu9"], "--device 'tpu9' is invalid"),
    (["--eval-episodes", "0"], "--eval-episodes=0 is invalid"),
    (["--extractor", "attention", "-params", "n_heads:3"], "embed_dim=64 is invalid: must be divisible by n_heads=3"),
]


@pytest.mark.parametrize("args, expected", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(args, expected, tmp_path, capsys):
    try:
        code = main([*args, "-f", str(tmp_path / "logs")])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and expected in err and "Traceback" not in err
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("*.zip"))


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    done = run_train(["--env", "rlattn/TMaze-v0", "--env-kwargs", "corridor_length:-3"], tmp_path)
    assert (
        done.returncode == 2
        and done.stderr.strip()
        == "train.py: error: --env-kwargs for rlattn/TMaze-v0: corridor_length=-3 is invalid: must be an integer from 1 to 100000"
    )
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--algo", "a2c", "--extractor", "local-attention"],
        ["--algo", "ppo", "--extractor", "sparse-attention"],
        ["--algo", "dqn", "--extractor", "attention", "-params", "learning_starts:64", "buffer_size:1000"],
        ["--algo", "ppo_lstm", "-params", "n_steps:64", "batch_size:64"],
        ["--algo", "ppo", "--extractor", "mlp", "--vec-env", "subproc"],
        ["--algo", "ppo", "--extractor", "mlp-stack", "--env", "CartPole-v1", "--history", "4"],
    ],
    ids=lambda a: " ".join(a[:4]),
)
def test_every_algo_and_extractor_runs(args, tmp_path):
    extra = [] if "CartPole-v1" in args else ["--env-kwargs", "corridor_length:3"]
    quiet = "-f logs -tb tb --verbose 0 --eval-episodes 2".split()
    done = run_train([*args, *extra, *quiet, *BUDGET], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("done: eval ")
    algo = args[1]
    (run,) = (tmp_path / "logs" / algo).iterdir()
    assert (run / f"{run.name.rsplit('_', 1)[0]}.zip").is_file() and (run / "evaluations.npz").is_file()
    assert list((tmp_path / "tb" / algo / run.name).glob("events.out.tfevents.*"))
