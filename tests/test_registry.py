"""The registry: an extractor or an algorithm of one's own is one entry plus its class, and train.py takes it."""

import json

import pytest
import torch
from gymnasium import spaces
from sb3_contrib import TRPO
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from agents import AlgoEntry, ExtractorEntry, register_algo, register_extractor
from agents.cli import build_parser, main
from agents.registry import ALGOS, EXTRACTORS


class MeanHistoryExtractor(BaseFeaturesExtractor):
    """A small extractor of one's own: the mean of the valid steps of a history, then a Linear layer."""

    def __init__(self, observation_space: spaces.Dict, features_dim: int = 8):
        super().__init__(observation_space, features_dim)
        self.linear = nn.Linear(observation_space["obs"].shape[-1], features_dim)

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        valid = observations["valid"][..., None]
        mean = (observations["obs"] * valid).sum(1) / valid.sum(1).clamp_min(1)
        return torch.relu(self.linear(mean))


@pytest.fixture
def registered():
    """Register one extractor and one algorithm for a test, and only for it."""
    register_extractor(ExtractorEntry("mean-history", MeanHistoryExtractor, "vector", "history", "mean of the steps"))
    register_algo(AlgoEntry("trpo", TRPO, "sb3-contrib's TRPO"))
    yield
    del EXTRACTORS["mean-history"], ALGOS["trpo"]


def test_a_registered_extractor_and_algorithm_train_through_the_command_line(registered, tmp_path, capsys):
    args = [
        "--env-kwargs",
        "corridor_length:3",
        "-n",
        "256",
        "--n-envs",
        "2",
        "--eval-freq",
        "128",
        "-params",
        "n_steps:64",
    ]
    args += ["--eval-episodes", "2", "--save-freq", "-1", "--verbose", "0", "-f", str(tmp_path)]
    assert main(["--algo", "trpo", "--extractor", "mean-history", "--history", "4", *args]) == 0
    run = tmp_path / "trpo" / "rlattn-TMaze-v0_1"
    result = json.loads((run / "result.json").read_text())
    assert result["env_steps"] == 256 and result["evaluation"]["episodes"] == 2
    assert result["settings"]["extractor"] == "mean-history" and result["settings"]["history"] == 4
    assert isinstance(TRPO.load(run / "rlattn-TMaze-v0.zip").policy.features_extractor, MeanHistoryExtractor)
    actions = build_parser()._option_string_actions  # the help texts before argparse wraps them
    assert "mean-history (mean of the steps)" in actions["--extractor"].help
    assert "trpo (sb3-contrib's TRPO)" in actions["--algo"].help and "trpo" in actions["--algo"].choices


def test_messages_list_the_registered_names(registered, capsys):
    assert main(["--extractor", "nope"]) == 2
    assert "allowed are attention, " in capsys.readouterr().err.strip()
    assert main(["--env", "rlattn/VisualSearch-v0", "--extractor", "mean-history"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("train.py: error: --extractor mean-history embeds vectors")
    assert error.endswith("use patch-attention, spatiotemporal-attention, cnn or cnn-stack")
    assert main(["--extractor", "patch-attention"]) == 2
    assert "mlp-stack or mean-history" in capsys.readouterr().err


def test_entries_are_checked():
    with pytest.raises(ValueError, match="view one of"):
        ExtractorEntry("x", MeanHistoryExtractor, "vector", "sideways", "?")
    with pytest.raises(ValueError, match="memory='lstm' is invalid"):
        register_algo(AlgoEntry("x", TRPO, "?", memory="lstm"))
    assert "x" not in ALGOS
