"""XLA implementation: a scan over vocabulary chunks (the CPU default; only a ``[N, chunk]`` block is live)."""

import jax
import jax.numpy as jnp

from pallas_kernels.mtp_draft import blockmath

DEFAULT_BLOCK_V = 2048


def chunked_draft_tokens(h: jax.Array, w: jax.Array, seeds: jax.Array, temperature: float, block_v: int) -> tuple[jax.Array, jax.Array]:
    (dim, vocab), rows = w.shape, h.shape[0]
    block_v = min(block_v, vocab)  # a small vocabulary is one chunk, not padded to a block of mostly nothing
    chunks = -(-vocab // block_v)
    blocks = jnp.pad(w, ((0, 0), (0, chunks * block_v - vocab))).reshape(dim, chunks, block_v).transpose(1, 0, 2)
    seeds = seeds[:, None]

    def fold(stats, chunk):
        index, block = chunk
        columns = index * block_v + jnp.arange(block_v, dtype=jnp.int32)[None, :]
        z = jnp.dot(h, block, preferred_element_type=jnp.float32) / temperature
        return blockmath.update_stats(stats, z, columns < vocab, columns, seeds), None

    stats, _ = jax.lax.scan(fold, blockmath.init_stats(rows), (jnp.arange(chunks, dtype=jnp.int32), blocks))
    tokens, logp = blockmath.finalize_stats(stats)
    return tokens[:, 0], logp[:, 0]
