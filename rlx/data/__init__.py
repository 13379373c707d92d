"""Data: grain pipelines, dataset readers, tokenizers, synthetic tasks. Never calls models."""

from rlx.data.config import ArithmeticConfig, DataConfig
from rlx.data.pipeline import PromptBatch, PromptStream, encode_prompts
from rlx.data.records import MODALITIES, PromptRecord
from rlx.data.tasks import TaskData, load_task
from rlx.data.tokenizer import CharTokenizer

__all__ = [
    "MODALITIES", "ArithmeticConfig", "CharTokenizer", "DataConfig", "PromptBatch", "PromptRecord",
    "PromptStream", "TaskData", "encode_prompts", "load_task",
]
