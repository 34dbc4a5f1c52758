"""``train.py --replay RUN``: play a trained run, print how it did, write a GIF of what it attended to and a JSON of the numbers."""

from __future__ import annotations

import json
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from PIL import Image
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.utils import check_for_correct_spaces
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecFrameStack

from agents.callbacks import TARGET_KEYS
from agents.checks import check_int_flag, check_writable, first_line
from agents.config import ConfigError, StoppedEarly, TrainConfig
from agents.evaluate import success_flags
from agents.plan import SEED_MAX, RunPlan, make_env, resolve
from agents.presets import env_family
from agents.registry import ALGOS, is_image
from agents.run import REPLAY_FLAGS, check_only_changes
from agents.runfolder import as_started, find_model, load_run_config, write_atomic
from rlattn import HistoryAttentionExtractor
from rlattn.callbacks import find_attention_extractor, heatmap_image, like_training, patch_weights, policy_input
from rlattn.overlay import box_mass, frame_rgb, overlay

FRAME_MS = 350
RECORD_KEYS = {"model", "episodes", "returns", "video", "frames"}
"""what every replay record holds (:meth:`ReplayResult.record`): a JSON file with them is one a replay wrote"""


def record_path(video: Path) -> Path:
    """Where the replay record of the GIF at ``video`` goes: beside it, ``.json`` for ``.gif``."""
    return video.with_suffix(".json")


def check_record_path(video: Path) -> None:
    """A replay writes its GIF and record over earlier replays' alone: a record path held by any other file
    (``RUN/result.gif`` beside the run's ``result.json``, say) is refused, before the episodes are played."""
    record = record_path(video)
    for path in (video, record):
        if path.is_dir():
            raise ConfigError(f"--video {video} cannot be written: {path} is a folder; give --video another .gif name")
    if not record.exists():
        return
    try:
        written = json.loads(record.read_text())
        ours = isinstance(written, dict) and RECORD_KEYS <= set(written)
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise ConfigError(
            f"--video {video}: its replay record {record} (the GIF's name with .json) would replace a file that no "
            "replay wrote: give --video another .gif name"
        )


@dataclass(frozen=True)
class ReplayResult:
    model_path: Path
    returns: list[float]
    successes: list[bool]
    target_masses: list[float]
    """attention on the target's patches at each episode's last decision (patch extractors only)"""
    video: Path
    frames: int

    def record(self) -> dict[str, Any]:
        """What the JSON beside the GIF holds (for benchmarks: nothing parses stdout)."""
        return {
            "model": str(self.model_path),
            "episodes": len(self.returns),
            "returns": self.returns,
            "success_rate": float(np.mean(self.successes)) if self.successes else None,
            "target_mass": float(np.mean(self.target_masses)) if self.target_masses else None,
            "target_masses": self.target_masses,
            "video": str(self.video),
            "frames": self.frames,
        }

    def summary(self) -> str:
        rate = f"{np.mean(self.successes):.2f}" if self.successes else "n/a"
        mass = f"{np.mean(self.target_masses):.3f}" if self.target_masses else "n/a"
        return (
            f"replay of {self.model_path}: success {rate} over {len(self.returns)} episodes | "
            f"mean return {np.mean(self.returns):.3f} | target mass {mass} | {self.frames} frames written to {self.video}"
        )


def _make_env(plan: RunPlan, seed: int) -> VecEnv:
    """One env, wrapped as the policy saw it in training, that renders rgb arrays."""
    cfg = plan.config
    env_kwargs = plan.eval_env_kwargs  # replay plays the evaluation task

    def make() -> gym.Env:
        env: gym.Env | None = None
        with warnings.catch_warnings():  # gymnasium warns where the env does not list the mode: checked below
            warnings.simplefilter("ignore")
            try:
                env = make_env(cfg.env, **env_kwargs, render_mode="rgb_array")
            except (TypeError, AssertionError):  # an env without render modes, or without this one
                pass
        if env is None or "rgb_array" not in env.metadata.get("render_modes", ()):
            if env is not None:
                env.close()
            env = make_env(cfg.env, **env_kwargs)  # no frames: the attention is drawn alone (_picture)
        return plan.wrap(env)

    venv: VecEnv = DummyVecEnv([make])
    venv.seed(seed)
    return VecFrameStack(venv, plan.history, channels_order="first") if plan.observation == "stack" else venv


