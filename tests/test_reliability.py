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
    # the 1024-step checkpoint is written after the 4th rollout's update; a half-collected rollout is never counted
    assert 1024 <= stopped_at < total and stopped_at % 256 == 0
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
    on_disk = ReadEvaluationsAtStart(first.folder / "evaluations.npz")
    resumed = train(config_from_args(["-i", str(first.folder / "rl_model_512_steps.zip"), "--verbose", "0"]), [on_disk])
    assert on_disk.timesteps == [256, 512]  # the file is cut too: what is read meanwhile is the curve gone on from
    assert resumed.folder == first.folder and resumed.timesteps == 1024
    assert np.load(first.folder / "evaluations.npz")["timesteps"].tolist() == [256, 512, 768, 1024]


class ReadEvaluationsAtStart(BaseCallback):
    def __init__(self, path: Path):
        super().__init__()
        self.path, self.timesteps = path, None

    def _on_training_start(self) -> None:
        self.timesteps = np.load(self.path)["timesteps"].tolist()

    def _on_step(self) -> bool:
        return True


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


TINY = ["--env-kwargs", "corridor_length:3", "--n-envs", "2", "--eval-episodes", "2", "--verbose", "0"]
"""one rollout of PPO's T-Maze preset is 2 envs x 128 steps = 256 env steps"""


