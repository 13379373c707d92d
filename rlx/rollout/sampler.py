"""A jitted KV-cache sampler: one prefill, then a decode loop that stops when every row is done.

This is the static-batch generator of the foundation; the JetStream-API engine replaces it
behind the same `generate` call.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlx.models import KVCache
from rlx.rollout.sampling import sample_tokens


@dataclasses.dataclass(frozen=True)
class Generation:
    """Responses right-padded to `max_new_tokens`; `mask` is 1 on real tokens, EOS included."""

    tokens: np.ndarray  # [B, R] int32
    log_probs: np.ndarray  # [B, R] float32, behaviour log-probs
    mask: np.ndarray  # [B, R] float32
    lengths: np.ndarray  # [B] int32


class Sampler:
    """Generates from left-padded prompts. Weights are an argument, never baked into the program."""

    def __init__(self, graphdef: nnx.GraphDef, *, eos_id: int, pad_id: int, max_new_tokens: int):
        self._graphdef = graphdef
        self._eos_id = eos_id
        self._pad_id = pad_id
        self._max_new = max_new_tokens
        self._generate = jax.jit(self._generate_impl)

    def generate(
        self,
        params: nnx.State,
        tokens: np.ndarray,
        start: np.ndarray,
        key: jax.Array,
        temperature: float,
        top_p: float = 1.0,
    ) -> Generation:
        out_tokens, log_probs, mask = self._generate(
            params, jnp.asarray(tokens, jnp.int32), jnp.asarray(start, jnp.int32), key,
            jnp.float32(temperature), jnp.float32(top_p),
        )
        out_tokens, log_probs, mask = jax.device_get((out_tokens, log_probs, mask))
        return Generation(out_tokens, log_probs, mask, mask.sum(axis=1).astype(np.int32))

    def _generate_impl(self, params, tokens, start, key, temperature, top_p):
        model = nnx.merge(self._graphdef, params)
        batch, prompt_len = tokens.shape
        cache = KVCache.zeros(model.config, batch, prompt_len + self._max_new)
        logits, cache = model(tokens, start=start, cache=cache, cache_index=0)

        def not_finished(carry):
            step, _, _, _, _, _, done = carry
            return (step < self._max_new) & ~jnp.all(done)

        def decode_step(carry):
            step, cache, last_logits, out_tokens, out_lp, out_mask, done = carry
            token, log_prob = sample_tokens(jax.random.fold_in(key, step), last_logits, temperature, top_p)
            token = jnp.where(done, self._pad_id, token)
            out_tokens = out_tokens.at[:, step].set(token)
            out_lp = out_lp.at[:, step].set(jnp.where(done, 0.0, log_prob))
            out_mask = out_mask.at[:, step].set((~done).astype(jnp.float32))
            done = done | (token == self._eos_id)
            logits, cache = model(token[:, None], start=start, cache=cache, cache_index=prompt_len + step)
            return step + 1, cache, logits[:, -1], out_tokens, out_lp, out_mask, done

        init = (
            jnp.int32(0), cache, logits[:, -1],
            jnp.full((batch, self._max_new), self._pad_id, jnp.int32),
            jnp.zeros((batch, self._max_new), jnp.float32),
            jnp.zeros((batch, self._max_new), jnp.float32),
            jnp.zeros((batch,), bool),
        )
        _, _, _, out_tokens, out_lp, out_mask, _ = jax.lax.while_loop(not_finished, decode_step, init)
        return out_tokens, out_lp, out_mask
