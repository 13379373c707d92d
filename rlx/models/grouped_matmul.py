"""Grouped matrix multiplication, one implementation per `model.moe_impl`.

Rows of `lhs [M, K]` are sorted by group; group `g` owns the next `group_sizes[g]` rows:

    out[r] = lhs[r] @ rhs[g]   for the rows r of group g
    out[r] = 0                 for rows past sum(group_sizes)

(the MoE layer puts token copies routed to other devices' experts past the sum).

| impl | what | memory |
|---|---|---|
| `ragged_dot` | `jax.lax.ragged_dot`: XLA's ragged-dot instruction on GPU/TPU | CPU lowering: a dense `[M, G, K]` mask |
| `scan` | row tiles x groups visited in a loop (megablox's schedule), with a VJP of the same kind | one `TILE`-row tile besides inputs and output |
| `megablox` | jax's Pallas TPU kernel `jax.experimental.pallas.ops.tpu.megablox` | VMEM tiles (TPU only) |

`scan` visits each (row tile, group) pair that shares a row: at most `M / TILE + G - 1`
visits, so its matmul work exceeds the dense `M x K x N` by about `G x TILE / M`; visits
past the real ones are skipped (a while loop), so rows past the groups cost nothing.
`auto` takes megablox on TPU, ragged_dot on GPU and scan elsewhere.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from rlx.models.attention_kernels import GPU_BACKENDS
from rlx.models.config import MOE_IMPLS

TILE = 128  # rows per visit of the scan implementation, and the megablox row tile
MEGABLOX_BLOCK = 128  # megablox contraction and output tiles (clamped to the matrix size)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _pad_rows(x: jax.Array, rows: int) -> jax.Array:
    return jnp.pad(x, ((0, rows - x.shape[0]), (0, 0)))


def _visits(group_sizes: jax.Array, tile: int, num_tiles: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """The (row tile, group) pairs that share a row, in row order.

    Returns (group of each visit, tile of each visit, first row of each group, end row of each
    group, number of real visits); the visit arrays have the static length `num_tiles + G - 1`.
    """
    ends = jnp.cumsum(group_sizes)
    starts = ends - group_sizes
    first_tile = starts // tile
    tiles_per_group = jnp.where(group_sizes > 0, (ends - 1) // tile - first_tile + 1, 0)
    visit_ends = jnp.cumsum(tiles_per_group)
    visit = jnp.arange(num_tiles + group_sizes.shape[0] - 1)
    group = jnp.minimum(jnp.searchsorted(visit_ends, visit, side="right"), group_sizes.shape[0] - 1)
    tile_of = first_tile[group] + visit - (visit_ends[group] - tiles_per_group[group])
    return group, tile_of, starts, ends, visit_ends[-1]


def _tile_size(rows: int) -> int:
    return min(TILE, _round_up(rows, 8))


def _tile_rows(x: jax.Array, index: jax.Array, tile: int) -> jax.Array:
    return jax.lax.dynamic_slice_in_dim(x, index * tile, tile, axis=0)


def _in_group(index: jax.Array, start: jax.Array, end: jax.Array, tile: int) -> jax.Array:
    rows = index * tile + jnp.arange(tile)
    return ((rows >= start) & (rows < end))[:, None]


def _scan_gmm(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array, transpose_rhs: bool = False) -> jax.Array:
    """out [M, N] with rhs [G, K, N] (or [G, N, K] with `transpose_rhs`), visiting one tile at a time."""
    rows, tile = lhs.shape[0], _tile_size(lhs.shape[0])
    padded = _pad_rows(lhs, _round_up(rows, tile))
    group, tile_of, starts, ends, count = _visits(group_sizes, tile, padded.shape[0] // tile)
    width = rhs.shape[1] if transpose_rhs else rhs.shape[2]
    contract = (((1,), (1,)), ((), ())) if transpose_rhs else (((1,), (0,)), ((), ()))

    def visit(v, out):
        g, t = group[v], tile_of[v]
        product = jax.lax.dot_general(_tile_rows(padded, t, tile), rhs[g], contract, preferred_element_type=jnp.float32)
        keep = _in_group(t, starts[g], ends[g], tile)
        merged = jnp.where(keep, product.astype(out.dtype), _tile_rows(out, t, tile))
        return jax.lax.dynamic_update_slice_in_dim(out, merged, t * tile, axis=0)

    out = jax.lax.fori_loop(0, count, visit, jnp.zeros((padded.shape[0], width), lhs.dtype))
    return out[:rows]


def _scan_tgmm(lhs: jax.Array, grad: jax.Array, group_sizes: jax.Array) -> jax.Array:
    """[G, K, N]: lhs_g^T @ grad_g per group (zero for empty groups), one tile at a time."""
    tile = _tile_size(lhs.shape[0])
    padded_rows = _round_up(lhs.shape[0], tile)
    lhs, grad = _pad_rows(lhs, padded_rows), _pad_rows(grad, padded_rows)
    group, tile_of, starts, ends, count = _visits(group_sizes, tile, padded_rows // tile)

    def visit(v, acc):
        g, t = group[v], tile_of[v]
        rows_of_g = jnp.where(_in_group(t, starts[g], ends[g], tile), _tile_rows(lhs, t, tile), 0)
        update = jnp.einsum("tk,tn->kn", rows_of_g, _tile_rows(grad, t, tile), preferred_element_type=jnp.float32)
        return acc.at[g].add(update)

    acc = jnp.zeros((group_sizes.shape[0], lhs.shape[1], grad.shape[1]), jnp.float32)
    return jax.lax.fori_loop(0, count, visit, acc)


@jax.custom_vjp
def scan_grouped_matmul(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array) -> jax.Array:
    return _scan_gmm(lhs, rhs, group_sizes)


def _scan_fwd(lhs, rhs, group_sizes):
    return _scan_gmm(lhs, rhs, group_sizes), (lhs, rhs, group_sizes)


def _scan_bwd(residuals, grad):
    lhs, rhs, group_sizes = residuals
    grad_lhs = _scan_gmm(grad.astype(lhs.dtype), rhs, group_sizes, transpose_rhs=True)
    grad_rhs = _scan_tgmm(lhs, grad.astype(lhs.dtype), group_sizes).astype(rhs.dtype)
    return grad_lhs, grad_rhs, None


scan_grouped_matmul.defvjp(_scan_fwd, _scan_bwd)


def ragged_dot_grouped_matmul(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array) -> jax.Array:
    return jax.lax.ragged_dot(lhs, rhs, group_sizes)


def megablox_grouped_matmul(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array, interpret: bool = False) -> jax.Array:
    """The megablox kernel; `interpret` runs it on CPU for tests.

    Rows are padded to whole tiles, and the rows past the groups form one more group without
    a matrix: megablox then zeroes them (and their gradient) as it does for sharded experts.
    """
    from jax.experimental.pallas.ops.tpu.megablox import ops  # imported here: TPU-only kernel

    rows = lhs.shape[0]
    padded = _pad_rows(lhs, _round_up(rows, TILE))
    rest = padded.shape[0] - jnp.sum(group_sizes, dtype=jnp.int32)
    sizes = jnp.concatenate([group_sizes.astype(jnp.int32), rest[None]])
    tiling = (TILE, min(MEGABLOX_BLOCK, lhs.shape[1]), min(MEGABLOX_BLOCK, rhs.shape[2]))
    return ops.gmm(padded, rhs, sizes, lhs.dtype, tiling, None, None, False, interpret)[:rows]


_IMPLS: dict[str, Callable[[jax.Array, jax.Array, jax.Array], jax.Array]] = {
    "ragged_dot": ragged_dot_grouped_matmul,
    "scan": scan_grouped_matmul,
    "megablox": megablox_grouped_matmul,
}


def resolve_moe_impl(impl: str, backend: str | None = None) -> str:
    """The implementation `impl` runs as on `backend` (default: JAX's)."""
    if impl not in MOE_IMPLS:
        raise ValueError(f"unknown moe impl {impl!r}; valid names: {', '.join(MOE_IMPLS)}")
    backend = jax.default_backend() if backend is None else backend
    if impl == "auto":
        return "megablox" if backend == "tpu" else "ragged_dot" if backend in GPU_BACKENDS else "scan"
    if impl == "megablox" and backend != "tpu":
        raise ValueError(f"moe impl 'megablox' needs a TPU backend, got {backend!r}; use 'scan' (any backend) or 'auto'")
    return impl


def grouped_matmul(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array, impl: str = "auto", backend: str | None = None) -> jax.Array:
    """[M, N] in lhs's dtype: each group's rows of `lhs [M, K]` times its `rhs [G, K, N]`; rows past the groups are 0."""
    if lhs.dtype != rhs.dtype:
        raise ValueError(f"lhs and rhs must share one dtype, got {lhs.dtype} and {rhs.dtype}")
    return _IMPLS[resolve_moe_impl(impl, backend)](lhs, rhs, group_sizes.astype(jnp.int32))
