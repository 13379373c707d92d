"""Hugging Face `config.json` <-> `ModelConfig` for Qwen3 and Qwen3-MoE.

Every field that changes the forward math is either carried over or rejected with an
error naming it; fields that only matter to Hugging Face (token ids, `use_cache`, the
library version) are kept verbatim so an export writes them back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlx.models.config import ModelConfig

ARCHITECTURES = {"qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}
_DTYPES = {"float32": "float32", "bfloat16": "bfloat16"}


class UnsupportedCheckpointError(ValueError):
    """A checkpoint uses an architecture or a setting that rlx does not implement."""


def read_hf_config(path: str | Path) -> dict[str, Any]:
    """The `config.json` of a Hugging Face model directory."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise UnsupportedCheckpointError(f"{path}: no config.json; expected a Hugging Face model directory")
    return json.loads(config_file.read_text())


def architecture_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """The `ModelConfig` fields a Hugging Face Qwen3 / Qwen3-MoE config fixes (everything but dtypes and
    rlx's own choices such as `attention_impl`), refusing settings rlx does not implement."""
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise UnsupportedCheckpointError(
            f"config.json: model_type {model_type!r} is not supported; rlx loads {', '.join(sorted(ARCHITECTURES))}"
        )
    _reject_unsupported(hf)
    heads = hf["num_attention_heads"]
    # Hugging Face's own fallbacks when head_dim is absent: 128 for Qwen3, hidden / heads for MoE.
    head_dim = hf.get("head_dim") or (128 if model_type == "qwen3" else hf["hidden_size"] // heads)
    fields: dict[str, Any] = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        rope_theta=float(_rope_theta(hf)),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_seq_len=hf.get("max_position_embeddings", 32768),
        num_experts=0,
    )
    if model_type == "qwen3_moe":
        fields.update(
            num_experts=hf.get("num_experts") or hf.get("num_local_experts") or 128,
            num_experts_per_tok=hf.get("num_experts_per_tok", 8),
            moe_intermediate_size=hf.get("moe_intermediate_size", 768),
            norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
            decoder_sparse_step=hf.get("decoder_sparse_step") or 1,
            mlp_only_layers=tuple(hf.get("mlp_only_layers") or ()),
        )
    return fields


def architecture_mismatches(config: ModelConfig, hf: dict[str, Any]) -> list[str]:
    """`model.<field> = <config's> but config.json gives <checkpoint's>` for each architecture field that differs."""
    return [
        f"model.{name} = {getattr(config, name)!r} but config.json gives {value!r}"
        for name, value in architecture_from_hf(hf).items() if getattr(config, name) != value
    ]


def model_config_from_hf(hf: dict[str, Any], dtype: str | None = None) -> ModelConfig:
    """The `ModelConfig` of a Hugging Face Qwen3 / Qwen3-MoE config; `dtype` overrides the checkpoint's."""
    fields = architecture_from_hf(hf)
    checkpoint_dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    chosen = dtype or checkpoint_dtype
    if chosen not in _DTYPES:
        raise UnsupportedCheckpointError(f"dtype {chosen!r} is not supported; pass dtype='float32' or 'bfloat16'")
    return ModelConfig(**fields, dtype=chosen, param_dtype=chosen)


def hf_config_from_model_config(config: ModelConfig, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """config.json for `config`; keys of `base` that rlx does not model (token ids, ...) are kept."""
    moe = config.num_experts > 0
    model_type = "qwen3_moe" if moe else "qwen3"
    out = {k: v for k, v in (base or {}).items() if k not in ("rope_parameters", "num_local_experts", "torch_dtype")}
    out.update(
        architectures=[ARCHITECTURES[model_type]],
        model_type=model_type,
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        rope_theta=config.rope_theta,
        rope_scaling=None,
        rms_norm_eps=config.rms_norm_eps,
        tie_word_embeddings=config.tie_word_embeddings,
        max_position_embeddings=config.max_seq_len,
        hidden_act="silu",
        attention_bias=False,
        use_sliding_window=False,
        dtype=config.param_dtype,
    )
    if moe:
        out.update(
            num_experts=config.num_experts,
            num_experts_per_tok=config.num_experts_per_tok,
            moe_intermediate_size=config.moe_intermediate_size,
            norm_topk_prob=config.norm_topk_prob,
            decoder_sparse_step=config.decoder_sparse_step,
            mlp_only_layers=list(config.mlp_only_layers),
        )
    return out


def _rope_theta(hf: dict[str, Any]) -> float:
    parameters = hf.get("rope_parameters") or {}
    return hf.get("rope_theta") or parameters.get("rope_theta") or 10_000.0


def _reject_unsupported(hf: dict[str, Any]) -> None:
    scaling = hf.get("rope_scaling") or {}
    parameters = hf.get("rope_parameters") or {}
    for where, rope in (("rope_scaling", scaling), ("rope_parameters", parameters)):
        kind = rope.get("rope_type") or rope.get("type") or "default"
        if kind != "default":
            raise UnsupportedCheckpointError(
                f"config.json: {where} = {rope} asks for {kind!r} RoPE scaling, which rlx does not implement; "
                "remove it (plain RoPE, shorter context) or add that scaling to rlx.models.layers.rope"
            )
    checks = [
        ("attention_bias", bool(hf.get("attention_bias", False)), "q/k/v/o projection biases"),
        ("use_sliding_window", bool(hf.get("use_sliding_window", False)), "sliding-window attention"),
        ("hidden_act", hf.get("hidden_act", "silu") != "silu", f"activation {hf.get('hidden_act')!r} (only silu)"),
        ("attention_dropout", float(hf.get("attention_dropout", 0.0) or 0.0) != 0.0, "attention dropout"),
        ("quantization_config", "quantization_config" in hf, "quantized weights"),
        ("layer_types", any(t != "full_attention" for t in hf.get("layer_types") or ()), "non-full attention layers"),
    ]
    for field, bad, what in checks:
        if bad:
            raise UnsupportedCheckpointError(f"config.json: {field} = {hf.get(field)!r} needs {what}, which rlx does not implement")
