"""XLA implementation: ``lax.scan`` over vocabulary chunks, online log-sum-exp.

Only chunk-sized buffers are live (``[N, block_v]`` logits and their
gradient, a ``[D, block_v]`` slice of ``dw``), forward and backward. The backward recomputes each chunk's logits from ``h`` and ``w``
(one extra ``N x D x V`` matmul) instead of storing ``[N, V]``.

The vocabulary size rarely divides the chunk width (Qwen3's 151,936 =
2^7 * 1187), and padding ``w`` would copy the whole unembedding. Instead the
last chunk is shifted left to end at ``V``; the columns it shares with the
previous chunk are masked out of the statistics and of ``dh``.

Known XLA:CPU cost: it has no bfloat16 dynamic-slice, so for bfloat16 ``w`` its
float-normalization pass converts the whole ``w`` to float32 and hoists that
copy out of the loop (``4 * D * V`` bytes, 1.5 GB at Qwen3 sizes). GPU and
TPU slice bfloat16 natively; on CPU, float32 inputs avoid the copy.
"""

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from pallas_kernels.fused_logprob import blockmath, fused_vjp

# Tuned on a 2-core AMD EPYC CPU at N = 1024, D = 2560: matmul throughput is
# flat from 1024 to 8192 columns, while the live chunk buffers grow with the
# width (about 48 MiB at 2048, 200 MiB at 8192, against 594 MiB for one
# float32 [N, V] logits array).
DEFAULT_BLOCK_V = 2048


def _chunk_logits(h, w, index, width, inv_t):
    """Logits of chunk ``index``: ``(w_chunk, start, z, owned, cols)``.

    ``owned`` marks the columns this chunk is the first to cover.
    """
    vocab = w.shape[1]
    owned_from = index * width
    start = jnp.minimum(owned_from, vocab - width)
    w_chunk = lax.dynamic_slice_in_dim(w, start, width, axis=1)
    z = jnp.dot(h, w_chunk, preferred_element_type=jnp.float32) * inv_t
    cols = start + lax.broadcasted_iota(jnp.int32, (1, width), 1)
    return w_chunk, start, z, cols >= owned_from, cols


def _geometry(vocab: int, block_v: int) -> tuple[int, int]:
    width = min(block_v, vocab)
    return width, -(-vocab // width)


class Settings(NamedTuple):
    """Static parameters (hashable: a custom-VJP nondiff argument)."""

    temperature: float
    block_v: int  # chunk width along the vocabulary


def _forward(h, w, targets, settings: Settings):
    width, count = _geometry(w.shape[1], settings.block_v)

    def body(stats, index):
        _, _, z, owned, cols = _chunk_logits(h, w, index, width, 1.0 / settings.temperature)
        hit = owned & (cols == targets[:, None])
        return blockmath.update_stats(stats, z, owned, hit), None

    stats, _ = lax.scan(body, blockmath.init_stats(h.shape[0]), jnp.arange(count))
    return blockmath.finalize_stats(stats)


def _backward(h, w, targets, lse, entropy, g_logp, g_entropy, settings: Settings):
    """``dh = dz @ w^T / T`` and ``dw = h^T @ dz / T``, one chunk at a time."""
    g_logp, g_entropy = g_logp[:, None], g_entropy[:, None]
    width, count = _geometry(w.shape[1], settings.block_v)
    inv_t = 1.0 / settings.temperature

    def body(carry, index):
        dh, dw = carry
        w_chunk, start, z, owned, cols = _chunk_logits(h, w, index, width, inv_t)
        # A column's logit gradient depends on nothing but that column, so the
        # shifted last chunk may recompute and overwrite the columns it shares
        # with its neighbour in dw; only the sum into dh must skip them.
        dz = blockmath.logit_grad(z, True, cols == targets[:, None], lse, entropy, g_logp, g_entropy)
        dz = (dz * inv_t).astype(w.dtype)
        dh = dh + lax.dot_general(
            jnp.where(owned, dz, jnp.zeros_like(dz)), w_chunk, (((1,), (1,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
        dw_chunk = lax.dot_general(h, dz, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        dw = lax.dynamic_update_slice_in_dim(dw, dw_chunk.astype(w.dtype), start, axis=1)
        return (dh, dw), None

    init = (jnp.zeros(h.shape, jnp.float32), jnp.zeros(w.shape, w.dtype))
    (dh, dw), _ = lax.scan(body, init, jnp.arange(count))
    return dh.astype(h.dtype), dw


# ``(h, w, targets, Settings) -> (logp [N], entropy [N])``, float32; inputs are
# assumed validated (see ``dispatch``).
chunked_token_logprobs_and_entropy = fused_vjp.fused_op(_forward, _backward)
