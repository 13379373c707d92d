"""Pallas TPU kernel (Mosaic; interpret mode anywhere): grid ``(N/bn, V/bv)``, the vocabulary a reduction
axis carried in VMEM scratch across consecutive grid steps, as the fused log-prob's TPU kernels do.

Each step computes one ``[bn, bv]`` logit block ``h_blk @ w_blk / T`` and folds it into the online draft
statistics (``blockmath``); the last vocabulary step writes the token and its log-prob. Reads past the end
of ``h`` or ``w`` are undefined (NaN in interpret mode): columns ``>= V`` are masked before any reduction,
rows ``>= N`` are never written back. Settings and the call (parallel rows, sequential vocabulary) are the
fused log-prob's.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.fused_logprob.pallas import Settings, _call
from pallas_kernels.mtp_draft import blockmath

def _draft_kernel(h_ref, w_ref, seed_ref, token_ref, logp_ref, *scratch, temperature, vocab, block_v):
    col_block = pl.program_id(1)

    @pl.when(col_block == 0)
    def _():
        for ref, value in zip(scratch, blockmath.init_stats(h_ref.shape[0])):
            ref[...] = value

    z = jnp.dot(h_ref[...], w_ref[...], preferred_element_type=jnp.float32) / temperature
    columns = col_block * block_v + lax.broadcasted_iota(jnp.int32, (1, block_v), 1)
    stats = blockmath.update_stats(blockmath.DraftStats(*(ref[...] for ref in scratch)), z, columns < vocab, columns, seed_ref[...])
    for ref, value in zip(scratch, stats):
        ref[...] = value

    @pl.when(col_block == pl.num_programs(1) - 1)
    def _():
        token_ref[...], logp_ref[...] = blockmath.finalize_stats(stats)


def pallas_draft_tokens(h: jax.Array, w: jax.Array, seeds: jax.Array, settings: Settings) -> tuple[jax.Array, jax.Array]:
    (rows, dim), vocab = h.shape, w.shape[1]
    block_n, block_v = settings.block_n, settings.block_v
    row_spec = pl.BlockSpec((block_n, 1), lambda i, j: (i, 0))
    stat_dtypes = [jnp.int32 if name == "token" else jnp.float32 for name in blockmath.DraftStats._fields]
    tokens, logp = _call(
        functools.partial(_draft_kernel, temperature=settings.temperature, vocab=vocab, block_v=block_v),
        grid=(pl.cdiv(rows, block_n), pl.cdiv(vocab, block_v)),
        in_specs=[pl.BlockSpec((block_n, dim), lambda i, j: (i, 0)), pl.BlockSpec((dim, block_v), lambda i, j: (0, j)), row_spec],
        out_specs=[row_spec, row_spec],
        out_shape=[jax.ShapeDtypeStruct((rows, 1), jnp.int32), jax.ShapeDtypeStruct((rows, 1), jnp.float32)],
        scratch_shapes=[pltpu.VMEM((block_n, 1), dtype) for dtype in stat_dtypes],
        interpret=settings.interpret,
    )(h, w, seeds[:, None])
    return tokens[:, 0], logp[:, 0]


def _residual_kernel(target_ref, h_ref, w_ref, seed_ref, token_ref, max_ref, sumexp_ref, *residual, temperature, vocab, block_v, blocks):
    step = pl.program_id(1)  # steps 0 .. blocks - 1: q's log-sum-exp; then the residual's Gumbel-max
    col_block = lax.rem(step, blocks)

    @pl.when(step == 0)
    def _():
        max_ref[...], sumexp_ref[...] = blockmath.init_lse(h_ref.shape[0])
        for ref, value in zip(residual, blockmath.init_residual(h_ref.shape[0])):
            ref[...] = value

    z = jnp.dot(h_ref[...], w_ref[...], preferred_element_type=jnp.float32) / temperature
    columns = col_block * block_v + lax.broadcasted_iota(jnp.int32, (1, block_v), 1)
    valid = columns < vocab

    @pl.when(step < blocks)
    def _():
        max_ref[...], sumexp_ref[...] = blockmath.update_lse(max_ref[...], sumexp_ref[...], jnp.where(valid, z, -jnp.inf))

    @pl.when(step >= blocks)
    def _():
        lse = max_ref[...] + jnp.log(sumexp_ref[...])
        stats = blockmath.update_residual(blockmath.ResidualStats(*(ref[...] for ref in residual)), z, target_ref[...], lse, valid,
                                          columns, seed_ref[...])
        for ref, value in zip(residual, stats):
            ref[...] = value

        @pl.when(step == 2 * blocks - 1)
        def _():
            token_ref[...] = blockmath.finalize_residual(stats)


def pallas_residual_tokens(target: jax.Array, h: jax.Array, w: jax.Array, seeds: jax.Array, settings: Settings) -> jax.Array:
    """Grid ``(N/bn, 2 V/bv)``: the vocabulary twice, q's log-sum-exp then the residual draw (``blockmath``)."""
    (rows, dim), vocab = h.shape, w.shape[1]
    block_n, block_v = settings.block_n, settings.block_v
    blocks = pl.cdiv(vocab, block_v)
    row_spec = pl.BlockSpec((block_n, 1), lambda i, j: (i, 0))
    # The first pass reads no target: its block index stays put, so nothing is fetched again.
    target_spec = pl.BlockSpec((block_n, block_v), lambda i, j: (i, lax.max(j - blocks, 0)))
    stat_dtypes = [jnp.int32 if name.endswith("token") else jnp.float32 for name in blockmath.ResidualStats._fields]
    tokens = _call(
        functools.partial(_residual_kernel, temperature=settings.temperature, vocab=vocab, block_v=block_v, blocks=blocks),
        grid=(pl.cdiv(rows, block_n), 2 * blocks),
        in_specs=[target_spec, pl.BlockSpec((block_n, dim), lambda i, j: (i, 0)),
                  pl.BlockSpec((dim, block_v), lambda i, j: (0, lax.rem(j, blocks))), row_spec],
        out_specs=row_spec,
        out_shape=jax.ShapeDtypeStruct((rows, 1), jnp.int32),
        scratch_shapes=[pltpu.VMEM((block_n, 1), dtype) for dtype in [jnp.float32, jnp.float32, *stat_dtypes]],
        interpret=settings.interpret,
    )(target, h, w, seeds[:, None])
    return tokens[:, 0]
