"""Seeing it: the attention overlay in TensorBoard, and ``train.py --replay`` writing a GIF."""

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.replay import FRAME_MS

ROOT = Path(__file__).resolve().parents[1]
TINY = "-n 512 --n-envs 2 --eval-freq 256 --eval-episodes 4 --save-freq -1 --verbose 0 -f logs".split()
SEARCH = ["--env-kwargs", "image_size:32", "grid:4", "set_size:3"]


def gif_milliseconds(path):
    with Image.open(path) as gif:
        total = 0
        for i in range(gif.n_frames):
            gif.seek(i)
            total += gif.info["duration"]
    return total


def run(args, cwd):
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    return done


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("search")
    done = run(["--env", "rlattn/VisualSearch-v0", "--extractor", "patch-attention", *SEARCH, *TINY], folder)
    assert done.returncode == 0, done.stderr
    return folder, folder / "logs" / "ppo" / "rlattn-VisualSearch-v0_1"


def test_evaluations_log_the_overlay_and_the_target_mass(search_run):
    _, run_folder = search_run
    events = EventAccumulator(str(run_folder), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    mass = [e.value for e in events.Scalars("attention/target_mass")]
    assert len(mass) == 2 and all(0.0 <= m <= 1.0 for m in mass)
    assert "attention/entropy" in events.Tags()["scalars"]
    overlays = events.Images("attention/overlay")
    assert len(overlays) == 2
    # four episodes, each the 32 x 32 frame and its heatmap side by side at 4x, with white gaps
    assert (overlays[-1].width, overlays[-1].height) == (2 * 128 + 8, 4 * 128 + 3 * 4)


def test_replay_prints_success_and_writes_a_gif(search_run):
    cwd, run_folder = search_run
    done = run(["--replay", str(run_folder), "--episodes", "3", "--video", "out/search.gif"], cwd)
    assert done.returncode == 0, done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"replay of {run_folder / 'best_model.zip'}: success ")
    assert "over 3 episodes" in summary and "target mass 0." in summary and "3 frames written" in summary
    with Image.open(cwd / "out" / "search.gif") as gif:
        assert gif.n_frames == 3 and gif.size == (2 * 128 + 8, 128)


