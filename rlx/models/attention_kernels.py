"""Attention score computations, one per `model.attention_impl`, all with the same inputs and visibility rule.

Inputs: q `[B, S, KV, G, D]` (G query heads share each of the KV key/value heads), k and v
`[B, T, KV, D]`, the cache column of every query `q_columns [B, S]`, and each row's first real
column `start [B]`. Key column `j` is visible to a query at column `i` of row `b` iff
`start[b] <= j <= i` (left padding plus causality); training, prefill and decode all use it.

| impl | what | memory |
|---|---|---|
| `reference` | dense float32 scores, masked softmax | `[B, H, S, T]` scores |
| `xla` | `jax.nn.dot_product_attention(implementation="xla")` | `[B, H, S, T]` scores |
| `chunked` | online-softmax scan over key blocks with a recomputing VJP (`rlx.models.flash`) | `[B, H, S, block]` |
| `cudnn` | cuDNN flash attention through `jax.nn.dot_product_attention` (GPU only) | no scores |

`auto` takes cuDNN on GPU and `chunked` elsewhere; a single query column per row (decode)
uses `reference`, whose scores are then no larger than the keys it reads.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from rlx.models.flash import flash_attention

ATTENTION_IMPLS = ("auto", "reference", "xla", "chunked", "cudnn")
GPU_BACKENDS = ("gpu", "cuda", "rocm")
CHUNK = 512  # key columns per block of the chunked scan


def visibility(q_columns: jax.Array, start: jax.Array, num_keys: int) -> jax.Array:
    """[B, S, T] bool: key column j is visible to the query at `q_columns[b, s]` iff start[b] <= j <= q_columns[b, s]."""
    keys = jnp.arange(num_keys)[None, None, :]
    return (keys >= start[:, None, None]) & (keys <= q_columns[:, :, None])


def reference_attention(q, k, v, q_columns, start):
    scores = jnp.einsum("bskgd,btkd->bkgst", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(q.shape[-1]))
    visible = visibility(q_columns, start, k.shape[1])[:, None, None]
    scores = jnp.where(visible, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgst,btkd->bskgd", probs, v)


def _dot_product_attention(implementation: str):
    def run(q, k, v, q_columns, start):
        batch, steps, kv_heads, groups, dim = q.shape
        mask = visibility(q_columns, start, k.shape[1])[:, None]  # [B, 1, S, T], shared by the heads
        out = jax.nn.dot_product_attention(q.reshape(batch, steps, kv_heads * groups, dim), k, v, mask=mask,
                                           implementation=implementation)
        return out.reshape(q.shape)
    return run


def chunked_attention(q, k, v, q_columns, start):
    return flash_attention(q / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype)), k, v, q_columns, start, CHUNK)


_IMPLS: dict[str, Callable] = {
    "reference": reference_attention,
    "xla": _dot_product_attention("xla"),
    "chunked": chunked_attention,
    "cudnn": _dot_product_attention("cudnn"),
}


def resolve_attention_impl(impl: str, query_columns: int, backend: str | None = None) -> str:
    """The implementation `impl` runs as for `query_columns` queries per row on `backend` (default: JAX's)."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; valid names: {', '.join(ATTENTION_IMPLS)}")
    backend = jax.default_backend() if backend is None else backend
    if impl == "auto":
        if query_columns == 1:
            return "reference"
        return "cudnn" if backend in GPU_BACKENDS else "chunked"
    if impl == "cudnn" and backend not in GPU_BACKENDS:
        raise ValueError(f"attention impl 'cudnn' needs a GPU backend, got {backend!r}; use 'chunked' (any backend) or 'auto'")
    return impl


def attend(q: jax.Array, k: jax.Array, v: jax.Array, q_columns: jax.Array, start: jax.Array, impl: str = "auto") -> jax.Array:
    """softmax(q k^T / sqrt(D)) v over the visible keys, by `impl` (see the module docstring); `[B, S, KV, G, D]`."""
    return _IMPLS[resolve_attention_impl(impl, q.shape[1])](q, k, v, q_columns, start)
