"""A value model: the Qwen3 decoder trunk with a scalar head instead of the vocabulary projection."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlx.models.config import ModelConfig
from rlx.models.layers import param
from rlx.models.qwen3 import Qwen3


class ValueModel(nnx.Module):
    """V(prefix) for every position: final hidden state times a [hidden, 1] head (zero-initialized,
    so a fresh critic predicts 0 and its first targets are the plain returns)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.trunk = Qwen3(config, rngs=rngs)
        self.head = param(rngs, nnx.initializers.zeros, (config.hidden_size, 1), ("embed", None), jnp.dtype(config.param_dtype))

    def __call__(self, input_ids: jax.Array, *, start: jax.Array | None = None, remat: str = "none") -> jax.Array:
        """Float32 values [B, S]; column j is the value of the prefix ending at column j (`remat` as in `Qwen3.hidden_states`)."""
        hidden, _ = self.trunk.hidden_states(input_ids, start=start, remat=remat)
        return jnp.einsum("bsd,do->bso", hidden, self.head[...].astype(hidden.dtype), preferred_element_type=jnp.float32)[..., 0]
