"""Pallas GPU kernel (Triton lowering; interpret mode anywhere): grid ``(N/bn,)``, each program loops over
the vocabulary blocks with the online draft statistics (``blockmath``) in its loop carry.

GPU programs run in parallel, so nothing is carried across grid steps (unlike the TPU kernel). Logit blocks,
settings and the call come from the fused log-prob's GPU kernels (one implementation of masked Triton tiles):
masked loads (rows ``>= N``, columns ``>= V`` and hidden slices ``>= D`` enter as zeros), a loop over
power-of-two hidden slices (Triton tiles must be powers of two, ``D`` need not be), ``z = (h @ w) * (1 / T)``.
Stores are masked to the rows that exist.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.fused_logprob.pallas_gpu import Settings, _block_logits, _call, _geometry, _Geometry, _load_rows, _load_tile, _span
from pallas_kernels.mtp_draft import blockmath


def _draft_kernel(h_ref, w_ref, seed_ref, token_ref, logp_ref, *, g: _Geometry):
    rows = _span(pl.program_id(0), g.block_n, g.rows)
    seeds = _load_rows(seed_ref, rows)
    no_targets = jnp.zeros((g.block_n, 1), jnp.int32)  # the helper also marks target columns; drafting has none

    def fold(j, stats):
        cols = _span(j, g.block_v, g.vocab)
        z, valid, _ = _block_logits(h_ref, w_ref, no_targets, rows, cols, g)
        return blockmath.update_stats(stats, z, valid, cols.index[None, :], seeds)

    stats = lax.fori_loop(0, pl.cdiv(g.vocab, g.block_v), fold, blockmath.init_stats(g.block_n))
    for ref, value in zip((token_ref, logp_ref), blockmath.finalize_stats(stats)):
        pltriton.store(ref.at[rows.slice, :], value, mask=rows.valid[:, None])


def pallas_gpu_draft_tokens(h: jax.Array, w: jax.Array, seeds: jax.Array, settings: Settings) -> tuple[jax.Array, jax.Array]:
    g = _geometry(h, w, settings)
    tokens, logp = _call(
        functools.partial(_draft_kernel, g=g),
        grid=(pl.cdiv(g.rows, g.block_n),),
        out_shape=[jax.ShapeDtypeStruct((g.rows, 1), jnp.int32), jax.ShapeDtypeStruct((g.rows, 1), jnp.float32)],
        interpret=settings.interpret,
    )(h, w, seeds[:, None])
    return tokens[:, 0], logp[:, 0]


def _residual_kernel(target_ref, h_ref, w_ref, seed_ref, token_ref, *, g: _Geometry):
    rows = _span(pl.program_id(0), g.block_n, g.rows)
    seeds = _load_rows(seed_ref, rows)
    no_targets = jnp.zeros((g.block_n, 1), jnp.int32)
    blocks = pl.cdiv(g.vocab, g.block_v)

    def fold_lse(j, lse_stats):
        z, valid, _ = _block_logits(h_ref, w_ref, no_targets, rows, _span(j, g.block_v, g.vocab), g)
        return blockmath.update_lse(*lse_stats, jnp.where(valid, z, -jnp.inf))

    running_max, sumexp = lax.fori_loop(0, blocks, fold_lse, blockmath.init_lse(g.block_n))
    lse = running_max + jnp.log(sumexp)

    def fold_residual(j, stats):
        cols = _span(j, g.block_v, g.vocab)
        z, valid, _ = _block_logits(h_ref, w_ref, no_targets, rows, cols, g)
        return blockmath.update_residual(stats, z, _load_tile(target_ref, rows, cols), lse, valid, cols.index[None, :], seeds)

    stats = lax.fori_loop(0, blocks, fold_residual, blockmath.init_residual(g.block_n))
    pltriton.store(token_ref.at[rows.slice, :], blockmath.finalize_residual(stats), mask=rows.valid[:, None])


def pallas_gpu_residual_tokens(target: jax.Array, h: jax.Array, w: jax.Array, seeds: jax.Array, settings: Settings) -> jax.Array:
    """Grid ``(N/bn,)``: each program passes over the vocabulary twice, q's log-sum-exp then the residual draw."""
    g = _geometry(h, w, settings)
    tokens = _call(
        functools.partial(_residual_kernel, g=g),
        grid=(pl.cdiv(g.rows, g.block_n),),
        out_shape=jax.ShapeDtypeStruct((g.rows, 1), jnp.int32),
        interpret=settings.interpret,
    )(target, h, w, seeds[:, None])
    return tokens[:, 0]
