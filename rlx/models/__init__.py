"""Flax NNX models. They know nothing about RL."""

from rlx.models.config import ModelConfig
from rlx.models.hf import CheckpointError, PretrainedModel, from_pretrained, save_pretrained
from rlx.models.hf_config import UnsupportedCheckpointError
from rlx.models.kv_cache import KVCache
from rlx.models.moe import MoEBlock
from rlx.models.multimodal import ModalityEmbeddings, merge_modality_embeddings
from rlx.models.qwen3 import Qwen3

__all__ = [
    "CheckpointError", "KVCache", "ModalityEmbeddings", "ModelConfig", "MoEBlock", "PretrainedModel", "Qwen3",
    "UnsupportedCheckpointError", "from_pretrained", "merge_modality_embeddings", "save_pretrained",
]
