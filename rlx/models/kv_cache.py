"""Key/value cache laid out by column: column `j` of every row holds that row's j-th token."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rlx.models.config import ModelConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    k: jax.Array  # [layers, batch, max_len, kv_heads, head_dim]
    v: jax.Array

    @classmethod
    def zeros(cls, config: ModelConfig, batch: int, max_len: int) -> "KVCache":
        shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
        dtype = jnp.dtype(config.dtype)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, layer: int, k: jax.Array, v: jax.Array, index: jax.Array | int) -> tuple["KVCache", jax.Array, jax.Array]:
        """Writes `k, v [batch, steps, ...]` at column `index` of `layer`; returns that layer's full k, v.

        `index` is one column for every row, or `[batch]` columns (decode slots at different lengths).
        """
        index = jnp.asarray(index, jnp.int32)
        layer_k = _write_columns(self.k[layer], k.astype(self.k.dtype), index)
        layer_v = _write_columns(self.v[layer], v.astype(self.v.dtype), index)
        return KVCache(self.k.at[layer].set(layer_k), self.v.at[layer].set(layer_v)), layer_k, layer_v


def _write_columns(layer: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
    if index.ndim == 0:
        return jax.lax.dynamic_update_slice(layer, new, (0, index, 0, 0))
    write_row = lambda row, values, column: jax.lax.dynamic_update_slice(row, values, (column, 0, 0))
    return jax.vmap(write_row)(layer, new, index)
