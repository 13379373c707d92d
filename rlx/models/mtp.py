"""Multi-token-prediction (MTP) drafting heads on a Qwen3 trunk (DeepSeek-V3's MTP module, PIPO's confidence head).

The MTP head drafts token t+2: `[RMSNorm(embed(token t+1)), RMSNorm(trunk hidden at t)]` is projected to the
hidden width, run through one decoder layer (causal attention over the MTP positions), final-normed and
unembedded with the trunk's shared unembedding. The confidence head, a small MLP with a sigmoid on
`[trunk hidden at t, MTP hidden at t]`, predicts the probability that the draft is accepted. Both are trained
by the learner (`rlx.learner.mtp`); Hugging Face exports hold the trunk only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlx.models.config import ModelConfig
from rlx.models.decoder_layer import DecoderLayer
from rlx.models.kv_cache import KVCache
from rlx.models.layers import RMSNorm, param


class MTPHeads(nnx.Module):
    """The MTP head and the confidence head of `config.mtp` (logical names: `mtp_in` is the concatenated
    [token, hidden] input, `confidence` the confidence MLP's width; both replicated by every preset)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d, dt, eps = config.hidden_size, jnp.dtype(config.param_dtype), config.rms_norm_eps
        width = config.mtp.confidence_width
        self.token_norm = RMSNorm(d, eps, "embed", param_dtype=dt, rngs=rngs)
        self.hidden_norm = RMSNorm(d, eps, "embed", param_dtype=dt, rngs=rngs)
        self.proj = param(rngs, nnx.initializers.lecun_normal(), (2 * d, d), ("mtp_in", "embed"), dt)
        self.layer = DecoderLayer(config, moe=False, rngs=rngs)
        self.final_norm = RMSNorm(d, eps, "embed", param_dtype=dt, rngs=rngs)
        self.confidence_in = param(rngs, nnx.initializers.lecun_normal(), (2 * d, width), ("mtp_in", "confidence"), dt)
        # Zero: a fresh confidence head says 0.5 for every draft.
        self.confidence_out = param(rngs, nnx.initializers.zeros, (width, 1), ("confidence", None), dt)

    def __call__(self, hidden: jax.Array, next_embedding: jax.Array, positions: jax.Array, q_columns: jax.Array, start: jax.Array,
                 cache: KVCache | None, layer: int, cache_index: jax.Array, kv_len: int | None) -> tuple[jax.Array, KVCache | None]:
        """Final-normed MTP hidden states [B, S, D] from trunk `hidden` at t and `next_embedding` of token t+1
        (both [B, S, D]); `layer` is the MTP layer's index in `cache` (columns and cache as in `Qwen3`)."""
        x, cache, _ = self.layer(self._layer_input(hidden, next_embedding), positions, q_columns, start, cache, layer, cache_index, kv_len)
        return self.final_norm(x), cache

    def last(self, hidden: jax.Array, next_embedding: jax.Array, positions: jax.Array, q_columns: jax.Array, start: jax.Array,
             cache: KVCache, layer: int, cache_index: jax.Array, kv_len: int | None) -> tuple[jax.Array, KVCache]:
        """`__call__`'s final-normed hidden state at the last column only [B, D], and the cache with every column's keys
        and values: the earlier columns run only the layer's key and value projections (a decode step drafts from the
        last column; it needs the others' cache columns, not their outputs)."""
        x = self._layer_input(hidden, next_embedding)
        cache = self.layer.write_keys_values(x[:, :-1], positions[:, :-1], cache, layer, cache_index)
        x, cache, _ = self.layer(x[:, -1:], positions[:, -1:], q_columns[:, -1:], start, cache, layer, q_columns[:, -1], kv_len)
        return self.final_norm(x[:, 0]), cache

    def write_keys_values(self, hidden: jax.Array, next_embedding: jax.Array, positions: jax.Array, cache: KVCache, layer: int,
                          cache_index: jax.Array) -> KVCache:
        """`cache` with the MTP layer's keys and values of every column written, as `__call__` writes them, and no
        output computed (a prefill or a rewritten chunk drafts nothing)."""
        return self.layer.write_keys_values(self._layer_input(hidden, next_embedding), positions, cache, layer, cache_index)

    def _layer_input(self, hidden: jax.Array, next_embedding: jax.Array) -> jax.Array:
        joined = jnp.concatenate([self.token_norm(next_embedding), self.hidden_norm(hidden)], axis=-1)
        return joined @ self.proj[...].astype(hidden.dtype)

    def confidence_logit(self, hidden: jax.Array, mtp_hidden: jax.Array) -> jax.Array:
        """The confidence head's pre-sigmoid float32 logit [...] from trunk `hidden` and `mtp_hidden` at the same position."""
        dtype = hidden.dtype
        inner = jax.nn.silu(jnp.concatenate([hidden, mtp_hidden], axis=-1) @ self.confidence_in[...].astype(dtype))
        return jnp.einsum("...c,co->...o", inner, self.confidence_out[...].astype(dtype), preferred_element_type=jnp.float32)[..., 0]

    def confidence(self, hidden: jax.Array, mtp_hidden: jax.Array) -> jax.Array:
        """Float32 probability [...] that the draft made from `mtp_hidden` is accepted (trunk `hidden` at the same position)."""
        return jax.nn.sigmoid(self.confidence_logit(hidden, mtp_hidden))
