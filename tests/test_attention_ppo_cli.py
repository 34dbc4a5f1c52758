"""train.py --algo ppo_attention as a user runs it: train, evaluate, log attention, resume, replay, refuse bad input."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.cli import main
from agents.config import TrainConfig
from agents.plan import resolve

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--algo", "ppo_attention", "--env-kwargs", "corridor_length:3", "--n-envs", "2", "-f", "logs"]
TINY += ["--eval-freq", "256", "--eval-episodes", "4", "--save-freq", "256", "-params", "n_steps:64"]


def run_train(args, cwd):
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_trains_logs_attention_resumes_and_replays(tmp_path):
    done = run_train([*TINY, "-n", "512"], tmp_path)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "logs" / "ppo_attention" / "rlattn-TMaze-v0_1"
    result = json.loads((run / "result.json").read_text())
    assert result["env_steps"] == 512 and result["settings"]["history"] == 5  # the episode: corridor 3 + slack 1 + 1
    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    masses = [e.value for e in events.Scalars("attention/target_mass")]
    assert len(masses) == 2 and all(0.0 < m <= 1.0 for m in masses)
    assert len(events.Images("attention/heatmap")) == 2
    with open(run / "progress.csv") as file:  # the attention views' rows say their step too
        rows = [row for row in csv.DictReader(file) if row.get("attention/target_mass")]
    assert [int(float(row["time/total_timesteps"])) for row in rows] == [256, 512]
    resumed = run_train(["-i", str(run / "rl_model_256_steps.zip"), "-n", "768", "--verbose", "0"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "result.json").read_text())["env_steps"] == 768
    assert np.load(run / "evaluations.npz")["timesteps"].tolist()[-1] == 768
    # TensorBoard holds each step once: the first part's points past 256 (which the resumed run logs again) left out
    raw = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0}, purge_orphaned_data=False)
    raw.Reload()
    assert [e.step for e in raw.Scalars("eval/mean_reward")] == [256, 512, 768]
    for tag in ("attention/target_mass", "rollout/ep_rew_mean", "train/loss"):
        steps = [e.step for e in raw.Scalars(tag)]
        assert steps == sorted(set(steps)), (tag, steps)
    replay = run_train(["--replay", str(run), "--episodes", "2"], tmp_path)
    assert replay.returncode == 0, replay.stderr
    record = json.loads((run / "replay.json").read_text())
    assert record["episodes"] == 2 and record["frames"] == 8  # corridor 3 without slack: 4 steps an episode


def test_history_inputs_and_memory_settings_reach_the_model(tmp_path):
    cfg = TrainConfig(
        algo="ppo_attention", env="rlattn/TMazeActive-v0", history=7, hyperparams={"n_layers": 2, "gate": "residual"}
    )
    plan = resolve(cfg)
    assert plan.observation == "frame" and plan.history_inputs == ("action",)  # the active maze's preset
    from agents.build import build_model, make_vec

    model = build_model(plan, make_vec(plan, plan.n_envs, 0))
    assert model.memory == 7 and model.include_action and not model.include_reward
    assert len(model.policy.memory_net.blocks) == 2 and not model.policy.memory_net.blocks[0].gated


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--history", "0"], "--history=0 is invalid"),
        (["--extractor", "attention"], "--extractor 'attention' does not go with ppo_attention"),
        (["--env", "rlattn/VisualSearch-v0", "--extractor", "mlp"], "does not go with ppo_attention on images"),
        (
            ["--env", "rlattn/VisualSearch-v0", "--extractor", "patch-attention", "-params", "patch_size:7"],
            "patch_size=7 does not divide the 64x64 image",
        ),
        (["--env", "rlattn/VisualSearch-v0", "-params", "readout:'max'"], "readout='max' is invalid: allowed are"),
        (
            ["--extractor", "patch-attention"],
            "does not go with ppo_attention on vectors, which keeps its own memory: use mlp",
        ),
        (["-params", "window:4"], "-params key 'window' is not accepted by ppo_attention"),
        (["-params", "memory:8"], "-params key 'memory' is not accepted by ppo_attention"),
        (["--history-inputs", "reward"], "--history-inputs reward does not go with ppo_attention: allowed are action"),
        (["-params", "n_heads:3"], "memory on rlattn/TMaze-v0: embed_dim=64 is invalid with n_heads=3"),
        (["-params", "batch_size:0"], "batch_size=0 is invalid"),
    ],
)
def test_bad_input_is_one_line(args, expected, tmp_path, capsys):
    assert main(["--algo", "ppo_attention", "-f", str(tmp_path), "-n", "256", *args]) == 2
    error = capsys.readouterr().err.strip()
    assert expected in error and len(error.splitlines()) == 1
    assert not list(tmp_path.glob("*/*")), "a run that cannot start leaves nothing behind"


def test_stateless_options_refuse_the_memory_keywords(tmp_path, capsys):
    assert main(["--algo", "ppo", "-f", str(tmp_path), "-params", "memory:8"]) == 2
    assert "-params key 'memory' is not accepted by ppo" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extractor, policy, frame_keys",
    [(None, "AttentionPatchPolicy", {"patch_size": 8, "spatial_layers": 1}), ("cnn", "AttentionCnnPolicy", {})],
)
def test_image_frames_as_patches_by_default_or_through_the_cnn(extractor, policy, frame_keys):
    """Images: patches and a look after the memory unless --extractor cnn; patch keys reach the frame encoder."""
    from agents.build import build_model, make_vec

    params = {"spatial_layers": 1, "n_layers": 2} if extractor is None else {"n_layers": 2}
    cfg = TrainConfig(algo="ppo_attention", env="rlattn/CuedVisualSearch-v0", extractor=extractor, hyperparams=params)
    plan = resolve(cfg)
    model = build_model(plan, make_vec(plan, 2, 0))
    assert type(model.policy).__name__ == policy and len(model.policy.memory_net.blocks) == 2
    if frame_keys:
        extractor_ = model.policy.features_extractor
        assert extractor_.encoder.patch_size == frame_keys["patch_size"] and len(extractor_.encoder.blocks) == 1
        assert model.policy.look_net.pointer_size == 64  # CuedVisualSearch: 64 cells, 64 patches


@pytest.mark.parametrize("extractor", ["patch-attention", "cnn"])
def test_image_env_logs_the_memory_heatmap_and_the_look(extractor, tmp_path):
    """On images the ground truth is a box in a frame, not a step. With patches the look after the memory
    is logged over the frame (``attention/overlay``) with its weight on the target's box; the CNN has no look."""
    args = ["--algo", "ppo_attention", "--env", "rlattn/CuedVisualSearch-v0", "-n", "256", "--n-envs", "2"]
    args += ["--extractor", extractor, "-params", "n_steps:64", "batch_size:64", "--eval-freq", "128"]
    args += ["--eval-episodes", "2", "-f", str(tmp_path), "--verbose", "0", "--save-freq", "-1"]
    assert main(args) == 0
    run = tmp_path / "ppo_attention" / "rlattn-CuedVisualSearch-v0_1"
    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert len(events.Images("attention/heatmap")) == 2
    if extractor == "cnn":
        assert "attention/target_mass" not in events.Tags()["scalars"]
        assert "attention/overlay" not in events.Tags()["images"]
    else:
        masses = [e.value for e in events.Scalars("attention/target_mass")]
        assert len(masses) == 2 and all(0.0 <= m <= 1.0 for m in masses)
        assert len(events.Images("attention/overlay")) == 2
        assert main(["--replay", str(run), "--episodes", "2", "--verbose", "0"]) == 0
        replayed = json.loads((run / "replay.json").read_text())
        assert replayed["episodes"] == 2 and 0.0 <= replayed["target_mass"] <= 1.0  # the look's, at each answer


def test_glimpse_preset_takes_the_cnn_and_near_starts_in_training_only():
    plan = resolve(TrainConfig(algo="ppo_attention", env="rlattn/GlimpseSearch-v0"))
    assert plan.extractor == "cnn" and plan.env_kwargs == {"near_start": 0.5} and plan.eval_env_kwargs == {}
    assert plan.history == 64  # the whole episode
    chosen = resolve(TrainConfig(algo="ppo_attention", env="rlattn/GlimpseSearch-v0", extractor="patch-attention"))
    assert chosen.extractor == "patch-attention" and chosen.env_kwargs == {"near_start": 0.5}
    own = resolve(TrainConfig(algo="ppo_attention", env="rlattn/GlimpseSearch-v0", env_kwargs={"near_start": 0.0}))
    assert own.env_kwargs == {"near_start": 0.0}  # the user's own keyword switches the preset's off
