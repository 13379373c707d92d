"""XLA implementation: a scan over vocabulary chunks (the CPU default; only a ``[N, chunk]`` block is live)."""

import jax
import jax.numpy as jnp

from pallas_kernels.mtp_draft import blockmath

DEFAULT_BLOCK_V = 2048


def _chunks(w: jax.Array, block_v: int) -> tuple[int, jax.Array]:
    """``(block_v, [chunks, D, block_v] blocks of w)``, the last zero-padded; a small vocabulary is one chunk."""
    dim, vocab = w.shape
    block_v = min(block_v, vocab)
    chunks = -(-vocab // block_v)
    return block_v, jnp.pad(w, ((0, 0), (0, chunks * block_v - vocab))).reshape(dim, chunks, block_v).transpose(1, 0, 2)


def _columns(index: jax.Array, block_v: int) -> jax.Array:
    return index * block_v + jnp.arange(block_v, dtype=jnp.int32)[None, :]


def chunked_draft_tokens(h: jax.Array, w: jax.Array, seeds: jax.Array, temperature: float, block_v: int) -> tuple[jax.Array, jax.Array]:
    vocab = w.shape[1]
    block_v, blocks = _chunks(w, block_v)
    seeds = seeds[:, None]

    def fold(stats, chunk):
        index, block = chunk
        columns = _columns(index, block_v)
        z = jnp.dot(h, block, preferred_element_type=jnp.float32) / temperature
        return blockmath.update_stats(stats, z, columns < vocab, columns, seeds), None

    stats, _ = jax.lax.scan(fold, blockmath.init_stats(h.shape[0]), (jnp.arange(blocks.shape[0], dtype=jnp.int32), blocks))
    tokens, logp = blockmath.finalize_stats(stats)
    return tokens[:, 0], logp[:, 0]


def chunked_residual_tokens(target: jax.Array, h: jax.Array, w: jax.Array, seeds: jax.Array, temperature: float, block_v: int) -> jax.Array:
    (rows, vocab), seeds = target.shape, seeds[:, None]
    block_v, blocks = _chunks(w, block_v)
    indices = jnp.arange(blocks.shape[0], dtype=jnp.int32)
    targets = jnp.pad(target, ((0, 0), (0, blocks.shape[0] * block_v - vocab))).reshape(rows, -1, block_v).transpose(1, 0, 2)
    logits = lambda block: jnp.dot(h, block, preferred_element_type=jnp.float32) / temperature

    def fold_lse(stats, chunk):
        index, block = chunk
        return blockmath.update_lse(*stats, jnp.where(_columns(index, block_v) < vocab, logits(block), -jnp.inf)), None

    (running_max, sumexp), _ = jax.lax.scan(fold_lse, blockmath.init_lse(rows), (indices, blocks))
    lse = running_max + jnp.log(sumexp)

    def fold_residual(stats, chunk):
        index, block, target_block = chunk
        columns = _columns(index, block_v)
        return blockmath.update_residual(stats, logits(block), target_block, lse, columns < vocab, columns, seeds), None

    stats, _ = jax.lax.scan(fold_residual, blockmath.init_residual(rows), (indices, blocks, targets))
    return blockmath.finalize_residual(stats)[:, 0]