def _history_weights(model: BaseAlgorithm, obs: Any, state: Any) -> np.ndarray | None:
    """The last block's attention over the steps a decision saw, oldest first: (H, K), or None."""
    if callable(getattr(model, "attention_maps", None)):  # an episodic memory: the weights are in its state
        weights, positions = model.attention_maps(state)  # type: ignore[attr-defined]
        order = np.argsort(positions[0].cpu().numpy(), kind="stable")
        seen = order[positions[0].cpu().numpy()[order] >= 0]
        return weights[0, -1].cpu().numpy()[:, seen]
    extractor = find_attention_extractor(model.policy)
    if not isinstance(extractor, HistoryAttentionExtractor):
        return None
    history = policy_input(model.policy, obs)
    assert isinstance(history, dict)  # the history extractor reads HistoryObservation dicts
    return extractor.attention_maps(history)[0, -1].cpu().numpy()  # (1, layers, H, K) -> the last block's


def _picture(
    model: BaseAlgorithm, venv: VecEnv, obs: Any, info: dict, target_key: str | None, state: Any = None
) -> tuple[np.ndarray, float | None]:
    """What the agent saw and where it looked (the overlay on images, the render plus a heatmap
    otherwise), and the attention mass on the target's box where there is one. ``state``: what
    ``predict`` returned for this observation."""
    extractor = find_attention_extractor(model.policy)
    if is_image(venv.observation_space) or isinstance(obs, dict) and obs["obs"].ndim == 5:
        if isinstance(obs, dict):
            frame = obs["obs"][0, -1]
        elif isinstance(venv, VecFrameStack):
            frame = obs[0, -(venv.venv.observation_space.shape or (0,))[0] :]  # the newest frame's channels
        else:
            frame = obs[0]
        box = info.get(target_key) if target_key else None
        look_maps = getattr(model.policy, "look_maps", None)
        look = look_maps(state) if callable(look_maps) else None
        if look is not None:  # an episodic memory's look over the frame (AttentionPPO's PatchPolicy)
            weights = look[0].mean(0).cpu().numpy()
        elif extractor is None or isinstance(extractor, HistoryAttentionExtractor):
            return np.repeat(np.repeat(frame_rgb(frame), 4, axis=0), 4, axis=1), None
        else:
            weights = patch_weights(extractor, policy_input(model.policy, obs))
        mass = box_mass(weights, frame.shape[-2:], box) if box is not None else None
        return overlay(frame, weights, box), mass
    rendered = venv.get_images()[0] if venv.render_mode == "rgb_array" else None
    history_weights = _history_weights(model, obs, state)
    if rendered is None:
        if history_weights is None:
            raise ConfigError(
                f"--replay has nothing to draw: the env renders no rgb_array frames (its render_mode is "
                f"{venv.render_mode!r}) and the policy has no attention over a history to show instead"
            )
        return heatmap_image(history_weights, np.zeros(history_weights.shape[-1])), None  # the attention alone
    picture = np.asarray(rendered, dtype=np.uint8)
    if history_weights is not None:
        strip = heatmap_image(history_weights, np.zeros(history_weights.shape[-1]), min_width=picture.shape[1])
        picture = np.concatenate([_pad_width(picture, strip.shape[1]), _pad_width(strip, picture.shape[1])], axis=0)
    return picture, None


def _pad_width(image: np.ndarray, width: int) -> np.ndarray:
    return np.pad(image, ((0, 0), (0, max(0, width - image.shape[1])), (0, 0)))


def reports_success(folder: Path) -> bool:
    """Whether the run's evaluations saw its env report ``is_success`` (``evaluations.npz`` holds successes)."""
    try:
        with np.load(folder / "evaluations.npz") as saved:
            return "successes" in saved and saved["successes"].size > 0
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return False


