"""Qwen3 decoder in Flax NNX: RMSNorm, RoPE, GQA with q/k norm, SwiGLU or Qwen3-MoE experts, optional tied embeddings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlx.models.attention import Attention, attention_mask
from rlx.models.config import ModelConfig
from rlx.models.kv_cache import KVCache
from rlx.models.layers import RMSNorm, SwiGLU, param
from rlx.models.moe import MoEBlock
from rlx.models.multimodal import ModalityEmbeddings, merge_modality_embeddings


class DecoderLayer(nnx.Module):
    def __init__(self, config: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        dt = jnp.dtype(config.param_dtype)
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, "embed", param_dtype=dt, rngs=rngs)
        self.attn = Attention(config, rngs=rngs)
        self.post_attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, "embed", param_dtype=dt, rngs=rngs)
        self.is_moe = config.is_moe_layer(layer)
        if self.is_moe:
            self.mlp = MoEBlock(config, rngs=rngs)
        else:
            self.mlp = SwiGLU(config.hidden_size, config.intermediate_size, param_dtype=dt, rngs=rngs)

    def __call__(self, x, positions, mask, cache, layer, cache_index):
        attended, cache = self.attn(self.input_norm(x), positions, mask, cache, layer, cache_index)
        x = x + attended
        mlp_in = self.post_attn_norm(x)
        mlp_out = self.mlp(mlp_in)[0] if self.is_moe else self.mlp(mlp_in)
        return x + mlp_out, cache


class Qwen3(nnx.Module):
    """Decoder-only transformer over left-padded rows.

    Column `j` of row `b` holds a real token iff `j >= start[b]`; its rotary position is
    `j - start[b]`. With a cache, the `S` new tokens sit at columns
    `cache_index .. cache_index + S - 1` (`cache_index` is an int, or `[B]` for one column per row).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        if config.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size is unresolved; call config.with_vocab(tokenizer.vocab_size)")
        self.config = config
        dt = jnp.dtype(config.param_dtype)
        self.embed = param(rngs, nnx.initializers.normal(0.02), (config.vocab_size, config.hidden_size), ("vocab", "embed"), dt)
        self.layers = nnx.List([DecoderLayer(config, i, rngs=rngs) for i in range(config.num_layers)])
        self.final_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, "embed", param_dtype=dt, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = param(rngs, nnx.initializers.normal(0.02), (config.hidden_size, config.vocab_size), ("embed", "vocab"), dt)

    def unembedding(self) -> jax.Array:
        """[hidden, vocab] matrix that maps final hidden states to logits."""
        if self.config.tie_word_embeddings:
            return self.embed[...].T
        return self.lm_head[...]

    def hidden_states(
        self,
        input_ids: jax.Array,
        *,
        start: jax.Array | None = None,
        cache: KVCache | None = None,
        cache_index: jax.Array | int = 0,
        modality: ModalityEmbeddings | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Final-normed hidden states [B, S, hidden] (and the updated cache)."""
        batch, steps = input_ids.shape
        if start is None:
            start = jnp.zeros((batch,), jnp.int32)
        cache_index = jnp.asarray(cache_index, jnp.int32)
        columns = cache_index[..., None] + jnp.arange(steps, dtype=jnp.int32)  # [S], or [B, S] per-row indices
        positions = jnp.maximum(jnp.atleast_2d(columns) - start[:, None], 0)
        num_keys = steps if cache is None else cache.max_len
        mask = attention_mask(start, columns, num_keys)
        dtype = jnp.dtype(self.config.dtype)
        x = merge_modality_embeddings(self.embed[...][input_ids].astype(dtype), modality)
        for index, layer in enumerate(self.layers):
            x, cache = layer(x, positions, mask, cache, index, cache_index)
        return self.final_norm(x), cache

    def __call__(self, input_ids: jax.Array, **kwargs) -> tuple[jax.Array, KVCache | None]:
        """Float32 logits [B, S, vocab] (and the updated cache); keyword arguments as `hidden_states`."""
        hidden, cache = self.hidden_states(input_ids, **kwargs)
        logits = jnp.einsum("bsd,dv->bsv", hidden, self.unembedding().astype(hidden.dtype), preferred_element_type=jnp.float32)
        return logits, cache