def test_signals_while_saving_or_in_the_final_evaluation_lose_nothing(tmp_path, monkeypatch):
    """A second Ctrl-C while the interrupted run saves is noted and the save finishes; one during the final
    evaluation leaves the evaluation out. Either way the model and result.json are written."""
    import os

    import agents.run as run_module

    real_save, saves, handler = run_module.save_atomic, [], signal.getsignal(signal.SIGINT)

    def save_with_a_second_signal(model, path):
        os.kill(os.getpid(), signal.SIGINT)  # delivered at once, inside the save
        saves.append(path.name)
        return real_save(model, path)

    monkeypatch.setattr(run_module, "save_atomic", save_with_a_second_signal)
    args = [*TINY, "-f", str(tmp_path / "a"), "-n", "1024", "--eval-freq", "-1", "--save-freq", "-1"]
    result = train(config_from_args(args), extra_callbacks=[InterruptAt(300, "step")])
    assert result.interrupted_by == "SIGINT" and saves == ["rlattn-TMaze-v0.zip"]
    assert PPO.load(result.model_path, device="cpu").num_timesteps == 256
    record = json.loads((result.folder / "result.json").read_text())
    assert record["interrupted_by"] == "SIGINT" and record["env_steps"] == 256 and record["evaluation"] is None

    monkeypatch.setattr(run_module, "save_atomic", real_save)

    def evaluation_cut_short(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here
        raise AssertionError("the signal did not stop the evaluation")

    monkeypatch.setattr(run_module, "evaluate", evaluation_cut_short)
    result = train(config_from_args([*TINY, "-f", str(tmp_path / "b"), "-n", "512", "--eval-freq", "-1"]))
    assert result.interrupted_by == "SIGTERM" and result.evaluation is None and result.exit_code == 143
    assert PPO.load(result.model_path, device="cpu").num_timesteps == 512  # all of it trained and saved
    assert json.loads((result.folder / "result.json").read_text())["interrupted_by"] == "SIGTERM"
    assert signal.getsignal(signal.SIGINT) is handler  # the handlers given back


class StopBeforeTraining(BaseCallback):
    """Ctrl-C while SB3 sets up ``learn`` (after the model's callbacks are given it, before training starts)."""

    def _init_callback(self) -> None:
        raise KeyboardInterrupt

    def _on_step(self) -> bool:
        return True


def test_an_interrupt_before_training_starts_keeps_the_step_count(tmp_path):
    args = [*TINY, "-f", str(tmp_path), "--eval-freq", "-1", "--save-freq", "-1"]
    first = train(config_from_args([*args, "-n", "512"]))
    resumed = train(config_from_args(["-i", str(first.model_path), "-n", "1024"]), [StopBeforeTraining()])
    assert resumed.interrupted_by == "SIGINT"
    assert PPO.load(first.model_path, device="cpu").num_timesteps == 512  # not 0: nothing to train again


def test_on_policy_checkpoints_hold_every_step_their_name_counts(tmp_path):
    """Checkpoints every 200 steps with rollouts of 128: each is written after the update that learned its
    steps, named by them (256, 512), so a run resumed from one neither skips nor repeats a step."""
    args = [*TINY, "-f", str(tmp_path), "--eval-freq", "-1", "--save-freq", "200", "-n", "640"]
    result = train(config_from_args([*args, "-params", "n_steps:64", "batch_size:64", "n_epochs:2", "target_kl:None"]))
    names = sorted(p.name for p in result.folder.glob("rl_model_*_steps.zip"))
    assert names == ["rl_model_256_steps.zip", "rl_model_512_steps.zip"]
    for name in names:
        model = PPO.load(result.folder / name, device="cpu")
        steps = int(name.split("_")[2])
        assert model.num_timesteps == steps and model._n_updates == steps // 128 * 2  # 2 epochs per update


def test_a_damaged_evaluations_file_stops_a_resume_in_one_line_and_no_partial_file_stays(tmp_path):
    from agents.config import ConfigError

    args = [*TINY, "-f", str(tmp_path), "--eval-freq", "256", "--save-freq", "-1", "-n", "512"]
    first = train(config_from_args(args))
    evaluations = first.folder / "evaluations.npz"
    assert np.load(evaluations)["timesteps"].tolist() == [256, 512]
    assert not list(first.folder.glob(".*partial*"))  # written beside, renamed into place
    evaluations.write_bytes(evaluations.read_bytes()[:100])  # cut short, as a kill mid-write of a plain save would
    with pytest.raises(ConfigError, match=r"evaluations.npz cannot be read \(.*\): move it aside") as error:
        train(config_from_args(["-i", str(first.model_path), "-n", "1024"]))
    assert "\n" not in str(error.value) and first.model_path.is_file()


def test_a_dqn_run_resumed_from_an_older_checkpoint_does_not_take_the_newer_replay_buffer(tmp_path):
    args = [*TINY, "--algo", "dqn", "-f", str(tmp_path), "--eval-freq", "-1", "--save-freq", "400", "-n", "1600"]
    first = train(config_from_args([*args, "-params", "learning_starts:100", "buffer_size:5000"]))
    assert json.loads((first.folder / "replay_buffer.json").read_text()) == {"env_steps": 1600}
    with pytest.warns(UserWarning, match="saved at 1600 env steps, the model at 800: .* empty replay buffer"):
        train(config_from_args(["-i", str(first.folder / "rl_model_800_steps.zip"), "-n", "1000"]))
    model = DQN.load(first.model_path, device="cpu")
    model.load_replay_buffer(first.folder / "replay_buffer.pkl")
    assert model.num_timesteps == 1000 and model.replay_buffer.size() == 200 // 2  # only the resumed stretch
    resumed = train(config_from_args(["-i", str(first.model_path), "-n", "1200"]))  # the pair matches: taken
    model = DQN.load(resumed.model_path, device="cpu")
    model.load_replay_buffer(first.folder / "replay_buffer.pkl")
    assert model.replay_buffer.size() == 200  # the resumed stretch's 100 slots kept, 100 new


def test_a_resumed_or_replayed_run_keeps_the_settings_it_was_started_with(tmp_path, monkeypatch):
    """A run started under other presets (here a history of 3 more steps than today's) resumes and replays
    with its own settings, with a warning naming the difference: today's would not fit its model."""
    import dataclasses

    import agents.plan as plan_module
    from agents.plan import resolve
    from agents.replay import replay

    args = [*TINY, "-f", str(tmp_path), "--eval-freq", "-1", "--save-freq", "-1", "--extractor", "attention"]
    today = resolve(config_from_args([*args, "-n", "256"])).history
    original = plan_module.preset_for
    monkeypatch.setattr(plan_module, "preset_for", lambda *a: dataclasses.replace(original(*a), history=today + 3))
    first = train(config_from_args([*args, "-n", "256"]))
    monkeypatch.setattr(plan_module, "preset_for", original)
    with pytest.warns(UserWarning, match=rf"started with: history {today + 3} \(now {today}\)"):
        resumed = train(config_from_args(["-i", str(first.model_path), "-n", "512"]))
    assert resumed.timesteps == 512 and resumed.interrupted_by is None
    assert json.loads((first.folder / "result.json").read_text())["settings"]["history"] == today + 3
    with pytest.warns(UserWarning, match=rf"history {today + 3} \(now {today}\)"):
        played = replay(config_from_args(["--replay", str(first.folder), "--episodes", "1"]))
    assert len(played.returns) == 1


def test_keeping_the_progress_log_never_overwrites_one_and_drops_empty_ones(tmp_path):
    from agents.runfolder import keep_progress

    (tmp_path / "progress.csv").write_text("time/total_timesteps\n256\n")
    keep_progress(tmp_path, 256)
    (tmp_path / "progress.csv").write_text("")  # a resume stopped before its first log
    keep_progress(tmp_path, 256)
    (tmp_path / "progress.csv").write_text("time/total_timesteps\n512\n")  # resumed from the same model again
    keep_progress(tmp_path, 256)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["progress_until_256.csv", "progress_until_256_2.csv"]
    assert (tmp_path / "progress_until_256.csv").read_text().endswith("256\n")


class Slow(BaseCallback):
    """Stands in for an evaluation: time in a callback, not in training."""

    def _on_step(self) -> bool:
        time.sleep(0.01)
        return True


def test_steps_per_second_counts_training_alone_and_the_result_keeps_the_rest(tmp_path):
    cfg = config_from_args(
        ["--env-kwargs", "corridor_length:3", "--extractor", "mlp", "-n", "256", "--n-envs", "2", "--eval-freq", "-1"]
        + ["-params", "n_steps:64", "batch_size:64", "-f", str(tmp_path), "--verbose", "0"]
    )
    run = train(cfg, extra_callbacks=[Slow()])
    result = json.loads((run.folder / "result.json").read_text())
    assert result["outside_training_seconds"] >= 128 * 0.01  # 128 callback steps of 2 envs, 10 ms each
    training = result["wall_seconds"] - result["outside_training_seconds"]
    assert result["steps_per_second"] == pytest.approx(256 / training, rel=1e-6)
    assert run.steps_per_second == result["steps_per_second"]


def folder_state(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def normalized_run(tmp_path_factory):
    """A 256-step PPO run with reward normalization, evaluated at 128 and 256 steps."""
    folder = tmp_path_factory.mktemp("normalized")
    args = [*TINY, "-f", str(folder), "-n", "256", "--eval-freq", "128", "--save-freq", "-1", "--extractor", "mlp"]
    result = train(config_from_args([*args, "-params", "n_steps:64", "batch_size:64", "normalize_reward:True"]))
    assert (result.folder / "progress.csv").is_file() and (result.folder / "evaluations.npz").is_file()
    return result.folder


@pytest.mark.parametrize(
    "damaged, expected",
    [
        ("evaluations.npz", r"evaluations.npz cannot be read \(.*\): move it aside to resume without the earlier"),
        (
            "rlattn-TMaze-v0_vecnormalize.pkl",
            r"rlattn-TMaze-v0_vecnormalize.pkl cannot be read \(.*\): move it aside to resume with "
            r"the reward normalization's statistics started afresh",
        ),
    ],
)
def test_a_refused_resume_leaves_the_run_folder_as_it_was(normalized_run, damaged, expected, tmp_path, capsys):
    import re
    import shutil

    from agents.cli import main

    run = tmp_path / "logs" / "ppo" / normalized_run.name
    shutil.copytree(normalized_run, run)
    (run / damaged).write_bytes((run / damaged).read_bytes()[:100])  # a copy cut short
    before = folder_state(tmp_path)
    assert main(["-i", str(run / "rlattn-TMaze-v0.zip"), "-n", "512", "--verbose", "0"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"train.py: error: {run / damaged} cannot be read") and re.search(expected, line), line
    assert folder_state(tmp_path) == before  # no progress.csv renamed, no events file, no command line


def test_a_damaged_replay_buffer_refuses_the_resume_in_one_line_and_leaves_the_folder(tmp_path, capsys):
    from agents.cli import main
    from tests.untrained import untrained_run

    args = ["--algo", "dqn", "--env-kwargs", "corridor_length:3", "--extractor", "mlp", "-params", "buffer_size:1000"]
    model = untrained_run(tmp_path / "logs", args)
    buffer = model.parent / "replay_buffer.pkl"
    assert buffer.is_file() and (model.parent / "replay_buffer.json").is_file()  # saved with this model
    buffer.write_bytes(b"garbage\n")
    before = folder_state(tmp_path)
    assert main(["-i", str(model), "-n", "512", "--verbose", "0"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"train.py: error: {buffer} cannot be read (")
    assert line.endswith("move it aside to resume with an empty replay buffer"), line
    assert folder_state(tmp_path) == before  # the monitor files the resume opened are gone again
