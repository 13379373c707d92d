"""Pallas kernels for GPU (Triton lowering): every reduction runs inside one program.

GPU grids run their programs in parallel, so unlike the TPU kernels
(``pallas``) nothing is carried across grid steps. Each program owns a block of
rows or of vocabulary columns and loops over the other axes with
``lax.fori_loop``:

* forward, grid ``(N/bn,)``: for each vocabulary block, the ``[bn, bv]`` logit
  block; online log-sum-exp (``blockmath``) in the loop carry; writes ``logp``,
  ``entropy`` and ``lse`` (saved for the backward).
* ``dh`` kernel, grid ``(N/bn,)``: for each vocabulary block, the logit block
  and its gradient ``dz``, then ``dh[rows] += dz @ w_blk^T``.
* ``dw`` kernel, grid ``(V/bv,)``: for each row block, the logit block and
  ``dz``, then ``dw[:, cols] += h_blk^T @ dz``.

Triton tensors must have power-of-two sizes, and the hidden size need not be
one (Qwen3-4B: D = 2560), so every matmul also loops over ``[.., bd]`` slices
of the hidden axis, and the backward kernels accumulate straight into their
float32 outputs by load-add-store, as Triton's first fused-attention backward
did for ``dq``: each output tile belongs to one program, so no atomics are
needed. The ``dw`` accumulator is a float32 ``[D, V]`` buffer, cast to ``w``'s dtype
afterwards: for bfloat16 ``w`` that is ``4 * D * V`` bytes more than the
chunked path. Not tuned on hardware.

Edge blocks: every load is masked to the array (``other=0``), so rows ``>= N``,
columns ``>= V`` and hidden slices ``>= D`` enter the matmuls as zeros; the
logit-block masks then keep padded columns out of the statistics and padded
rows out of ``dw``; every store is masked.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.fused_logprob import blockmath, fused_vjp

# Common Triton GEMM tiles; the dispatcher clamps them to small inputs.
DEFAULT_BLOCK_N = 64
DEFAULT_BLOCK_V = 128
DEFAULT_BLOCK_D = 64
# Triton's dot needs every tile dimension to be a power of two and >= 16.
MIN_BLOCK = 16


class Settings(NamedTuple):
    """Static parameters of the GPU kernels (hashable: a custom-VJP nondiff argument)."""

    temperature: float
    block_n: int
    block_v: int
    block_d: int
    interpret: bool


class _Geometry(NamedTuple):
    rows: int
    dim: int
    vocab: int
    block_n: int
    block_v: int
    block_d: int
    inv_t: float


class _Span(NamedTuple):
    """A block of one axis: its slice, its indices and which of them are in range."""

    slice: pl.Slice
    valid: jax.Array  # bool [size]
    index: jax.Array  # int32 [size]


def _span(block: jax.Array, size: int, limit: int) -> _Span:
    start = block * size
    index = start + jnp.arange(size, dtype=jnp.int32)
    return _Span(pl.ds(start, size), index < limit, index)


def _tile_mask(rows: _Span, cols: _Span) -> jax.Array:
    return rows.valid[:, None] & cols.valid[None, :]


def _load_tile(ref, rows: _Span, cols: _Span) -> jax.Array:
    return pltriton.load(ref.at[rows.slice, cols.slice], mask=_tile_mask(rows, cols), other=0)


def _add_to_tile(ref, rows: _Span, cols: _Span, value: jax.Array) -> None:
    total = _load_tile(ref, rows, cols) + value
    pltriton.store(ref.at[rows.slice, cols.slice], total, mask=_tile_mask(rows, cols))


def _load_rows(ref, rows: _Span) -> jax.Array:
    """``[bn, 1]`` slice of an ``[N, 1]`` per-row vector."""
    return pltriton.load(ref.at[rows.slice, :], mask=rows.valid[:, None], other=0)


def _dim_span(k, g: _Geometry) -> _Span:
    return _span(k, g.block_d, g.dim)


def _dim_blocks(g: _Geometry) -> int:
    return pl.cdiv(g.dim, g.block_d)


def _block_logits(h_ref, w_ref, targets, rows: _Span, cols: _Span, g: _Geometry):
    """``(z, valid, hit)`` of one ``[bn, bv]`` logit block."""

    def accumulate(k, z):
        dims = _dim_span(k, g)
        h = _load_tile(h_ref, rows, dims)
        w = _load_tile(w_ref, dims, cols)
        return z + jnp.dot(h, w, preferred_element_type=jnp.float32)

    z = lax.fori_loop(0, _dim_blocks(g), accumulate, jnp.zeros((g.block_n, g.block_v), jnp.float32))
    valid = cols.valid[None, :]
    return z * g.inv_t, valid, valid & (cols.index[None, :] == targets)


def _forward_kernel(h_ref, w_ref, y_ref, logp_ref, ent_ref, lse_ref, *, g: _Geometry):
    rows = _span(pl.program_id(0), g.block_n, g.rows)
    targets = _load_rows(y_ref, rows)

    def fold(j, stats):
        z, valid, hit = _block_logits(h_ref, w_ref, targets, rows, _span(j, g.block_v, g.vocab), g)
        return blockmath.update_stats(stats, z, valid, hit)

    stats = lax.fori_loop(0, pl.cdiv(g.vocab, g.block_v), fold, blockmath.init_stats(g.block_n))
    for ref, value in zip((logp_ref, ent_ref, lse_ref), blockmath.finalize_stats(stats)):
        pltriton.store(ref.at[rows.slice, :], value, mask=rows.valid[:, None])


def _scaled_logit_grad(h_ref, w_ref, row_refs, rows: _Span, cols: _Span, g: _Geometry, dtype):
    """``dL/d(h @ w)`` for one block, zero outside ``[N, V]``, in ``dtype``."""
    targets, lse, entropy, g_logp, g_entropy = (_load_rows(ref, rows) for ref in row_refs)
    z, valid, hit = _block_logits(h_ref, w_ref, targets, rows, cols, g)
    valid = valid & rows.valid[:, None]
    dz = blockmath.logit_grad(z, valid, hit, lse, entropy, g_logp, g_entropy)
    return (dz * g.inv_t).astype(dtype)


def _dh_kernel(h_ref, w_ref, *row_refs_and_out, g: _Geometry):
    # The aliased zero buffer and the output it becomes come last.
    *row_refs, _, dh_ref = row_refs_and_out
    rows = _span(pl.program_id(0), g.block_n, g.rows)

    def add_column_block(j, carry):
        cols = _span(j, g.block_v, g.vocab)
        dz = _scaled_logit_grad(h_ref, w_ref, row_refs, rows, cols, g, w_ref.dtype)

        def add_dim_block(k, carry):
            dims = _dim_span(k, g)
            w = _load_tile(w_ref, dims, cols)
            contribution = lax.dot_general(dz, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
            _add_to_tile(dh_ref, rows, dims, contribution)
            return carry

        return lax.fori_loop(0, _dim_blocks(g), add_dim_block, carry)

    lax.fori_loop(0, pl.cdiv(g.vocab, g.block_v), add_column_block, 0)


def _dw_kernel(h_ref, w_ref, *row_refs_and_out, g: _Geometry):
    # The aliased zero buffer and the output it becomes come last.
    *row_refs, _, dw_ref = row_refs_and_out
    cols = _span(pl.program_id(0), g.block_v, g.vocab)

    def add_row_block(i, carry):
        rows = _span(i, g.block_n, g.rows)
        dz = _scaled_logit_grad(h_ref, w_ref, row_refs, rows, cols, g, h_ref.dtype)

        def add_dim_block(k, carry):
            dims = _dim_span(k, g)
            h = _load_tile(h_ref, rows, dims)
            contribution = lax.dot_general(h, dz, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
            _add_to_tile(dw_ref, dims, cols, contribution)
            return carry

        return lax.fori_loop(0, _dim_blocks(g), add_dim_block, carry)

    lax.fori_loop(0, pl.cdiv(g.rows, g.block_n), add_row_block, 0)


def _geometry(h, w, settings: Settings) -> _Geometry:
    (rows, dim), vocab = h.shape, w.shape[1]
    return _Geometry(rows, dim, vocab, settings.block_n, settings.block_v, settings.block_d, 1.0 / settings.temperature)


def _call(kernel, grid, out_shape, interpret, **call_kwargs):
    """A grid over one axis; every ref is the whole array, sliced inside the kernel."""
    return pl.pallas_call(
        kernel,
        grid=grid,
        out_shape=out_shape,
        compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
        **call_kwargs,
    )


def _forward(h, w, targets, settings: Settings):
    g = _geometry(h, w, settings)
    return _call(
        functools.partial(_forward_kernel, g=g),
        grid=(pl.cdiv(g.rows, g.block_n),),
        out_shape=[jax.ShapeDtypeStruct((g.rows, 1), jnp.float32)] * 3,
        interpret=settings.interpret,
    )(h, w, targets[:, None])


def _backward(h, w, targets, lse, entropy, g_logp, g_entropy, settings: Settings):
    g = _geometry(h, w, settings)
    args = (h, w, targets[:, None], lse, entropy, g_logp[:, None], g_entropy[:, None])
    accumulator_index = len(args)  # the zero-filled float32 output buffer, passed last

    def run(kernel, grid, shape):
        return _call(
            functools.partial(kernel, g=g),
            grid=grid,
            out_shape=jax.ShapeDtypeStruct(shape, jnp.float32),
            interpret=settings.interpret,
            input_output_aliases={accumulator_index: 0},
        )(*args, jnp.zeros(shape, jnp.float32))

    dh = run(_dh_kernel, (pl.cdiv(g.rows, g.block_n),), h.shape)
    dw = run(_dw_kernel, (pl.cdiv(g.vocab, g.block_v),), w.shape)
    return dh.astype(h.dtype), dw.astype(w.dtype)


# ``(h, w, targets, Settings) -> (logp [N], entropy [N])``, float32; inputs are
# assumed validated (see ``dispatch``). ``Settings.interpret`` runs the same
# kernels on any backend through the Pallas interpreter.
pallas_gpu_token_logprobs_and_entropy = fused_vjp.fused_op(_forward, _backward)
