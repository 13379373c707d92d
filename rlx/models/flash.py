"""Memory-bounded attention in plain XLA: an online-softmax scan over key blocks with a recomputing VJP.

The forward pass keeps, per query, the running maximum `m`, normaliser `l` and output
accumulator, and visits the keys `block` columns at a time (FlashAttention's recurrence,
Dao et al. 2022); its residuals are the output and `lse = m + log l`, never the
`[queries, keys]` probabilities. The backward pass revisits the key blocks and recomputes
each block's probabilities from `lse`, so training memory grows with `queries x block`,
not `queries x keys`. Masks are built per block from column numbers, never materialised whole.

Visibility, as everywhere in rlx: key column `j` is visible to a query at column `i` of
row `b` iff `start[b] <= j <= i`. A query that sees no key (a padding column) returns 0.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

_NEG = -1e30  # finite "minus infinity": exp(_NEG - m) is exactly 0 and never NaN


def _blocks(x: jax.Array, block: int) -> jax.Array:
    """[B, T, ...] -> [T // block, B, block, ...] (T is a multiple of block)."""
    batch, keys = x.shape[:2]
    return jnp.moveaxis(x.reshape(batch, keys // block, block, *x.shape[2:]), 1, 0)


def _block_scores(q, k_block, q_columns, start, first_column):
    """Scaled scores [B, KV, G, S, block] (float32) with invisible keys at _NEG, and the visibility mask."""
    scores = jnp.einsum("bskgd,btkd->bkgst", q, k_block, preferred_element_type=jnp.float32)
    columns = first_column + jnp.arange(k_block.shape[1], dtype=jnp.int32)
    visible = (columns[None, None, :] >= start[:, None, None]) & (columns[None, None, :] <= q_columns[:, :, None])
    visible = visible[:, None, None]  # [B, 1, 1, S, block]
    return jnp.where(visible, scores, _NEG), visible


def _forward(q, k, v, q_columns, start, block):
    batch, steps, kv_heads, groups, dim = q.shape

    def visit(carry, xs):
        m, l, acc = carry
        k_block, v_block, first = xs
        scores, visible = _block_scores(q, k_block, q_columns, start, first)
        m_new = jnp.maximum(m, scores.max(axis=-1))
        probs = jnp.where(visible, jnp.exp(scores - m_new[..., None]), 0.0)
        scale = jnp.exp(m - m_new)
        l = l * scale + probs.sum(axis=-1)
        update = jnp.einsum("bkgst,btkd->bskgd", probs.astype(v.dtype), v_block, preferred_element_type=jnp.float32)
        acc = acc * jnp.moveaxis(scale, -1, 1)[..., None] + update
        return (m_new, l, acc), None

    init = (jnp.full((batch, kv_heads, groups, steps), _NEG, jnp.float32), jnp.zeros((batch, kv_heads, groups, steps), jnp.float32),
            jnp.zeros((batch, steps, kv_heads, groups, dim), jnp.float32))
    firsts = jnp.arange(0, k.shape[1], block, dtype=jnp.int32)
    (m, l, acc), _ = jax.lax.scan(visit, init, (_blocks(k, block), _blocks(v, block), firsts))
    seen = l > 0
    out = acc / jnp.moveaxis(jnp.where(seen, l, 1.0), -1, 1)[..., None]
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)
    return out.astype(q.dtype), lse


@partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, q_columns, start, block):
    return _forward(q, k, v, q_columns, start, block)[0]


def _flash_fwd(q, k, v, q_columns, start, block):
    out, lse = _forward(q, k, v, q_columns, start, block)
    return out, (q, k, v, q_columns, start, out, lse)


def _flash_bwd(block, residuals, d_out):
    q, k, v, q_columns, start, out, lse = residuals
    d_out32 = d_out.astype(jnp.float32)
    delta = jnp.moveaxis(jnp.sum(d_out32 * out.astype(jnp.float32), axis=-1), 1, -1)  # [B, KV, G, S]

    def visit(dq, xs):
        k_block, v_block, first = xs
        scores, visible = _block_scores(q, k_block, q_columns, start, first)
        probs = jnp.where(visible, jnp.exp(scores - lse[..., None]), 0.0)
        dv = jnp.einsum("bkgst,bskgd->btkd", probs.astype(d_out.dtype), d_out, preferred_element_type=jnp.float32)
        dp = jnp.einsum("bskgd,btkd->bkgst", d_out, v_block, preferred_element_type=jnp.float32)
        ds = probs * (dp - delta[..., None])
        dq = dq + jnp.einsum("bkgst,btkd->bskgd", ds.astype(k_block.dtype), k_block, preferred_element_type=jnp.float32)
        dk = jnp.einsum("bkgst,bskgd->btkd", ds.astype(q.dtype), q, preferred_element_type=jnp.float32)
        return dq, (dk.astype(k.dtype), dv.astype(v.dtype))

    firsts = jnp.arange(0, k.shape[1], block, dtype=jnp.int32)
    dq, (dk, dv) = jax.lax.scan(visit, jnp.zeros(q.shape, jnp.float32), (_blocks(k, block), _blocks(v, block), firsts))
    unblock = lambda x: jnp.moveaxis(x, 0, 1).reshape(k.shape)
    return dq.astype(q.dtype), unblock(dk), unblock(dv), None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_columns: jax.Array, start: jax.Array, block: int = 512) -> jax.Array:
    """softmax(q k^T) v over the visible keys, `block` key columns at a time.

    q `[B, S, KV, G, D]` (already scaled by 1/sqrt(D); G query heads share each kv head),
    k and v `[B, T, KV, D]`, q_columns `[B, S]` int32, start `[B]` int32 -> `[B, S, KV, G, D]`.
    T need not divide `block`: the keys are zero-padded to a multiple of it (padding columns
    lie past every query's column, so they are never visible).
    """
    keys = k.shape[1]
    block = min(block, keys)
    padded = -(-keys // block) * block
    if padded != keys:
        pad = [(0, 0), (0, padded - keys), (0, 0), (0, 0)]
        k, v = jnp.pad(k, pad), jnp.pad(v, pad)
    return _flash(q, k, v, q_columns.astype(jnp.int32), start.astype(jnp.int32), block)
