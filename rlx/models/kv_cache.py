"""Key/value cache laid out by column: column `j` of every row holds that row's j-th token.

A bfloat16 cache is stored as its raw 16-bit words (`uint16`, bit-identical): XLA's CPU backend
has no bfloat16 scatter or dynamic-update-slice and would copy the whole cache to float32 for
every in-place write (twice the cache in temporaries); an integer array is updated in place on
every backend, and `read` reinterprets the words at no cost.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rlx.models.config import ModelConfig

# Logical names of the cache's dims, for the sharding rules (`rlx.parallel.presets`).
CACHE_AXES = ("layers", "batch", "cache_seq", "kv_heads", "head_dim")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    k: jax.Array  # [layers, batch, max_len, kv_heads, head_dim]
    v: jax.Array

    @classmethod
    def zeros(cls, config: ModelConfig, batch: int, max_len: int) -> "KVCache":
        """An empty cache for the compute dtype (`config.dtype`); inside `jit` it is made where its sharding says."""
        shape = cls.shape(config, batch, max_len)
        dtype = _STORED.get(jnp.dtype(config.dtype), jnp.dtype(config.dtype))
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

    @property
    def dtype(self) -> jnp.dtype:
        """The dtype `read` returns (the compute dtype), whatever the stored words are."""
        return _LOADED.get(jnp.dtype(self.k.dtype), jnp.dtype(self.k.dtype))

    @staticmethod
    def shape(config: ModelConfig, batch: int, max_len: int) -> tuple[int, ...]:
        """`[layers, batch, max_len, kv_heads, head_dim]`, named by `CACHE_AXES`."""
        return (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def write(self, layer: jax.Array | int, k: jax.Array, v: jax.Array, index: jax.Array | int) -> "KVCache":
        """Writes `k, v [batch, steps, ...]` of `layer` (may be traced) at column `index` onwards.

        `index` is one column for every row, or `[batch]` columns (decode slots at different lengths).
        """
        index = jnp.asarray(index, jnp.int32)
        store = lambda x: _as_words(x.astype(self.dtype), self.k.dtype)
        return KVCache(_write(self.k, layer, store(k), index), _write(self.v, layer, store(v), index))

    def read(self, layer: jax.Array | int, length: int | None = None) -> tuple[jax.Array, jax.Array]:
        """`layer`'s keys and values `[batch, length, ...]`: the first `length` columns (default all)."""
        length = self.max_len if length is None else length
        take = lambda x: _as_words(jax.lax.dynamic_slice(x, (layer, 0, 0, 0, 0), (1, x.shape[1], length, *x.shape[3:]))[0], self.dtype)
        return take(self.k), take(self.v)


_STORED = {jnp.dtype(jnp.bfloat16): jnp.dtype(jnp.uint16)}  # compute dtype -> stored dtype
_LOADED = {stored: compute for compute, stored in _STORED.items()}


def _as_words(x: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """`x` reinterpreted bit for bit as `dtype` (same width), or itself when it already is."""
    return x if x.dtype == dtype else jax.lax.bitcast_convert_type(x, dtype)


def _write(cache: jax.Array, layer: jax.Array | int, new: jax.Array, index: jax.Array) -> jax.Array:
    if index.ndim == 0:
        return jax.lax.dynamic_update_slice(cache, new[None], (layer, 0, index, 0, 0))
    batch, steps = new.shape[:2]
    rows = jnp.arange(batch)[:, None]
    columns = index[:, None] + jnp.arange(steps)[None, :]
    # Out-of-range columns (a full slot) are dropped, as dynamic_update_slice would clamp them.
    return cache.at[layer, rows, columns].set(new, mode="drop")
