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
| `splash` | Pallas splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`, TPU only) | no scores |

`auto` takes splash on TPU, cuDNN on GPU and `chunked` elsewhere; decode's query columns per row (one, or
`DECODE_QUERY_COLUMNS` when speculative decoding scores a token and its draft) use `reference`, whose scores
are then no larger than a few times the keys it reads (a key-block scan costs a decode step 2x on CPU).

Splash attention masks by segment ids and a causal mask over positions, so it needs query `s`
at key column `s` (training and a prefill that fills the cache from column 0: as many queries as
keys); other shapes (a prefill after cached columns) run `chunked`. Left padding is segment 0,
real tokens segment 1; columns are right-padded to the kernel's block size. A Pallas call is not
partitioned by XLA, so the kernel runs on each device's rows (`activation_sharding.map_rows`).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from rlx.models.activation_sharding import map_rows
from rlx.models.flash import flash_attention

ATTENTION_IMPLS = ("auto", "reference", "xla", "chunked", "cudnn", "splash")
GPU_BACKENDS = ("gpu", "cuda", "rocm")
CHUNK = 512  # key columns per block of the chunked scan
SPLASH_BLOCK = 128  # splash attention's default query and key block


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


@functools.lru_cache(maxsize=16)
def _splash_kernel(heads: int, columns: int, interpret: bool) -> Callable:
    mask = splash.MultiHeadMask([splash.CausalMask((columns, columns))] * heads)
    with jax.ensure_compile_time_eval():  # concrete mask tables, so the cached kernel outlives the trace that built it
        return splash.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q, k, v, q_columns, start, interpret: bool = False):
    """Splash attention for query `s` at key column `s` (`q_columns` is then `arange(S)` and is not read)."""
    del q_columns
    batch, steps, kv_heads, groups, dim = q.shape
    columns = -(-steps // SPLASH_BLOCK) * SPLASH_BLOCK
    pad = lambda x: jnp.pad(x, [(0, 0), (0, columns - steps)] + [(0, 0)] * (x.ndim - 2))
    heads_first = lambda x: jnp.moveaxis(pad(x), 1, 2)  # [B, heads, columns, D]
    queries = heads_first((q / jnp.sqrt(jnp.asarray(dim, q.dtype))).reshape(batch, steps, kv_heads * groups, dim))
    segments = (jnp.arange(columns)[None, :] >= start[:, None]).astype(jnp.int32)  # 0: left padding
    segments = jnp.where(jnp.arange(columns)[None, :] < steps, segments, 0)  # and the block padding on the right

    def per_device(queries, keys, values, segments):
        kernel = _splash_kernel(kv_heads * groups, columns, interpret)
        return jax.vmap(kernel)(queries, keys, values, splash.SegmentIds(segments, segments))

    out = map_rows(per_device, queries, heads_first(k), heads_first(v), segments)
    return jnp.moveaxis(out, 2, 1)[:, :steps].reshape(q.shape)


_IMPLS: dict[str, Callable] = {
    "reference": reference_attention,
    "xla": _dot_product_attention("xla"),
    "chunked": chunked_attention,
    "cudnn": _dot_product_attention("cudnn"),
    "splash": splash_attention,
}


DECODE_QUERY_COLUMNS = 2  # the most query columns per row a decode step runs (a token and its draft)


def resolve_attention_impl(impl: str, query_columns: int, backend: str | None = None, key_columns: int | None = None) -> str:
    """The implementation `impl` runs as for `query_columns` queries per row over `key_columns` keys
    (default: as many) on `backend` (default: JAX's)."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; valid names: {', '.join(ATTENTION_IMPLS)}")
    backend = jax.default_backend() if backend is None else backend
    for name, label, needs in (("cudnn", "GPU", GPU_BACKENDS), ("splash", "TPU", ("tpu",))):
        if impl == name and backend not in needs:
            raise ValueError(f"attention impl {name!r} needs a {label} backend, got {backend!r}; use 'chunked' (any backend) or 'auto'")
    if impl == "auto":
        if query_columns <= DECODE_QUERY_COLUMNS:
            return "reference"
        impl = "splash" if backend == "tpu" else "cudnn" if backend in GPU_BACKENDS else "chunked"
    if impl == "splash" and key_columns not in (None, query_columns):
        return "chunked"
    return impl


def attend(q: jax.Array, k: jax.Array, v: jax.Array, q_columns: jax.Array, start: jax.Array, impl: str = "auto") -> jax.Array:
    """softmax(q k^T / sqrt(D)) v over the visible keys, by `impl` (see the module docstring); `[B, S, KV, G, D]`."""
    return _IMPLS[resolve_attention_impl(impl, q.shape[1], key_columns=k.shape[1])](q, k, v, q_columns, start)
