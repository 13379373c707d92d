"""Per-block math shared by the chunked (XLA) and Pallas implementations.

Every function works on one block of logits ``z [rows, cols]`` (float32) and
per-row vectors kept 2-D as ``[rows, 1]``, the layout Pallas TPU blocks want.
Columns outside the vocabulary (padding, or a chunk overlapping the previous
one) are excluded through a boolean ``valid`` mask; their ``z`` may hold any
value, NaN included, and never leaks into a result.

Online log-sum-exp (one pass over vocabulary blocks), per row:

    m  = max_k z_k                          running max
    l  = sum_k exp(z_k - m)                 running sum-exp
    u  = sum_k exp(z_k - m) * (z_k - m)     running shifted first moment
    zy = z_y                                target logit

When the running max moves from ``m`` to ``m'`` (``d = m - m' <= 0``), the old
sums are rescaled by ``a = exp(d)``: ``l <- a*l`` and, since
``z - m' = (z - m) + d``, ``u <- a*(u + d*l)``. At the end

    lse     = m + log l
    logp_y  = zy - lse
    H       = lse - sum_k p_k z_k = log l - u / l

Keeping ``u`` relative to the running max keeps the entropy free of the
cancellation ``lse - E[z]`` would suffer for large logits.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

# A finite start value for the running max: with -inf the first rescale would
# compute (-inf) * 0 = NaN in ``u``; any real logit block replaces it at once.
_MAX_INIT = float(jnp.finfo(jnp.float32).min)


class RowStats(NamedTuple):
    """Running online-softmax statistics, each ``[rows, 1]`` float32."""

    max: jax.Array
    sumexp: jax.Array
    shifted_moment: jax.Array
    target_logit: jax.Array


def init_stats(rows: int) -> RowStats:
    """Statistics of an empty set of logits."""
    zeros = jnp.zeros((rows, 1), jnp.float32)
    return RowStats(jnp.full((rows, 1), _MAX_INIT, jnp.float32), zeros, zeros, zeros)


def update_stats(stats: RowStats, z: jax.Array, valid: jax.Array, hit: jax.Array) -> RowStats:
    """Folds one logit block into the running statistics.

    Args:
      stats: statistics of the blocks seen so far.
      z: ``[rows, cols]`` float32 logits of this block.
      valid: boolean mask broadcastable to ``z``; False columns are ignored.
      hit: boolean ``[rows, cols]``, True where the column is the row's target
        (must imply ``valid``).
    """
    z_valid = jnp.where(valid, z, -jnp.inf)
    new_max = jnp.maximum(stats.max, jnp.max(z_valid, axis=1, keepdims=True))
    step = stats.max - new_max
    rescale = jnp.exp(step)
    shifted = z_valid - new_max
    e = jnp.exp(shifted)
    # exp(-inf) = 0 already removes invalid columns from the sum-exp, but
    # 0 * (-inf) would be NaN in the moment, hence the explicit select.
    moment = jnp.sum(e * jnp.where(valid, shifted, 0.0), axis=1, keepdims=True)
    return RowStats(
        max=new_max,
        sumexp=rescale * stats.sumexp + jnp.sum(e, axis=1, keepdims=True),
        shifted_moment=rescale * (stats.shifted_moment + step * stats.sumexp) + moment,
        target_logit=stats.target_logit + jnp.sum(jnp.where(hit, z, 0.0), axis=1, keepdims=True),
    )


def finalize_stats(stats: RowStats) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns ``(logp_y, entropy, lse)``, each ``[rows, 1]`` float32."""
    log_sumexp = jnp.log(stats.sumexp)
    lse = stats.max + log_sumexp
    # H >= 0 exactly; rounding can land a near-one-hot row at -1e-7.
    entropy = jnp.maximum(log_sumexp - stats.shifted_moment / stats.sumexp, 0.0)
    return stats.target_logit - lse, entropy, lse


def logit_grad(
    z: jax.Array,
    valid: jax.Array,
    hit: jax.Array,
    lse: jax.Array,
    entropy: jax.Array,
    g_logp: jax.Array,
    g_entropy: jax.Array,
) -> jax.Array:
    """Cotangent of the logits ``z`` for one block, zero on invalid columns.

    With ``p = softmax(z)`` and ``log p_k = z_k - lse``:

        d logp_y / d z_k = [k == y] - p_k
        d H / d z_k      = -p_k (z_k - sum_j p_j z_j) = -p_k (log p_k + H)

    so ``dz_k = g_logp [k == y] - p_k (g_logp + g_entropy (log p_k + H))``.
    The caller applies the chain rule through ``z = h @ w / T``.
    """
    log_p = z - lse
    p = jnp.exp(log_p)
    dz = jnp.where(hit, g_logp, 0.0) - p * (g_logp + g_entropy * (log_p + entropy))
    return jnp.where(valid, dz, 0.0)
