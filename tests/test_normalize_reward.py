"""``normalize_reward``: training rewards scaled by the return's running spread, evaluation on the env's own rewards."""

import numpy as np
import pytest
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

from agents.build import make_vec, resolve
from agents.cli import config_from_args
from agents.config import ConfigError
from agents.run import train


class StatisticsAtStart(BaseCallback):
    """The training env's return statistics as training starts (after a resume has restored them)."""

    def _on_training_start(self) -> None:
        normalization = self.model.get_vec_normalize_env()
        assert normalization is not None
        self.count, self.var = normalization.ret_rms.count, normalization.ret_rms.var.copy()

    def _on_step(self) -> bool:
        return True


FAST = ["--n-envs", "2", "--eval-episodes", "2", "--eval-freq", "256", "--save-freq", "256", "--verbose", "0"]


def plan_for(*args: str):
    return resolve(config_from_args(list(args)))


@pytest.mark.parametrize("algo", ["ppo", "ppo_lstm", "ppo_attention"])
def test_envs_outside_our_families_get_it_by_default_and_ours_do_not(algo):
    assert plan_for("--algo", algo, "--env", "CartPole-v1").normalize_reward is True
    assert plan_for("--algo", algo, "--env", "rlattn/TMaze-v0").normalize_reward is False
    assert (
        plan_for("--algo", algo, "--env", "CartPole-v1", "-params", "normalize_reward:False").normalize_reward is False
    )
    assert plan_for("--algo", algo, "--env", "rlattn/TMaze-v0", "-params", "normalize_reward:True").normalize_reward


def test_a_value_that_is_not_a_bool_is_one_line_naming_it():
    with pytest.raises(ConfigError, match=r"^-params normalize_reward:1 is invalid: must be True or False$"):
        plan_for("--env", "CartPole-v1", "-params", "normalize_reward:1")


def test_training_rewards_are_scaled_and_evaluation_rewards_are_not():
    plan = plan_for("--algo", "ppo", "--extractor", "mlp", "--env", "CartPole-v1", "-params", "gamma:0.9")
    training, evaluation = make_vec(plan, 2, seed=0), make_vec(plan, 2, seed=0, evaluation=True)
    assert isinstance(training, VecNormalize) and training.norm_reward and not training.norm_obs
    assert training.gamma == 0.9  # the return it estimates is the algorithm's
    assert isinstance(evaluation, VecNormalize) and not evaluation.norm_reward and not evaluation.training
    for venv in (training, evaluation):
        venv.reset()
    for _ in range(50):
        actions = np.zeros(2, dtype=np.int64)
        _, scaled, _, _ = training.step(actions)
        _, raw, _, _ = evaluation.step(actions)
        assert np.all(raw == 1.0)  # CartPole pays 1 a step
    assert training.ret_rms.count > 50 and np.all(scaled < 1.0)  # the spread of returns near 10 exceeds 1
    assert training.get_original_reward().tolist() == [1.0, 1.0]


def test_every_save_keeps_the_statistics_and_resume_continues_them(tmp_path):
    result = train(
        config_from_args(["--algo", "ppo_attention", "--env", "CartPole-v1", "-n", "1024", *FAST, "-f", str(tmp_path)])
    )
    folder = result.folder
    for model in folder.glob("*.zip"):
        assert (folder / f"{model.stem}_vecnormalize.pkl").is_file(), model.name
    assert result.evaluation is not None and result.evaluation.mean_return > 5  # raw CartPole returns, not scaled
    checkpoint = folder / "rl_model_512_steps.zip"
    saved = VecNormalize.load(str(folder / "rl_model_512_steps_vecnormalize.pkl"), make_vec_env("CartPole-v1", 1))

    record = StatisticsAtStart()
    resumed = train(config_from_args(["-i", str(checkpoint), "-n", "1536", "--verbose", "0"]), [record])
    assert resumed.timesteps >= 1536
    assert record.count == pytest.approx(saved.ret_rms.count)
    np.testing.assert_allclose(record.var, saved.ret_rms.var)
    assert saved.ret_rms.count > 500  # not a fresh estimate (which starts near zero)
