"""Per-block math of the drafting kernels: counter-based Gumbel noise and the online draft statistics.

Gumbel-max sampling: ``argmax_k (z_k + g_k)`` with ``g_k = -log(-log u_k)``, ``u_k`` uniform, is a sample of
``softmax(z)``. The noise of row ``n``, column ``k`` is a hash of ``(seed_n, k)`` (murmur3's 32-bit finaliser,
twice), so every implementation, and every block order, draws the same noise and the same token for the same
seeds; nothing random is stored or carried. All integer math is int32 with wrap-around and logical shifts,
which every Pallas backend lowers.

Online statistics over vocabulary blocks, per row (``[rows, 1]``, as Pallas TPU blocks want):

    m     running max of z                    s  running sum of exp(z - m)
    best  max of z + g so far                 token, logit  its column and its z

At the end ``lse = m + log s`` and the draft's log-prob is ``logit - lse``. Columns outside the vocabulary are
excluded through ``valid``; their ``z`` may be anything, NaN included, and never reaches a result.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# A finite start for the running max: exp(-inf - (-inf)) would be NaN in the first rescale.
_MAX_INIT = float(jnp.finfo(jnp.float32).min)
_NO_TOKEN = int(np.iinfo(np.int32).max)


def _wrapped(constant: int) -> int:
    """A 32-bit constant as the int32 with the same bits."""
    return int(np.array(constant, np.uint32).view(np.int32))


_GOLDEN, _MIX1, _MIX2 = _wrapped(0x9E3779B9), _wrapped(0x85EBCA6B), _wrapped(0xC2B2AE35)


def _fmix32(x: jax.Array) -> jax.Array:
    """murmur3's finaliser on int32 bits: a bijection that spreads every input bit over the output."""
    x = x ^ lax.shift_right_logical(x, 16)
    x = x * _MIX1
    x = x ^ lax.shift_right_logical(x, 13)
    x = x * _MIX2
    return x ^ lax.shift_right_logical(x, 16)


def gumbel_noise(seeds: jax.Array, columns: jax.Array) -> jax.Array:
    """Float32 Gumbel noise of int32 ``seeds [rows, 1]`` at int32 vocabulary ``columns [1, cols]``."""
    bits = _fmix32(_fmix32(seeds) ^ (columns * _GOLDEN))
    # The top 24 bits as a uniform in (0, 1), never 0 or 1.
    uniform = (lax.shift_right_logical(bits, 8).astype(jnp.float32) + 0.5) * (1.0 / (1 << 24))
    return -jnp.log(-jnp.log(uniform))


class DraftStats(NamedTuple):
    """Running statistics, each ``[rows, 1]``: float32 but ``token`` (int32)."""

    max: jax.Array
    sumexp: jax.Array
    best: jax.Array
    token: jax.Array
    logit: jax.Array


def init_stats(rows: int) -> DraftStats:
    zeros = jnp.zeros((rows, 1), jnp.float32)
    return DraftStats(jnp.full((rows, 1), _MAX_INIT, jnp.float32), zeros, jnp.full((rows, 1), -jnp.inf, jnp.float32),
                      jnp.zeros((rows, 1), jnp.int32), zeros)


def update_stats(stats: DraftStats, z: jax.Array, valid: jax.Array, columns: jax.Array, seeds: jax.Array) -> DraftStats:
    """Folds one block of logits ``z [rows, cols]`` (float32, already divided by the temperature) at int32
    vocabulary ``columns [1, cols]`` into ``stats``; ``valid`` (broadcastable to ``z``) masks columns out."""
    z_valid = jnp.where(valid, z, -jnp.inf)
    new_max = jnp.maximum(stats.max, jnp.max(z_valid, axis=1, keepdims=True))
    sumexp = jnp.exp(stats.max - new_max) * stats.sumexp + jnp.sum(jnp.exp(z_valid - new_max), axis=1, keepdims=True)
    score = jnp.where(valid, z + gumbel_noise(seeds, columns), -jnp.inf)
    block_best = jnp.max(score, axis=1, keepdims=True)
    # The first column reaching the block's best, as argmax picks it (Mosaic has no argmax reduction).
    block_token = jnp.min(jnp.where(score == block_best, columns, _NO_TOKEN), axis=1, keepdims=True)
    block_logit = jnp.max(jnp.where(columns == block_token, z_valid, -jnp.inf), axis=1, keepdims=True)
    take = block_best > stats.best  # strictly: an earlier block keeps a tie, as argmax does
    return DraftStats(new_max, sumexp, jnp.where(take, block_best, stats.best), jnp.where(take, block_token, stats.token),
                      jnp.where(take, block_logit, stats.logit))


def finalize_stats(stats: DraftStats) -> tuple[jax.Array, jax.Array]:
    """``(token, logp)`` ``[rows, 1]``: the drafted column and its log-probability under ``softmax(z)``."""
    return stats.token, stats.logit - (stats.max + jnp.log(stats.sumexp))
