"""Per-block math of the drafting kernels: counter-based Gumbel noise and the online draft statistics.

Gumbel-max sampling: ``argmax_k (z_k + g_k)`` with ``g_k = -log(-log u_k)``, ``u_k`` uniform, is a sample of
``softmax(z)``. The noise of row ``n``, column ``k`` is a hash of ``(seed_n, k)`` (murmur3's 32-bit finaliser,
twice), so every implementation, and every block order, draws the same noise and the same token for the same
seeds; nothing random is stored or carried. All integer math is int32 with wrap-around and logical shifts,
which every Pallas backend lowers.

Online statistics over vocabulary blocks, per row (``[rows, 1]``, as Pallas TPU blocks want):

    m     running max of z                    s  running sum of exp(z - m)
    best  max of z + g so far                 token, logit  its column and its z

At the end ``lse = m + log s`` and the draft's log-prob is ``logit - lse``. The residual draw (lossless speculative
decoding's replacement token, ``residual_tokens``) makes two passes: ``m, s`` first, then a Gumbel-max over
``log max(0, p - q)`` with ``q = exp(z - lse)`` and over ``log p`` (taken where the residual is empty).

Columns outside the vocabulary are excluded through ``valid``; their ``z`` (and p) may be anything, NaN included,
and never reaches a result.
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


def init_lse(rows: int) -> tuple[jax.Array, jax.Array]:
    """The online log-sum-exp's start ``(max, sumexp)``, each ``[rows, 1]``."""
    return jnp.full((rows, 1), _MAX_INIT, jnp.float32), jnp.zeros((rows, 1), jnp.float32)


def init_stats(rows: int) -> DraftStats:
    return DraftStats(*init_lse(rows), jnp.full((rows, 1), -jnp.inf, jnp.float32), jnp.zeros((rows, 1), jnp.int32),
                      jnp.zeros((rows, 1), jnp.float32))


def update_stats(stats: DraftStats, z: jax.Array, valid: jax.Array, columns: jax.Array, seeds: jax.Array) -> DraftStats:
    """Folds one block of logits ``z [rows, cols]`` (float32, already divided by the temperature) at int32
    vocabulary ``columns [1, cols]`` into ``stats``; ``valid`` (broadcastable to ``z``) masks columns out."""
    z_valid = jnp.where(valid, z, -jnp.inf)
    new_max, sumexp = update_lse(stats.max, stats.sumexp, z_valid)
    best, token, take = _update_argmax(stats.best, stats.token, jnp.where(valid, z + gumbel_noise(seeds, columns), -jnp.inf), columns)
    block_logit = jnp.max(jnp.where(columns == token, z_valid, -jnp.inf), axis=1, keepdims=True)
    return DraftStats(new_max, sumexp, best, token, jnp.where(take, block_logit, stats.logit))


def update_lse(running_max: jax.Array, sumexp: jax.Array, z_valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The online log-sum-exp's ``(max, sum of exp(z - max))`` ``[rows, 1]`` after one block (masked columns -inf)."""
    new_max = jnp.maximum(running_max, jnp.max(z_valid, axis=1, keepdims=True))
    return new_max, jnp.exp(running_max - new_max) * sumexp + jnp.sum(jnp.exp(z_valid - new_max), axis=1, keepdims=True)


def _update_argmax(best: jax.Array, token: jax.Array, score: jax.Array, columns: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The running ``(best score, its column)`` after one block of ``score`` (-inf: never), and whether the block won."""
    block_best = jnp.max(score, axis=1, keepdims=True)
    # The first column reaching the block's best, as argmax picks it (Mosaic has no argmax reduction).
    block_token = jnp.min(jnp.where(score == block_best, columns, _NO_TOKEN), axis=1, keepdims=True)
    take = block_best > best  # strictly: an earlier block keeps a tie, as argmax does
    return jnp.where(take, block_best, best), jnp.where(take, block_token, token), take


def finalize_stats(stats: DraftStats) -> tuple[jax.Array, jax.Array]:
    """``(token, logp)`` ``[rows, 1]``: the drafted column and its log-probability under ``softmax(z)``."""
    return stats.token, stats.logit - (stats.max + jnp.log(stats.sumexp))


class ResidualStats(NamedTuple):
    """The residual draw's running Gumbel-max, ``[rows, 1]``: over log max(0, p - q), and over log p (the fallback)."""

    best: jax.Array
    token: jax.Array
    target_best: jax.Array
    target_token: jax.Array


def init_residual(rows: int) -> ResidualStats:
    never, nothing = jnp.full((rows, 1), -jnp.inf, jnp.float32), jnp.zeros((rows, 1), jnp.int32)
    return ResidualStats(never, nothing, never, nothing)


def update_residual(stats: ResidualStats, z: jax.Array, target: jax.Array, lse: jax.Array, valid: jax.Array, columns: jax.Array,
                    seeds: jax.Array) -> ResidualStats:
    """Folds one block into the residual draw: ``z`` the draft's logits (over T), ``target`` p's log-probs, ``lse`` the
    draft's log-sum-exp ``[rows, 1]`` (first pass), so ``q = exp(z - lse)``. A column with p <= q scores -inf."""
    noise = gumbel_noise(seeds, columns)
    residual = jnp.maximum(jnp.exp(target) - jnp.exp(z - lse), 0.0)
    best, token, _ = _update_argmax(stats.best, stats.token, jnp.where(valid, jnp.log(residual) + noise, -jnp.inf), columns)
    target_best, target_token, _ = _update_argmax(stats.target_best, stats.target_token, jnp.where(valid, target + noise, -jnp.inf), columns)
    return ResidualStats(best, token, target_best, target_token)


def finalize_residual(stats: ResidualStats) -> jax.Array:
    """The drawn column ``[rows, 1]``: of the residual, or of p where the residual is empty (p == q: no draft is
    then rejected, so the fallback only keeps the result defined)."""
    return jnp.where(stats.best > -jnp.inf, stats.token, stats.target_token)
