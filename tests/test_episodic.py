"""The episodic memory's two paths (rollout cache, training sequences) against each other and the stateless extractor.

All three must give the same features with the same weights: several envs, padding early in
episodes, episode boundaries inside a rollout and memory carried across a rollout boundary.

The memory is causal: a step's layer outputs are computed when it is newest. The stateless
extractor's causal form is ``attention="local"`` with ``window=W``; its ``"global"`` attention lets
older steps see newer ones in all but the last block, so with one block the two are the same.
"""

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from rlattn import EpisodicTransformer, HistoryAttentionExtractor, HistoryObservation
from rlattn.attention import MultiHeadAttention
from rlattn.episodic import EpisodicMemory
from rlattn.rotary import rotary_tables, rotate

TOL = dict(rtol=1e-5, atol=1e-5)


class RandomEpisodes(gym.Env):
    """Random observations, episodes of 1 .. max_length steps, random rewards: data for the paths to agree on."""

    def __init__(self, max_length: int):
        self.observation_space = spaces.Box(-1, 1, (3,), np.float32)
        self.action_space = spaces.Discrete(3)
        self.max_length = max_length

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._left = int(self.np_random.integers(1, self.max_length + 1))
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

    def step(self, action):
        self._left -= 1
        obs = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        return obs, float(self.np_random.normal()), self._left <= 0, False, {}


def play(n_envs: int, n_steps: int, window: int, max_length: int):
    """Histories of ``window`` steps from ``HistoryObservation``, each step's token (its newest slot), episode starts.

    Returns the wrapper's space, histories {key: (B, T, K, ...)}, tokens (B, T, D), starts (B, T) bool.
    """
    histories, starts = [], []
    for b in range(n_envs):
        env = HistoryObservation(RandomEpisodes(max_length), window, include_action=True, include_reward=True)
        env.action_space.seed(b)
        obs, _ = env.reset(seed=b)
        steps, begins, start = [], [], True
        for _ in range(n_steps):
            steps.append(obs)
            begins.append(start)
            obs, _, terminated, _, _ = env.step(env.action_space.sample())
            start = terminated
            if terminated:
                obs, _ = env.reset()
        histories.append({key: np.stack([s[key] for s in steps]) for key in obs})
        starts.append(begins)
    history = {key: torch.as_tensor(np.stack([h[key] for h in histories])) for key in histories[0]}
    tokens = torch.cat([history["obs"][:, :, -1], history["action"][:, :, -1], history["reward"][:, :, -1]], dim=-1)
    return env.observation_space, history, tokens, torch.as_tensor(starts)


def models(space, window, n_layers, gate="gru", attention="local", position="rotary", length_scale=False):
    """A history extractor (local attention of ``window`` steps, or global) and an episodic transformer with the same weights and positions."""
    torch.manual_seed(0)
    pattern = {"attention": "local", "window": window} if attention == "local" else {}
    extractor = HistoryAttentionExtractor(
        space,
        features_dim=12,
        embed_dim=16,
        n_heads=2,
        n_layers=n_layers,
        gate=gate,
        position=position,
        length_scale=length_scale,
        **pattern,
    )
    for p in extractor.parameters():  # larger than init so that attention is far from uniform
        p.data.normal_(0, 0.5)
    net = EpisodicTransformer(extractor.step_dim, window, 12, 16, 2, n_layers, gate, position, length_scale)
    net.load_state_dict(extractor.state_dict())
    return extractor, net


def run_cache(net, tokens, starts, carry_at):
    """The rollout path step by step: features (B, T, F), positions (B, T), and the memory carried in at ``carry_at``."""
    memory = net.initial_memory(tokens.shape[0])
    outs, positions, carried = [], [], None
    with torch.no_grad():
        for t in range(tokens.shape[1]):
            if t == carry_at:
                carried = memory.carried()
            memory.reset(starts[:, t])
            positions.append(memory.t)
            outs.append(net.step(tokens[:, t], memory))
    return torch.stack(outs, 1), torch.stack(positions, 1), carried


