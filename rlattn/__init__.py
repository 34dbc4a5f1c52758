"""rlattn: attention feature extractors and history observations for Stable-Baselines3."""

from rlattn.attention import MultiHeadAttention, attention_mask, structure_mask
from rlattn.attention_ppo import AttentionPPO
from rlattn.blocks import GRUGate, KeepsOwnInit, TransformerBlock
from rlattn.callbacks import AttentionLoggingCallback
from rlattn.episodic import EpisodicMemory, EpisodicTransformer
from rlattn.extractors import HistoryAttentionExtractor, HistoryFlattenExtractor, StepEncoder
from rlattn.image_extractors import (
    FramePatchExtractor,
    MemoryLook,
    PatchAttentionExtractor,
    SpatioTemporalAttentionExtractor,
)
from rlattn.normalize import HistoryNormalize
from rlattn.wrappers import ChannelFirst, FlatObservation, HistoryObservation

__all__ = [
    "AttentionPPO",
    "AttentionLoggingCallback",
    "ChannelFirst",
    "EpisodicMemory",
    "EpisodicTransformer",
    "FlatObservation",
    "FramePatchExtractor",
    "GRUGate",
    "HistoryAttentionExtractor",
    "HistoryFlattenExtractor",
    "HistoryNormalize",
    "HistoryObservation",
    "KeepsOwnInit",
    "MemoryLook",
    "MultiHeadAttention",
    "PatchAttentionExtractor",
    "SpatioTemporalAttentionExtractor",
    "StepEncoder",
    "TransformerBlock",
    "attention_mask",
    "structure_mask",
]

__version__ = "0.1.0"
