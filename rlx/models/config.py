"""Architecture hyper-parameters of a Qwen3-style decoder."""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

from rlx.checks import require_positive
from rlx.errors import UserError
from rlx.models.encoder_config import AudioConfig, VisionConfig
from rlx.models.mtp_config import MTPConfig

DType = Literal["float32", "bfloat16"]
AttentionImpl = Literal["auto", "reference", "xla", "chunked", "cudnn", "splash"]
MoEImpl = Literal["auto", "ragged_dot", "scan", "megablox"]
MOE_IMPLS: tuple[str, ...] = get_args(MoEImpl)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Qwen3 decoder, dense or mixture-of-experts. `vocab_size: null` takes the tokenizer's size.

    `num_experts: 0` is dense Qwen3. With experts (Qwen3-MoE), layer `i` is sparse iff
    `i not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0`, as in Hugging Face;
    each token goes to `num_experts_per_tok` SwiGLU experts of width `moe_intermediate_size`,
    weighted by the router's softmax (renormalized over the chosen experts if `norm_topk_prob`).
    `vision` and `audio` add modality encoders (see `rlx.models.encoders`); both are off by default.
    `mtp` adds multi-token-prediction drafting heads (`rlx.models.mtp`); off by default.
    `attention_impl` picks how attention scores are computed (`rlx.models.attention_kernels`):
    `auto` is Pallas splash attention on TPU, cuDNN flash attention on GPU and an online-softmax scan
    over key blocks elsewhere.
    `moe_impl` picks the experts' grouped matmul (`rlx.models.grouped_matmul`): `auto` is the
    megablox kernel on TPU, `jax.lax.ragged_dot` on GPU and a tiled scan (bounded memory) elsewhere.

    `init_from` names a Hugging Face Qwen3 / Qwen3-MoE directory (config.json + safetensors) to start
    from; its config.json fixes the architecture fields (`rlx.models.hf_config.architecture_from_hf`),
    which `rlx.config.load_config` fills in (a field set in the config too must agree). `dtype`,
    `param_dtype`, `attention_impl` and `moe_impl` stay the run's choice. Without it the weights are random.
    """

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
    attention_impl: AttentionImpl = "auto"
    num_experts: int = 0
    moe_impl: MoEImpl = "auto"
    num_experts_per_tok: int = 8
    moe_intermediate_size: int = 768
    norm_topk_prob: bool = True
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    vision: VisionConfig = VisionConfig()
    audio: AudioConfig = AudioConfig()
    mtp: MTPConfig = MTPConfig()
    init_from: str | None = None

    def __post_init__(self) -> None:
        require_positive(self, "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "max_seq_len")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1 or null (take the tokenizer's), got {self.vocab_size}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0:
            raise ValueError("rope_theta and rms_norm_eps must be > 0")
        if self.num_experts < 0:
            raise ValueError(f"num_experts must be >= 0 (0 = dense), got {self.num_experts}")
        if self.num_experts:
            if not 1 <= self.num_experts_per_tok <= self.num_experts:
                raise ValueError(f"num_experts_per_tok must be in [1, num_experts={self.num_experts}], got {self.num_experts_per_tok}")
            if self.moe_intermediate_size < 1 or self.decoder_sparse_step < 1:
                raise ValueError("moe_intermediate_size and decoder_sparse_step must be >= 1")
        if self.moe_impl not in MOE_IMPLS:
            raise ValueError(f"moe_impl must be one of {', '.join(MOE_IMPLS)}, got {self.moe_impl!r}")
        bad_layers = [i for i in self.mlp_only_layers if not 0 <= i < self.num_layers]
        if bad_layers:
            raise ValueError(f"mlp_only_layers {bad_layers} are outside [0, num_layers={self.num_layers})")

    def is_moe_layer(self, layer: int) -> bool:
        """Whether decoder layer `layer` uses the expert MLP (the Hugging Face Qwen3-MoE rule)."""
        return bool(self.num_experts) and layer not in self.mlp_only_layers and (layer + 1) % self.decoder_sparse_step == 0

    @property
    def moe_layers(self) -> int:
        """How many decoder layers use the expert MLP (the routes' `moe_layers` axis)."""
        return sum(self.is_moe_layer(layer) for layer in range(self.num_layers))

    def layer_runs(self) -> list[tuple[int, int, bool]]:
        """Maximal runs of consecutive layers of one kind: (first layer, count, is_moe). Each run is one scanned stack."""
        runs: list[tuple[int, int, bool]] = []
        for layer in range(self.num_layers):
            moe = self.is_moe_layer(layer)
            if runs and runs[-1][2] == moe:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1, moe)
            else:
                runs.append((layer, 1, moe))
        return runs

    def with_vocab(self, tokenizer_vocab_size: int) -> "ModelConfig":
        """Resolves `vocab_size` against the tokenizer: fills it in, or checks it is large enough."""
        if self.vocab_size is None:
            return dataclasses.replace(self, vocab_size=tokenizer_vocab_size)
        if self.vocab_size < tokenizer_vocab_size:
            raise UserError(
                f"model.vocab_size = {self.vocab_size} is smaller than the tokenizer's "
                f"{tokenizer_vocab_size} tokens; set it to null or >= {tokenizer_vocab_size}"
            )
        return self
