"""One pre-norm Qwen3 decoder layer: attention, then a SwiGLU or Qwen3-MoE MLP, each added to the residual stream."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlx.models.attention import Attention
from rlx.models.config import ModelConfig
from rlx.models.kv_cache import KVCache
from rlx.models.layers import RMSNorm, SwiGLU
from rlx.models.moe import MoEBlock


class DecoderLayer(nnx.Module):
    def __init__(self, config: ModelConfig, moe: bool, *, rngs: nnx.Rngs):
        dt = jnp.dtype(config.param_dtype)
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, "embed", param_dtype=dt, rngs=rngs)
        self.attn = Attention(config, rngs=rngs)
        self.post_attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, "embed", param_dtype=dt, rngs=rngs)
        self.is_moe = moe
        if moe:
            self.mlp = MoEBlock(config, rngs=rngs)
        else:
            self.mlp = SwiGLU(config.hidden_size, config.intermediate_size, param_dtype=dt, rngs=rngs)

    def __call__(self, x, positions, q_columns, start, cache, layer, cache_index, kv_len, routes=None):
        """(x, cache, the router's own routes [B, S, k] or None for a dense layer); `routes` are replayed (MoE only)."""
        attended, cache = self.attn(self.input_norm(x), positions, q_columns, start, cache, layer, cache_index, kv_len)
        x = x + attended
        mlp_in = self.post_attn_norm(x)
        if not self.is_moe:
            return x + self.mlp(mlp_in), cache, None
        mlp_out, own = self.mlp(mlp_in, routes)
        return x + mlp_out, cache, own

    def write_keys_values(self, x: jax.Array, positions: jax.Array, cache: KVCache, layer: jax.Array | int,
                          cache_index: jax.Array | int) -> KVCache:
        """`cache` with the attention keys and values of this layer's input `x [B, S, D]` written at `cache_index` of
        `layer`, as a call would write them, without computing the layer's output (what later columns attend to)."""
        k, v = self.attn.keys_values(self.input_norm(x), positions)
        return cache.write(layer, k, v, cache_index)
