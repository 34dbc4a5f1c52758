"""Runs that are interrupted, resumed, crash mid-save, or are repeated with the same seed."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.callbacks import BaseCallback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.cli import config_from_args
from agents.config import TrainConfig
from agents.run import train
from agents.runfolder import save_atomic

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--env-kwargs", "corridor_length:3", "--n-envs", "2", "--eval-episodes", "2", "-f", "logs"]


def start_train(args, cwd):
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path_glob: str, cwd: Path, timeout: float = 120) -> None:
    """Until a file matching the glob exists under cwd (training has really started)."""
    deadline = time.monotonic() + timeout
    while not list(cwd.glob(path_glob)):
        assert time.monotonic() < deadline, f"no {path_glob} after {timeout} s"
        time.sleep(0.2)


def test_sigint_saves_then_resume_reaches_the_total_and_continues_the_run(tmp_path):
    """Ctrl-C mid-run saves the model; ``-i`` continues the same folder and TensorBoard run to the total."""
    total = 4096  # a whole number of PPO rollouts (2 envs x 128 steps)
    run = tmp_path / "logs" / "ppo" / "rlattn-TMaze-v0_1"
    process = start_train([*SMALL, "-n", str(total), "--eval-freq", "1024", "--save-freq", "512"], tmp_path)
    wait_for("logs/ppo/*/rl_model_1024_steps.zip", tmp_path)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    model_file = run / "rlattn-TMaze-v0.zip"
    assert out.strip().splitlines()[-1].startswith("interrupted (SIGINT) at ")
    assert f"resume with: python train.py -i {model_file.relative_to(tmp_path)}" in out
    stopped_at = PPO.load(model_file, device="cpu").num_timesteps
    # the 1024-step checkpoint is written on the last step of the 4th rollout, which the signal may beat to
    # its update (then 768); a half-collected rollout is never counted
    assert 768 <= stopped_at < total and stopped_at % 256 == 0
    assert "Traceback" not in err and not list(run.glob(".*partial*"))

    resumed = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-i", str(model_file)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip().splitlines()[-1].startswith("done: eval success ")
    assert PPO.load(model_file, device="cpu").num_timesteps == total
    assert sorted(p.name for p in (tmp_path / "logs" / "ppo").iterdir()) == [run.name]  # same folder, no new run
    assert (run / f"progress_until_{stopped_at}.csv").is_file() and (run / "progress.csv").is_file()
    timesteps = np.load(run / "evaluations.npz")["timesteps"]
    assert timesteps[0] == 1024 and timesteps[-1] > stopped_at  # evaluations extended, not overwritten
    assert timesteps.tolist() == list(range(1024, total + 1, 1024))  # the first run's schedule, whenever it stopped
    events = EventAccumulator(str(run))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert max(steps) >= total - 256 and min(steps) <= 1024  # one TensorBoard run across both processes
    commands = (run / "rlattn-TMaze-v0" / "command.txt").read_text().splitlines()
    assert len(commands) == 2 and "-i" in commands[1]


def test_sigterm_saves_the_model_and_the_replay_buffer_and_resume_loads_them(tmp_path):
    process = start_train(
        [*SMALL, "--algo", "dqn", "-n", "20000", "--eval-freq", "-1", "--save-freq", "1000"]
        + ["-params", "learning_starts:200", "buffer_size:5000"],
        tmp_path,
    )
    wait_for("logs/dqn/*/rl_model_1000_steps.zip", tmp_path)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "interrupted (SIGTERM)" in out
    run = tmp_path / "logs" / "dqn" / "rlattn-TMaze-v0_1"
    model = DQN.load(run / "rlattn-TMaze-v0.zip", device="cpu")
    model.load_replay_buffer(run / "replay_buffer.pkl")
    assert model.replay_buffer.size() > 0
    assert model.replay_buffer.size() == min(model.num_timesteps // 2, 5000)  # 2 envs fill one slot per step

    resumed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-i",
            str(run / "rlattn-TMaze-v0.zip"),
            "-n",
            str(model.num_timesteps + 400),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    again = DQN.load(run / "rlattn-TMaze-v0.zip", device="cpu")
    again.load_replay_buffer(run / "replay_buffer.pkl")
    assert again.num_timesteps >= model.num_timesteps + 400
    assert again.replay_buffer.size() > model.replay_buffer.size()  # the old buffer was loaded and extended


class InterruptAt(BaseCallback):
    """Raises Ctrl-C's exception on the given step, from ``on_step`` (before SB3 stores the step's
    transition) or from ``on_rollout_end`` (after it)."""

    def __init__(self, step: int, where: str) -> None:
        super().__init__()
        self.step, self.where = step, where

    def _on_step(self) -> bool:
        if self.where == "step" and self.num_timesteps >= self.step:
            raise KeyboardInterrupt
        return True

    def _on_rollout_end(self) -> None:
        if self.where == "rollout_end" and self.num_timesteps >= self.step:
            raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["step", "rollout_end"])
def test_an_interrupt_before_or_after_a_transition_is_stored_keeps_the_counter_and_the_buffer_equal(tmp_path, where):
    """SB3 counts an off-policy step before storing its transition; the saved counter follows the buffer."""
    cfg = TrainConfig(
        algo="dqn",
        env_kwargs={"corridor_length": 3},
        n_envs=2,
        n_timesteps=4000,
        eval_freq=-1,
        eval_episodes=2,
        log_folder=str(tmp_path / "logs"),
        hyperparams={"learning_starts": 200, "buffer_size": 5000},
        verbose=0,
    )
    result = train(cfg, extra_callbacks=[InterruptAt(601, where)])
    assert result.interrupted_by == "SIGINT"
    model = DQN.load(result.model_path, device="cpu")
    model.load_replay_buffer(result.folder / "replay_buffer.pkl")
    assert model.num_timesteps == (600 if where == "step" else 608)  # rollouts of 4 steps x 2 envs
    assert model.replay_buffer.size() == model.num_timesteps // 2


def test_resuming_from_an_older_checkpoint_trains_its_stretch_again_and_evaluates_each_step_once(tmp_path):
    """A run resumed from its 512-step checkpoint after it had evaluated at 768 and 1024: those evaluations
    are of a stretch that trains again, so they are dropped and made anew, once each, on the same schedule."""
    args = ["--env-kwargs", "corridor_length:3", "--n-envs", "2", "--eval-episodes", "2", "-f", str(tmp_path)]
    args += ["--eval-freq", "256", "--save-freq", "512", "--verbose", "0", "-params", "n_steps:64", "batch_size:64"]
    first = train(config_from_args([*args, "-n", "1024"]))
    assert np.load(first.folder / "evaluations.npz")["timesteps"].tolist() == [256, 512, 768, 1024]
    resumed = train(config_from_args(["-i", str(first.folder / "rl_model_512_steps.zip"), "--verbose", "0"]))
    assert resumed.folder == first.folder and resumed.timesteps == 1024
    assert np.load(first.folder / "evaluations.npz")["timesteps"].tolist() == [256, 512, 768, 1024]


def test_resume_refuses_other_settings_and_a_total_already_reached(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *SMALL, "-n", "512", "--eval-freq", "-1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    model = "logs/ppo/rlattn-TMaze-v0_1/rlattn-TMaze-v0.zip"
    for args, expected in (
        (["-i", model, "--env", "rlattn/TMaze-L30-v0"], "--env cannot be given when resuming"),
        (["-i", model, "-n", "512"], "-n 512 is invalid: "),
    ):
        again = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, capture_output=True, text=True, timeout=600
        )
        assert again.returncode == 2 and expected in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_a_crash_mid_save_keeps_the_last_good_file(tmp_path):
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, device="cpu", seed=0)
    path = save_atomic(model, tmp_path / "model.zip")
    good = path.read_bytes()

    def broken_save(target, *args, **kwargs):
        Path(target).write_bytes(b"half a zip")
        raise OSError(28, "No space left on device")

    model.save = broken_save
    with pytest.raises(OSError, match="No space left"):
        save_atomic(model, path)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zip"]
    PPO.load(path, device="cpu")


@pytest.mark.parametrize("extractor", ["attention", "mlp-stack"])
def test_the_same_seed_gives_the_same_run(extractor, tmp_path):
    """Two runs with one seed: identical evaluations and identical weights (CPU)."""
    results = []
    for name in ("a", "b"):
        done = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), *SMALL[:-1], name, "--extractor", extractor, "-n", "1024"]
            + ["--eval-freq", "512", "--eval-episodes", "4", "--seed", "3"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        run = tmp_path / name / "ppo" / "rlattn-TMaze-v0_1"
        evaluations = dict(np.load(run / "evaluations.npz"))
        weights = PPO.load(run / "rlattn-TMaze-v0.zip", device="cpu").policy.state_dict()
        results.append((evaluations, weights, done.stdout.strip().splitlines()[-1].split("|")[:2]))
    (eval_a, weights_a, summary_a), (eval_b, weights_b, summary_b) = results
    for key in eval_a:
        np.testing.assert_array_equal(eval_a[key], eval_b[key])
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key
    assert summary_a == summary_b
    other = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *SMALL[:-1], "c", "--extractor", extractor, "-n", "1024"]
        + ["--eval-freq", "-1", "--seed", "4"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert other.returncode == 0, other.stderr
    weights_c = PPO.load(tmp_path / "c" / "ppo" / "rlattn-TMaze-v0_1" / "rlattn-TMaze-v0.zip").policy.state_dict()
    assert any(not torch.equal(weights_a[key], weights_c[key]) for key in weights_a)  # the seed is used


def test_a_run_keeps_the_history_inputs_it_was_trained_with(tmp_path):
    """Resume and replay rebuild the steps a run saw, whatever the presets say now: the preset's
    choice is pinned from the run's resolved settings, and runs saved before the flag saw the observation alone."""
    from agents.runfolder import load_run_config

    folder = tmp_path / "run"
    (folder / "rlattn-TMazeActive-v0").mkdir(parents=True)
    args = folder / "rlattn-TMazeActive-v0" / "args.json"
    resolved = args.with_name("config.json")
    args.write_text(json.dumps({"env": "rlattn/TMazeActive-v0", "history_inputs": None}))
    resolved.write_text(json.dumps({"history": 13, "history_inputs": ["action"]}))
    assert load_run_config(folder, "-i").history_inputs == ["action"]
    resolved.write_text(json.dumps({"history": 13}))  # written before the flag existed
    assert load_run_config(folder, "-i").history_inputs == []
    args.write_text(json.dumps({"env": "rlattn/TMazeActive-v0", "history_inputs": ["reward"]}))
    assert load_run_config(folder, "-i").history_inputs == ["reward"]  # asked for on the command line
