"""Flax NNX models. They know nothing about RL."""

from rlx.models.config import ModelConfig
from rlx.models.kv_cache import KVCache
from rlx.models.multimodal import ModalityEmbeddings, merge_modality_embeddings
from rlx.models.qwen3 import Qwen3

__all__ = ["KVCache", "ModalityEmbeddings", "ModelConfig", "Qwen3", "merge_modality_embeddings"]
