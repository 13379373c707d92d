"""Grouped-query attention with q/k RMSNorm (Qwen3), reading and writing a column KV cache."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlx.models.config import ModelConfig
from rlx.models.kv_cache import KVCache
from rlx.models.layers import RMSNorm, param, rope


def attention_mask(start: jax.Array, query_columns: jax.Array, num_keys: int) -> jax.Array:
    """[B, S, T]: key column j is visible to a query at column i iff start[b] <= j <= i.

    Rows are left-padded: columns before `start[b]` are padding and never attended.
    The same rule serves training (no cache), prefill and decode. `query_columns` is
    `[S]` (shared by all rows) or `[B, S]` (decode slots at different lengths).
    """
    keys = jnp.arange(num_keys)[None, None, :]
    return (keys >= start[:, None, None]) & (keys <= jnp.atleast_2d(query_columns)[:, :, None])


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
        mask: jax.Array,
        cache: KVCache | None,
        layer: int,
        cache_index: jax.Array | int,
    ) -> tuple[jax.Array, KVCache | None]:
        cfg, dtype = self.config, x.dtype
        q = jnp.einsum("bsd,dhk->bshk", x, self.q_proj[...].astype(dtype))
        k = jnp.einsum("bsd,dhk->bshk", x, self.k_proj[...].astype(dtype))
        v = jnp.einsum("bsd,dhk->bshk", x, self.v_proj[...].astype(dtype))
        q = rope(self.q_norm(q), positions, cfg.rope_theta)
        k = rope(self.k_norm(k), positions, cfg.rope_theta)
        if cache is not None:
            cache, k, v = cache.update(layer, k, v, cache_index)
        batch, steps = x.shape[:2]
        groups = cfg.num_heads // cfg.num_kv_heads
        q = q.reshape(batch, steps, cfg.num_kv_heads, groups, cfg.head_dim)
        scores = jnp.einsum("bskgd,btkd->bkgst", q, k.astype(dtype)).astype(jnp.float32)
        scores = scores / jnp.sqrt(jnp.float32(cfg.head_dim))
        scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
        out = jnp.einsum("bkgst,btkd->bskgd", probs, v.astype(dtype))
        out = out.reshape(batch, steps, cfg.num_heads, cfg.head_dim)
        return jnp.einsum("bshk,hkd->bsd", out, self.o_proj[...].astype(dtype)), cache
