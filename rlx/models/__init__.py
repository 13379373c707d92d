"""Flax NNX models. They know nothing about RL."""

from rlx.models.config import ModelConfig
from rlx.models.hf import CheckpointError, PretrainedModel, save_pretrained
from rlx.models.hf_config import UnsupportedCheckpointError
from rlx.models.kv_cache import KVCache
from rlx.models.moe import MoEBlock
from rlx.models.multimodal import ModalityEmbeddings, merge_modality_embeddings
from rlx.models.qwen3 import Qwen3
from rlx.models.weights import create_params, from_pretrained, init_params, load_params

__all__ = [
    "CheckpointError", "KVCache", "ModalityEmbeddings", "ModelConfig", "MoEBlock", "PretrainedModel", "Qwen3",
    "UnsupportedCheckpointError", "create_params", "from_pretrained", "init_params", "load_params", "merge_modality_embeddings",
    "save_pretrained",
]
