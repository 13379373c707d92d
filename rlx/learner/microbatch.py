"""Splitting a batch's rows into strided slices inside a compiled program, and accumulating over them.

Slice `k` of `count` holds rows `i` with `i % count == k`. Rows are split over the data-parallel
devices in contiguous blocks, so every slice takes an equal share of every device's block:
slicing moves no data between devices, and each slice keeps all devices busy. Minibatches are
slices of the step and micro-batches slices of a minibatch, so which rows form a minibatch does
not depend on the micro-batch size.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Place = Callable[[Any], Any]  # a sharding constraint on a tree of rows


def strided(tree: Any, count: int, index: jax.Array | int) -> Any:
    """Slice `index` of `count` of every leaf's rows."""
    def take(x):
        grouped = x.reshape(x.shape[0] // count, count, *x.shape[1:])
        return jax.lax.dynamic_index_in_dim(grouped, index, axis=1, keepdims=False)
    return jax.tree.map(take, tree)


def interleave(stacked: Any) -> Any:
    """Inverse of taking every slice: `[count, rows / count, ...]` -> `[rows, ...]`."""
    return jax.tree.map(lambda y: jnp.swapaxes(y, 0, 1).reshape(-1, *y.shape[2:]), stacked)


def slice_count(rows: int, slice_rows: int | None, what: str) -> int:
    """How many slices of `slice_rows` rows (None: one) `rows` splits into; raises if it does not."""
    if slice_rows is None:
        return 1
    if rows % slice_rows:
        raise ValueError(f"{what}: {rows} rows do not split into micro-batches of learner.micro_batch_rows={slice_rows}; "
                         f"use a divisor of {rows}")
    return rows // slice_rows


def map_slices(fn: Callable[[Any], Any], tree: Any, count: int, place: Place) -> Any:
    """`fn` (rows -> rows) applied slice by slice (a scan: one slice's activations live at a time)."""
    if count == 1:
        return fn(tree)

    def body(_, index):
        return None, fn(place(strided(tree, count, index)))

    _, stacked = jax.lax.scan(body, None, jnp.arange(count))
    return interleave(stacked)


def accumulate_gradients(loss_fn: Callable, params: Any, tree: Any, count: int, place: Place) -> tuple[jax.Array, Any, dict[str, jax.Array]]:
    """Sums over slices of (loss, gradient, metrics) of `loss_fn(params, rows) -> (loss, metrics)`.

    Gradients add up in float32 and come back in the weights' dtypes.
    """
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
    if count == 1:
        (loss, metrics), grads = value_and_grad(params, tree)
        return loss, grads, metrics

    def one(params, rows):
        (loss, metrics), grads = value_and_grad(params, rows)
        return loss, jax.tree.map(lambda g: g.astype(jnp.float32), grads), metrics

    def body(total, index):
        return jax.tree.map(jnp.add, total, one(params, place(strided(tree, count, index)))), None

    shapes = jax.eval_shape(one, params, strided(tree, count, 0))
    (loss, grads, metrics), _ = jax.lax.scan(body, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), jnp.arange(count))
    return loss, jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params), metrics
