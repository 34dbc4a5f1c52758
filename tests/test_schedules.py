"""Linear schedules in -params (lin_START, as in the RL Zoo): parsed, built into SB3, and the entropy one applied."""

import pytest
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import LinearSchedule

from agents import schedules
from agents.cli import config_from_args
from agents.config import ConfigError
from agents.run import train


def test_lin_values_are_read_as_schedules_and_other_values_as_literals():
    cfg = config_from_args(["-params", "ent_coef:lin_0.01", "learning_rate:3e-4", "clip_range:lin_0.2"])
    assert cfg.hyperparams == {"ent_coef": "lin_0.01", "learning_rate": 3e-4, "clip_range": "lin_0.2"}
    assert schedules.starts(cfg.hyperparams) == {"ent_coef": 0.01, "learning_rate": 3e-4, "clip_range": 0.2}


def test_learning_rate_and_clip_range_become_sb3_schedules_that_fall_to_zero():
    built = schedules.as_algorithm_kwargs(
        {"learning_rate": "lin_0.001", "clip_range": "lin_0.2", "ent_coef": "lin_0.5"}
    )
    assert isinstance(built["learning_rate"], LinearSchedule) and isinstance(built["clip_range"], LinearSchedule)
    assert built["learning_rate"](1.0) == pytest.approx(0.001) and built["learning_rate"](0.25) == pytest.approx(
        0.00025
    )
    assert built["clip_range"](0.0) == pytest.approx(0.0)
    assert built["ent_coef"] == 0.5  # the start: EntropySchedule moves it


@pytest.mark.parametrize("key, value", [("ent_coef", "lin_"), ("ent_coef", "lin_nan"), ("clip_range", "lin_inf")])
def test_a_schedule_without_a_finite_start_is_refused(key, value):
    with pytest.raises(ConfigError, match=rf"^-params {key}='{value}' is invalid: must be lin_ and a number >= 0"):
        schedules.starts({key: value})


@pytest.mark.parametrize("algo", ["ppo", "ppo_attention"])
def test_entropy_coefficient_falls_linearly_to_zero_over_the_run(algo, tmp_path):
    """Set before each update from the model's own step counts: 4 rollouts of 2 x 64 steps use 3/4, 1/2, 1/4, 0 of the start."""
    seen = []

    class Watch(
        BaseCallback
    ):  # what the coefficient is as each rollout starts (the last update used it) and at the end
        def _on_rollout_start(self):
            seen.append(self.model.ent_coef)

        def _on_training_end(self):
            seen.append(self.model.ent_coef)

        def _on_step(self):
            return True

    cfg = config_from_args(
        ["--algo", algo, "--env-kwargs", "corridor_length:3", "-n", "512", "--n-envs", "2", "--eval-freq", "-1"]
        + ["--save-freq", "-1", "--verbose", "0", "-f", str(tmp_path), "-params", "n_steps:64", "ent_coef:lin_0.2"]
    )
    result = train(cfg, [Watch()])
    assert result.timesteps == 512
    assert seen == pytest.approx([0.2, 0.15, 0.1, 0.05, 0.0])
