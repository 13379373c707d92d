"""Loss aggregation modes: how a per-token loss [B, T] becomes one number."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from rlx.algorithms.registry import Registry

AggregationFn = Callable[[jax.Array, jax.Array], jax.Array]
LOSS_AGGREGATIONS: Registry[AggregationFn] = Registry("loss aggregation mode")


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


@LOSS_AGGREGATIONS.register("token-mean")
def token_mean(loss: jax.Array, mask: jax.Array) -> jax.Array:
    """sum over all tokens / number of tokens: long responses weigh more (DAPO)."""
    return masked_mean(loss, mask)


def aggregate(loss: jax.Array, mask: jax.Array, mode: str) -> jax.Array:
    return LOSS_AGGREGATIONS.get(mode)(loss, mask)
