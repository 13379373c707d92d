"""Architecture hyper-parameters of a Qwen3-style decoder."""

from __future__ import annotations

import dataclasses
from typing import Literal

DType = Literal["float32", "bfloat16"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Qwen3 dense decoder. `vocab_size: null` takes the tokenizer's size."""

    vocab_size: int | None = None
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    rope_theta: float = 10_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    max_seq_len: int = 64
    dtype: DType = "float32"
    param_dtype: DType = "float32"

    def __post_init__(self) -> None:
        for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1 or null (take the tokenizer's), got {self.vocab_size}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0:
            raise ValueError("rope_theta and rms_norm_eps must be > 0")

    def with_vocab(self, tokenizer_vocab_size: int) -> "ModelConfig":
        """Resolves `vocab_size` against the tokenizer: fills it in, or checks it is large enough."""
        if self.vocab_size is None:
            return dataclasses.replace(self, vocab_size=tokenizer_vocab_size)
        if self.vocab_size < tokenizer_vocab_size:
            raise ValueError(
                f"model.vocab_size = {self.vocab_size} is smaller than the tokenizer's "
                f"{tokenizer_vocab_size} tokens; set it to null or >= {tokenizer_vocab_size}"
            )
        return self
