"""Pure-jnp reference: materializes the ``[N, V]`` logits and noise. Ground truth for the kernels' tests."""

import jax
import jax.numpy as jnp

from pallas_kernels.mtp_draft.blockmath import gumbel_noise


def reference_draft_tokens(h: jax.Array, w: jax.Array, seeds: jax.Array, temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """``token_n = argmax_k (z_nk + g(seed_n, k))``, a sample of ``softmax(z_n)``, and its log-prob, with
    ``z = (h @ w) / temperature`` (float32 accumulation). Returns int32 and float32 ``[N]``."""
    logits = jnp.dot(h, w, preferred_element_type=jnp.float32) / temperature
    columns = jnp.arange(w.shape[1], dtype=jnp.int32)[None, :]
    tokens = jnp.argmax(logits + gumbel_noise(seeds.astype(jnp.int32)[:, None], columns), axis=-1).astype(jnp.int32)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[:, None], axis=-1)[:, 0]
    return tokens, logp