def test_replay_of_a_history_run_shows_every_step(tmp_path):
    args = ["--env", "rlattn/CuedVisualSearch-v0", "--extractor", "spatiotemporal-attention", *SEARCH, "delay:2"]
    assert run([*args, *TINY], tmp_path).returncode == 0
    model = tmp_path / "logs" / "ppo" / "rlattn-CuedVisualSearch-v0_1" / "rlattn-CuedVisualSearch-v0.zip"
    done = run(["--replay", str(model), "--episodes", "2"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "8 frames written" in done.stdout  # cue, two blank frames, the search display; twice
    assert gif_milliseconds(model.parent / "replay.gif") == 8 * FRAME_MS  # the GIF merges repeated frames


def test_replay_of_a_vector_env_adds_the_history_heatmap(tmp_path):
    # two heads (the preset has one): the heatmap has a row per head
    args = ["--env", "rlattn/TMaze-v0", "--env-kwargs", "corridor_length:3", *TINY, "-params", "n_heads:2"]
    assert run(args, tmp_path).returncode == 0
    folder = tmp_path / "logs" / "ppo" / "rlattn-TMaze-v0_1"
    done = run(["--replay", str(folder), "--episodes", "2"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "target mass n/a" in done.stdout
    # corridor 3 and no slack: every episode is 4 steps, and each is a frame
    assert "8 frames written" in done.stdout and gif_milliseconds(folder / "replay.gif") == 8 * FRAME_MS
    maze = gym.make("rlattn/TMaze-v0", corridor_length=3, render_mode="rgb_array")
    maze.reset(seed=0)
    render_height = maze.render().shape[0]
    with Image.open(folder / "replay.gif") as gif:
        # the maze render, and under it the heatmap: one 12-pixel row per head (2), a gap, the strip
        assert gif.size[1] == render_height + 2 * 12 + 2 + 6


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--algo", "dqn"], "--algo cannot be given when replaying (--replay)"),
        (["--video", "out.mp4"], "--video 'out.mp4' is invalid: must end in .gif"),
        (["--episodes", "0"], "--episodes 0 is invalid: must be an integer >= 1"),
    ],
)
def test_replay_refuses_bad_flags(search_run, extra, expected):
    cwd, run_folder = search_run
    done = run(["--replay", str(run_folder), *extra], cwd)
    assert done.returncode == 2 and expected in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_replay_of_a_model_that_does_not_fit_the_runs_env_is_one_line(tmp_path, capsys):
    """A model copied in from another run (here one of CartPole): refused before any episode, as -i refuses it."""
    from stable_baselines3 import PPO

    from agents.cli import main
    from tests.untrained import untrained_run

    stranger = PPO("MlpPolicy", "CartPole-v1", n_steps=64, device="cpu")
    model = untrained_run(tmp_path / "logs", ["--env-kwargs", "corridor_length:3", "--extractor", "mlp"], stranger)
    for target in (model, model.parent):
        code = main(["--replay", str(target), "--episodes", "1"])
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and line.startswith(f"train.py: error: --replay '{model}' does not fit the run's env"), line
        assert "Observation spaces do not match: Box(" in line
    assert not list(model.parent.glob("replay*"))  # no GIF, no record


def test_replay_of_a_model_trained_on_images_sb3_moved_plays(tmp_path, capsys):
    """22 stacked RGB frames (66 channels last, more than the image's side): SB3 trained the model on them moved
    channels first (VecTransposeImage), so the replay env fits once wrapped as training's was."""
    from agents.cli import main
    from tests.untrained import untrained_run

    model = untrained_run(
        tmp_path / "logs", ["--env", "rlattn/GlimpseSearch-v0", "--extractor", "cnn-stack", "--history", "22"]
    )
    code = main(["--replay", str(model.parent), "--episodes", "1"])
    assert code == 0, capsys.readouterr().err
    assert (model.parent / "replay.gif").exists() and (model.parent / "replay.json").exists()


def test_the_replay_record_never_replaces_a_file_a_replay_did_not_write(tmp_path, capsys):
    """The record goes beside the GIF (.json for .gif): over an earlier replay's record, never over the run's
    result.json (or replay_buffer.json, ...)."""
    import json

    from agents.cli import main
    from tests.untrained import untrained_run

    model = untrained_run(tmp_path / "logs", ["--env-kwargs", "corridor_length:3", "--extractor", "mlp"])
    run = model.parent
    result = run / "result.json"
    result.write_text('{"env_steps": 0}\n')  # the run's own, what benchmarks read
    code = main(["--replay", str(run), "--episodes", "1", "--video", str(run / "result.gif")])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and line.startswith(f"train.py: error: --video {run / 'result.gif'}: its replay record"), line
    assert f"{result} (the GIF's name with .json) would replace a file that no replay wrote" in line
    assert result.read_text() == '{"env_steps": 0}\n' and not (run / "result.gif").exists()
    for _ in range(2):  # an earlier replay's record is replaced
        assert main(["--replay", str(run), "--episodes", "1"]) == 0
        assert json.loads((run / "replay.json").read_text())["episodes"] == 1 and (run / "replay.gif").is_file()
    assert not list(run.glob(".*partial*"))


def test_ctrl_c_during_a_replay_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    import agents.replay as replay_module
    from agents.cli import main
    from tests.untrained import untrained_run

    run = untrained_run(tmp_path / "logs", ["--env-kwargs", "corridor_length:3", "--extractor", "mlp"]).parent

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    for stage, said in (
        ("resolve", "interrupted before the replay started; nothing was written"),
        ("play", "interrupted during the replay; no GIF or record was written"),
        ("write_gif", f"interrupted while writing the replay's GIF and record ({run / 'replay.gif'}): each file is"),
    ):
        with monkeypatch.context() as patch:
            patch.setattr(replay_module, stage, interrupted)
            try:
                code = main(["--replay", str(run), "--episodes", "1"])
            except KeyboardInterrupt:
                pytest.fail(f"Ctrl-C in {stage} escaped train.py's main")
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert code == 130 and line.startswith(f"train.py: {said}"), line
        assert not list(run.glob("replay*")) and not list(run.glob(".*partial*"))