@pytest.mark.parametrize(
    "history, window, n_layers, max_length, gate, attention, position",
    [
        (12, 12, 2, 12, "gru", "local", "rotary"),
        (9, 9, 3, 9, "residual", "local", "rotary"),
        (3, 3, 1, 10, "gru", "global", "rotary"),
        (4, 4, 1, 10, "residual", "local", "rotary"),
        (12, 3, 2, 12, "gru", "local", "rotary"),
        (9, 9, 2, 9, "residual", "local", "none"),
        (4, 4, 1, 10, "residual", "local", "none"),
        (12, 12, 2, 12, "gru", "local", "rotary+length_scale"),
        (3, 3, 1, 10, "gru", "global", "rotary+length_scale"),
    ],
    ids=[
        "fits-2-layers",
        "fits-3-layers",
        "truncated-1-layer",
        "truncated-1-layer-residual",
        "long-history-2-layers",
        "fits-2-layers-no-positions",
        "truncated-1-layer-no-positions",
        "fits-2-layers-length-scaled",
        "truncated-1-layer-length-scaled",
    ],
)
def test_cache_sequence_and_stateless_extractor_agree(history, window, n_layers, max_length, gate, attention, position):
    """Multi-layer with a history of W steps: the episode so far fits in it. One layer: also beyond it.

    With a history longer than the episode and local attention of W steps, deeper layers see as far
    back as the cache's do (L x (W - 1) steps), so those agree too.
    """
    space, history, tokens, starts = play(n_envs=4, n_steps=30, window=history, max_length=max_length)
    assert starts[:, 1:].any() and not starts[:, 13].all()  # boundaries inside, memory carried across 13
    position, _, scaled = position.partition("+")
    extractor, net = models(space, window, n_layers, gate, attention, position, length_scale=bool(scaled))
    cached, positions, carried = run_cache(net, tokens, starts, carry_at=13)
    with torch.no_grad():
        empty = net.initial_memory(4).carried()
        first = net.sequence(tokens[:, :13], positions[:, :13], starts[:, :13], empty)
        second = net.sequence(tokens[:, 13:], positions[:, 13:], starts[:, 13:], carried)
        B, T = starts.shape
        stateless = extractor({key: value.flatten(0, 1) for key, value in history.items()}).view(B, T, -1)
    torch.testing.assert_close(torch.cat([first, second], 1), cached, **TOL)
    torch.testing.assert_close(stateless, cached, **TOL)


@pytest.mark.parametrize(
    "chunk, position, scaled", [(1, "rotary", False), (3, "rotary", False), (5, "none", False), (8, "rotary", True)]
)
def test_long_rollouts_encoded_in_chunks_give_the_same_features_and_gradients(chunk, position, scaled):
    """Chunks of queries, each against the carried prefix and the W - 1 steps before it, against all
    keys at once: the same features and the same gradients, episodes ending inside and across chunks."""
    space, history, tokens, starts = play(n_envs=3, n_steps=30, window=5, max_length=9)
    _, net = models(space, 5, 2, position=position, length_scale=scaled)
    _, positions, carried = run_cache(net, tokens, starts, carry_at=8)
    net.double()  # sums in another order: equal up to rounding, which double precision keeps far below TOL
    carried = dataclasses.replace(carried, hidden=carried.hidden.double())
    inputs = (tokens[:, 8:].double(), positions[:, 8:], starts[:, 8:], carried)
    assert net.query_chunk(22) == 22  # by default a rollout this short is one chunk

    def features_and_grads(chunk_steps):
        net.chunk_steps = chunk_steps
        net.zero_grad()
        out = net.sequence(*inputs)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in net.parameters()]

    whole, whole_grads = features_and_grads(None)
    net.chunk_steps = chunk
    assert net.query_chunk(22) == chunk  # 22 steps > 2 chunks: chunked
    parts, part_grads = features_and_grads(chunk)
    torch.testing.assert_close(parts, whole, **TOL)
    for part, full in zip(part_grads, whole_grads, strict=True):
        torch.testing.assert_close(part, full, **TOL)


def test_deeper_layers_reach_beyond_the_window_like_transformer_xl():
    """With 2 layers and episodes longer than W, the cache differs from the W-step history (it sees further)."""
    space, history, tokens, starts = play(n_envs=2, n_steps=20, window=3, max_length=20)
    extractor, net = models(space, 3, 2)
    cached, _, _ = run_cache(net, tokens, starts, carry_at=0)
    with torch.no_grad():
        stateless = extractor({key: value.flatten(0, 1) for key, value in history.items()}).view(2, 20, -1)
    torch.testing.assert_close(stateless[:, :3], cached[:, :3], **TOL)  # the first W steps fit
    assert not torch.allclose(stateless[:, 10:], cached[:, 10:], atol=1e-3)