def play(model: BaseAlgorithm, venv: VecEnv, episodes: int, target_key: str | None, reports: bool = False):
    """Deterministic episodes: returns, successes, attention masses on the target at the last decision
    of each episode (where measured), and one picture per decision. ``reports``: the env is known to
    report ``is_success`` (an episode without it is then a failure, even if none reports it here)."""
    obs = venv.reset()
    info = venv.reset_infos[0] if hasattr(venv, "reset_infos") else {}
    state, start = None, np.ones(1, dtype=bool)
    returns: list[float] = []
    ended: list[Any] = []
    masses: list[float] = []
    pictures: list[np.ndarray] = []
    total = 0.0
    while len(returns) < episodes:
        action, state = model.predict(obs, state=state, episode_start=start, deterministic=True)  # type: ignore[arg-type]
        picture, mass = _picture(model, venv, obs, info, target_key, state)
        pictures.append(picture)
        obs, reward, done, infos = venv.step(action)
        total += float(reward[0])
        start = done
        info = infos[0]
        if done[0]:
            returns.append(total)
            total = 0.0
            ended.append(info.get("is_success"))
            if mass is not None:
                masses.append(mass)
            info = venv.reset_infos[0] if hasattr(venv, "reset_infos") else {}
    return returns, success_flags(ended, reports), masses, pictures


def write_gif(pictures: list[np.ndarray], path: Path) -> None:
    height = max(p.shape[0] for p in pictures)
    width = max(p.shape[1] for p in pictures)
    frames = [Image.fromarray(np.pad(p, ((0, height - p.shape[0]), (0, width - p.shape[1]), (0, 0)))) for p in pictures]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(
        path, lambda target: frames[0].save(target, save_all=True, append_images=frames[1:], duration=FRAME_MS, loop=0)
    )


def replay(cfg: TrainConfig) -> ReplayResult:
    """Load the run's model with its saved settings, play ``--episodes`` episodes, write the GIF."""
    folder, model_file = find_model(cfg.replay or "")
    check_only_changes(cfg, REPLAY_FLAGS, "replaying (--replay)")
    if isinstance(cfg.episodes, bool) or not isinstance(cfg.episodes, int) or cfg.episodes < 1:
        raise ConfigError(f"--episodes {cfg.episodes!r} is invalid: must be an integer >= 1")
    check_int_flag("--seed", cfg.seed, low=0, high=SEED_MAX)
    check_int_flag("--verbose", cfg.verbose, low=0, high=2)
    saved = load_run_config(folder, f"--replay {cfg.replay!r}")
    # the run where it is now: its own log folder, no TensorBoard (a replay writes none; a moved run's may be gone)
    where = replace(saved, device=cfg.device, verbose=0, log_folder=str(folder.parent), tensorboard_log=None)
    plan = as_started(resolve(where), folder)
    video = Path(cfg.video) if cfg.video else folder / "replay.gif"
    if video.suffix.lower() != ".gif":
        raise ConfigError(f"--video {cfg.video!r} is invalid: must end in .gif")
    check_writable(str(video.parent), "--video")  # before the episodes are played, not after
    check_record_path(video)
    try:
        model = ALGOS[saved.algo].cls.load(model_file, device=cfg.device)
    except Exception as error:
        raise ConfigError(
            f"--replay {str(model_file)!r} cannot be loaded as {saved.algo}: {first_line(error)}"
        ) from None
    venv = _make_env(plan, cfg.seed)
    try:  # a model copied in from another run: SB3 checks nothing when loaded without an env
        # against the env as SB3 wrapped it for training (channel-last image stacks moved channels first)
        check_for_correct_spaces(
            like_training(venv, model.observation_space), model.observation_space, model.action_space
        )
    except ValueError as error:
        venv.close()
        raise ConfigError(
            f"--replay {str(model_file)!r} does not fit the run's env ({saved.env} as the run saw it): {first_line(error)}"
        ) from None
    try:
        target_key = TARGET_KEYS.get(env_family(saved.env))
        returns, successes, masses, pictures = play(model, venv, cfg.episodes, target_key, reports_success(folder))
    except KeyboardInterrupt:
        raise StoppedEarly("interrupted during the replay; no GIF or record was written") from None
    finally:
        venv.close()
    result = ReplayResult(model_file, returns, successes, masses, video, len(pictures))
    text = json.dumps(result.record(), indent=2) + "\n"
    try:  # each written beside and renamed into place: whole or not there
        write_gif(pictures, video)
        write_atomic(record_path(video), lambda path: path.write_text(text))
    except KeyboardInterrupt:
        raise StoppedEarly(
            f"interrupted while writing the replay's GIF and record ({video}): each file is whole or was not replaced"
        ) from None
    return result
