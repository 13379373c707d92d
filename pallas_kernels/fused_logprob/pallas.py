"""Pallas kernels: forward, and a backward split into a ``dh`` and a ``dw`` kernel.

Each kernel walks a 2-D grid whose last axis is a reduction carried in VMEM
scratch across consecutive grid steps, the Mosaic TPU pattern
(``dimension_semantics = ("parallel", "arbitrary")``); interpret mode runs the
grid in the same sequential order. GPU grids (Triton, Mosaic GPU) run every
step in parallel, so GPUs get their own kernels (``pallas_gpu``).

* forward, grid ``(N/bn, V/bv)``: online log-sum-exp over vocabulary blocks
  (``blockmath``), writes ``logp``, ``entropy`` and ``lse`` (saved for the
  backward) per row.
* ``dh`` kernel, grid ``(N/bn, V/bv)``: recomputes the logit block,
  ``dh += dz @ w_blk^T``.
* ``dw`` kernel, grid ``(V/bv, N/bn)``: recomputes the logit block,
  ``dw_blk += h_blk^T @ dz``.

The two backward kernels each recompute the logits (5 matmuls of ``N x D x V``
in all, against 3 for the materializing reference): a single backward kernel
would need either a ``[V/bv, N, D]`` partial-``dh`` buffer or an ``[D, V]``
float32 accumulator revisited out of order.

Edge blocks: ``N`` and ``V`` need not divide the block sizes. Reads past the
end return undefined values (NaN in interpret mode), so columns ``>= V`` and
rows ``>= N`` are masked before they can reach a reduction or a matmul
contraction; writes past the end are dropped.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.fused_logprob import blockmath, fused_vjp

# Sized for VMEM at Qwen3-4B's D = 2560 in bfloat16: the largest live set, a
# backward kernel's double-buffered h and w blocks plus its float32 [bn, D] or
# [D, bv] accumulator, is about 8 MiB, under the 16 MiB default scoped-VMEM
# limit of the smallest TPU generations. Not tuned on hardware.
DEFAULT_BLOCK_N = 256
DEFAULT_BLOCK_V = 256


def _block_logits(h, w, targets, col_block, *, inv_t, vocab, block_v):
    """Logits of one ``[bn, bv]`` block with its column masks."""
    z = jnp.dot(h, w, preferred_element_type=jnp.float32) * inv_t
    cols = col_block * block_v + lax.broadcasted_iota(jnp.int32, (1, block_v), 1)
    valid = cols < vocab
    return z, valid, valid & (cols == targets)


def _row_mask(row_block, *, rows, block_n):
    return row_block * block_n + lax.broadcasted_iota(jnp.int32, (block_n, 1), 0) < rows


def _forward_kernel(h_ref, w_ref, y_ref, logp_ref, ent_ref, lse_ref, *scratch, inv_t, vocab, block_v):
    col_block = pl.program_id(1)

    @pl.when(col_block == 0)
    def _():
        for ref, value in zip(scratch, blockmath.init_stats(h_ref.shape[0])):
            ref[...] = value

    z, valid, hit = _block_logits(
        h_ref[...], w_ref[...], y_ref[...], col_block, inv_t=inv_t, vocab=vocab, block_v=block_v
    )
    stats = blockmath.update_stats(blockmath.RowStats(*(ref[...] for ref in scratch)), z, valid, hit)
    for ref, value in zip(scratch, stats):
        ref[...] = value

    @pl.when(col_block == pl.num_programs(1) - 1)
    def _():
        logp_ref[...], ent_ref[...], lse_ref[...] = blockmath.finalize_stats(stats)


def _dh_kernel(
    h_ref, w_ref, y_ref, lse_ref, ent_ref, glogp_ref, gent_ref, dh_ref, acc_ref, *, inv_t, vocab, block_v
):
    col_block = pl.program_id(1)

    @pl.when(col_block == 0)
    def _():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    w = w_ref[...]
    z, valid, hit = _block_logits(
        h_ref[...], w, y_ref[...], col_block, inv_t=inv_t, vocab=vocab, block_v=block_v
    )
    dz = blockmath.logit_grad(z, valid, hit, lse_ref[...], ent_ref[...], glogp_ref[...], gent_ref[...])
    # Padded columns of w may be NaN and would poison the contraction over V.
    w = jnp.where(valid, w, jnp.zeros_like(w))
    acc_ref[...] += lax.dot_general(
        (dz * inv_t).astype(w.dtype), w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
    )

    @pl.when(col_block == pl.num_programs(1) - 1)
    def _():
        dh_ref[...] = acc_ref[...].astype(dh_ref.dtype)


def _dw_kernel(
    h_ref, w_ref, y_ref, lse_ref, ent_ref, glogp_ref, gent_ref, dw_ref, acc_ref,
    *, inv_t, rows, vocab, block_n, block_v,
):
    col_block, row_block = pl.program_id(0), pl.program_id(1)

    @pl.when(row_block == 0)
    def _():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    # Padded rows of h may be NaN and would poison the contraction over N.
    row_valid = _row_mask(row_block, rows=rows, block_n=block_n)
    h = h_ref[...]
    h = jnp.where(row_valid, h, jnp.zeros_like(h))
    z, valid, hit = _block_logits(
        h, w_ref[...], y_ref[...], col_block, inv_t=inv_t, vocab=vocab, block_v=block_v
    )
    dz = blockmath.logit_grad(z, valid, hit, lse_ref[...], ent_ref[...], glogp_ref[...], gent_ref[...])
    dz = jnp.where(row_valid, dz * inv_t, 0.0).astype(h.dtype)
    acc_ref[...] += lax.dot_general(h, dz, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)

    @pl.when(row_block == pl.num_programs(1) - 1)
    def _():
        dw_ref[...] = acc_ref[...].astype(dw_ref.dtype)


def _call(kernel, grid, in_specs, out_specs, out_shape, scratch_shapes, interpret):
    return pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        scratch_shapes=scratch_shapes,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=interpret,
    )


class Settings(NamedTuple):
    """Static parameters of the TPU kernels (hashable: a custom-VJP nondiff argument)."""

    temperature: float
    block_n: int
    block_v: int
    interpret: bool


def _forward(h, w, targets, settings: Settings):
    (rows, dim), vocab = h.shape, w.shape[1]
    block_n, block_v, interpret = settings.block_n, settings.block_v, settings.interpret
    row_spec = pl.BlockSpec((block_n, 1), lambda i, j: (i, 0))
    return _call(
        functools.partial(_forward_kernel, inv_t=1.0 / settings.temperature, vocab=vocab, block_v=block_v),
        grid=(pl.cdiv(rows, block_n), pl.cdiv(vocab, block_v)),
        in_specs=[
            pl.BlockSpec((block_n, dim), lambda i, j: (i, 0)),
            pl.BlockSpec((dim, block_v), lambda i, j: (0, j)),
            row_spec,
        ],
        out_specs=[row_spec] * 3,
        out_shape=[jax.ShapeDtypeStruct((rows, 1), jnp.float32)] * 3,
        scratch_shapes=[pltpu.VMEM((block_n, 1), jnp.float32)] * len(blockmath.RowStats._fields),
        interpret=interpret,
    )(h, w, targets[:, None])


def _backward_inputs_specs(dim, block_n, block_v, row_major):
    """Block specs for ``(h, w, targets, lse, entropy, g_logp, g_entropy)``.

    ``row_major`` grids are ``(row block, col block)``, the others
    ``(col block, row block)``.
    """

    def index_map(block_index):  # block_index(row block, col block) -> block
        return block_index if row_major else lambda j, i: block_index(i, j)

    row_spec = pl.BlockSpec((block_n, 1), index_map(lambda i, j: (i, 0)))
    return [
        pl.BlockSpec((block_n, dim), index_map(lambda i, j: (i, 0))),
        pl.BlockSpec((dim, block_v), index_map(lambda i, j: (0, j))),
    ] + [row_spec] * 5


def _backward(h, w, targets, lse, entropy, g_logp, g_entropy, settings: Settings):
    (rows, dim), vocab = h.shape, w.shape[1]
    block_n, block_v, interpret = settings.block_n, settings.block_v, settings.interpret
    n_row_blocks, n_col_blocks = pl.cdiv(rows, block_n), pl.cdiv(vocab, block_v)
    args = (h, w, targets[:, None], lse, entropy, g_logp[:, None], g_entropy[:, None])
    common = dict(inv_t=1.0 / settings.temperature, vocab=vocab, block_v=block_v)
    dh = _call(
        functools.partial(_dh_kernel, **common),
        grid=(n_row_blocks, n_col_blocks),
        in_specs=_backward_inputs_specs(dim, block_n, block_v, row_major=True),
        out_specs=pl.BlockSpec((block_n, dim), lambda i, j: (i, 0)),
        out_shape=jax.ShapeDtypeStruct(h.shape, h.dtype),
        scratch_shapes=[pltpu.VMEM((block_n, dim), jnp.float32)],
        interpret=interpret,
    )(*args)
    dw = _call(
        functools.partial(_dw_kernel, rows=rows, block_n=block_n, **common),
        grid=(n_col_blocks, n_row_blocks),
        in_specs=_backward_inputs_specs(dim, block_n, block_v, row_major=False),
        out_specs=pl.BlockSpec((dim, block_v), lambda j, i: (0, j)),
        out_shape=jax.ShapeDtypeStruct(w.shape, w.dtype),
        scratch_shapes=[pltpu.VMEM((dim, block_v), jnp.float32)],
        interpret=interpret,
    )(*args)
    return dh, dw


# ``(h, w, targets, Settings) -> (logp [N], entropy [N])``, float32; inputs are
# assumed validated (see ``dispatch``). ``Settings.interpret`` runs the kernels
# on any backend through the Pallas interpreter.
pallas_token_logprobs_and_entropy = fused_vjp.fused_op(_forward, _backward)