def test_sequence_gradients_reach_every_parameter_and_not_the_carried_memory():
    space, history, tokens, starts = play(n_envs=3, n_steps=16, window=5, max_length=8)
    _, net = models(space, 5, 2)
    _, positions, carried = run_cache(net, tokens, starts, carry_at=8)
    carried.hidden.requires_grad_(True)
    net.sequence(tokens[:, 8:], positions[:, 8:], starts[:, 8:], carried).square().sum().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert carried.hidden.grad is None


def test_rotary_scores_depend_only_on_the_position_difference_even_far_into_an_episode():
    q, k = torch.randn(2, 8, dtype=torch.float64).float().unbind(0)

    def score(i, j):
        cq, sq = rotary_tables(torch.tensor(i), 8)
        ck, sk = rotary_tables(torch.tensor(j), 8)
        return (rotate(q, cq, sq) * rotate(k, ck, sk)).sum()

    for gap in (0, 1, 7, 63):
        torch.testing.assert_close(score(100_000, 100_000 - gap), score(gap, 0), **TOL)


def test_attention_step_matches_the_full_attention_pass():
    """One query against a cache written step by step equals the newest row of a rotary full pass."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 2)
    x = torch.randn(3, 5, 16)
    keys, values = torch.zeros(3, 2, 5, 8), torch.zeros(3, 2, 5, 8)
    valid = torch.zeros(3, 5, dtype=torch.bool)
    start = torch.tensor([0, 1000, 99_990])  # absolute positions: only differences matter
    for t in range(5):
        slot = (start + t) % 5
        valid[torch.arange(3), slot] = True
        out, _ = attn.step(x[:, t], start + t, keys, values, slot, valid)
    full, _ = attn(x, torch.ones(3, 5, dtype=torch.bool), n_queries=1, positions=torch.arange(5))
    torch.testing.assert_close(out, full[:, 0], **TOL)


def test_attention_maps_match_the_stateless_extractor_and_leave_memory_unchanged():
    space, history, tokens, starts = play(n_envs=3, n_steps=9, window=12, max_length=12)
    extractor, net = models(space, 12, 2)
    memory = net.initial_memory(3)
    with torch.no_grad():
        for t in range(9):
            memory.reset(starts[:, t])
            net.step(tokens[:, t], memory)
    before = memory.clone()
    weights, positions = net.attention_maps(memory)
    for name in ("hidden", "keys", "values", "position", "valid", "t"):
        assert torch.equal(getattr(before, name), getattr(memory, name)), name
    assert weights.shape == (3, 2, 2, 12)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 2))
    assert torch.all(weights[positions[:, None, None].expand_as(weights) < 0] == 0)
    expected = extractor.attention_maps({key: value[:, -1] for key, value in history.items()})  # (B, L, H, K)
    order = positions.argsort(dim=1)  # slots in episode order; invalid (-1) first, as padding comes first
    reordered = weights.gather(-1, order[:, None, None].expand_as(weights))
    torch.testing.assert_close(reordered, expected, **TOL)


def test_reset_forgets_only_the_starting_envs():
    net = EpisodicTransformer(4, window=3, features_dim=8, embed_dim=8, n_heads=2, n_layers=1)
    memory: EpisodicMemory = net.initial_memory(2, extras_dim=2)
    memory.extras = torch.ones(2, 2)
    with torch.no_grad():
        net.step(torch.randn(2, 4), memory)
    memory.reset(torch.tensor([True, False]))
    assert memory.t.tolist() == [0, 1] and memory.valid.sum(1).tolist() == [0, 1]
    assert memory.extras.tolist() == [[0, 0], [1, 1]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"window": 0}, "memory=0"),
        ({"embed_dim": 10, "n_heads": 2}, "embed_dim=10 is invalid with n_heads=2"),
        ({"n_layers": 0}, "n_layers=0"),
        ({"gate": "lstm"}, "gate='lstm'"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EpisodicTransformer(**{"input_dim": 3, "window": 4, "embed_dim": 16, "n_heads": 2, **kwargs})


def test_rotary_extractor_checks_its_head_size_and_position_kind():
    space = spaces.Dict({"obs": spaces.Box(-1, 1, (4, 3), np.float32), "valid": spaces.Box(0, 1, (4,), np.float32)})
    with pytest.raises(ValueError, match="position='sinusoidal'"):
        HistoryAttentionExtractor(space, position="sinusoidal")
    with pytest.raises(ValueError, match="embed_dim=10 is invalid with position='rotary'"):
        HistoryAttentionExtractor(space, embed_dim=10, n_heads=2, position="rotary")
    assert "position" not in dict(HistoryAttentionExtractor(space, position="rotary").named_parameters())
