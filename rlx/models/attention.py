"""Grouped-query attention with q/k RMSNorm (Qwen3), reading and writing a column KV cache.

The score computation is chosen by `model.attention_impl` (see `rlx.models.attention_kernels`);
the projections, norms, rotary embedding and cache handling here are the same for all of them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlx.models.attention_kernels import attend
from rlx.models.config import ModelConfig
from rlx.models.kv_cache import KVCache
from rlx.models.layers import RMSNorm, param, rope


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        dt = jnp.dtype(config.param_dtype)
        init = nnx.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
        d, h, kv, hd = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        self.q_proj = param(rngs, init, (d, h, hd), ("embed", "q_heads", "head_dim"), dt)
        self.k_proj = param(rngs, init, (d, kv, hd), ("embed", "kv_heads", "head_dim"), dt)
        self.v_proj = param(rngs, init, (d, kv, hd), ("embed", "kv_heads", "head_dim"), dt)
        o_init = nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
        self.o_proj = param(rngs, o_init, (h, hd, d), ("q_heads", "head_dim", "embed"), dt)
        self.q_norm = RMSNorm(hd, config.rms_norm_eps, "head_dim", param_dtype=dt, rngs=rngs)
        self.k_norm = RMSNorm(hd, config.rms_norm_eps, "head_dim", param_dtype=dt, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        q_columns: jax.Array,
        start: jax.Array,
        cache: KVCache | None,
        layer: jax.Array | int,
        cache_index: jax.Array | int,
        kv_len: int | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """`x [B, S, D]` at rotary `positions` and cache columns `q_columns` (both `[B, S]`).

        With a cache, the new keys/values are written at `cache_index` of `layer` and the
        queries attend over the cache's first `kv_len` columns (default: all of them).
        """
        cfg, dtype = self.config, x.dtype
        q = jnp.einsum("bsd,dhk->bshk", x, self.q_proj[...].astype(dtype))
        q = rope(self.q_norm(q), positions, cfg.rope_theta)
        k, v = self.keys_values(x, positions)
        if cache is not None:
            cache = cache.write(layer, k, v, cache_index)
            k, v = cache.read(layer, kv_len)
        batch, steps = x.shape[:2]
        groups = cfg.num_heads // cfg.num_kv_heads
        q = q.reshape(batch, steps, cfg.num_kv_heads, groups, cfg.head_dim)
        out = attend(q, k.astype(dtype), v.astype(dtype), q_columns, start, cfg.attention_impl)
        out = out.reshape(batch, steps, cfg.num_heads, cfg.head_dim)
        return jnp.einsum("bshk,hkd->bsd", out, self.o_proj[...].astype(dtype)), cache

    def keys_values(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The keys (normed, rotated) and values `[B, S, kv_heads, head_dim]` of `x [B, S, D]` at rotary `positions`."""
        dtype = x.dtype
        k = jnp.einsum("bsd,dhk->bshk", x, self.k_proj[...].astype(dtype))
        v = jnp.einsum("bsd,dhk->bshk", x, self.v_proj[...].astype(dtype))
        return rope(self.k_norm(k), positions, self.config.rope_theta), v
