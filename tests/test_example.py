"""The README's "use it in your own SB3 code" script runs end to end (tiny budget; learning is not asserted)."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPT = EXAMPLES / "cartpole_no_velocity.py"


def load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cartpole_example_trains_and_evaluates(capsys):
    spec = importlib.util.spec_from_file_location("cartpole_no_velocity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    env = module.cartpole_without_velocity()
    assert env.observation_space.shape == (2,) and env.reset(seed=0)[0].shape == (2,)
    mean_return = module.main(timesteps=2048)
    printed = capsys.readouterr().out.split("mean return over 10 episodes: ")[1].split(" ")[0]
    assert float(printed) == round(mean_return, 1) and 8.0 <= mean_return <= 500.0


def test_visual_search_example_trains_and_evaluates(capsys):
    rate = load(EXAMPLES / "visual_search_patches.py").main(timesteps=2048)
    printed = capsys.readouterr().out.split("success over 100 searches: ")[1].strip()
    assert float(printed) == round(rate, 2) and (rate * 100) == pytest.approx(round(rate * 100))  # 100 outcomes


def test_cartpole_attention_ppo_example_trains_and_evaluates(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))  # as when run as a script: it imports its sibling
    mean_return = load(EXAMPLES / "cartpole_attention_ppo.py").main(timesteps=2048)
    printed = capsys.readouterr().out.split("mean return over 10 episodes: ")[1].split(" ")[0]
    assert float(printed) == round(mean_return, 1) and 8.0 <= mean_return <= 500.0
