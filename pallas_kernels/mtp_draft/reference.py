"""Pure-jnp reference: materializes the ``[N, V]`` logits and noise. Ground truth for the kernels' tests."""

import jax
import jax.numpy as jnp

from pallas_kernels.mtp_draft.blockmath import gumbel_noise


def _logits_and_noise(h, w, seeds, temperature):
    columns = jnp.arange(w.shape[1], dtype=jnp.int32)[None, :]
    return jnp.dot(h, w, preferred_element_type=jnp.float32) / temperature, gumbel_noise(seeds.astype(jnp.int32)[:, None], columns)


def reference_draft_tokens(h: jax.Array, w: jax.Array, seeds: jax.Array, temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """``token_n = argmax_k (z_nk + g(seed_n, k))``, a sample of ``softmax(z_n)``, and its log-prob, with
    ``z = (h @ w) / temperature`` (float32 accumulation). Returns int32 and float32 ``[N]``."""
    logits, noise = _logits_and_noise(h, w, seeds, temperature)
    tokens = jnp.argmax(logits + noise, axis=-1).astype(jnp.int32)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[:, None], axis=-1)[:, 0]
    return tokens, logp


def reference_residual_tokens(target: jax.Array, h: jax.Array, w: jax.Array, seeds: jax.Array, temperature: float = 1.0) -> jax.Array:
    """``token_n = argmax_k (log max(0, p_nk - q_nk) + g(seed_n, k))``, a sample of the normalised residual, with
    ``p = exp(target)`` and ``q = softmax((h @ w) / temperature)``; ``argmax_k (log p_nk + g)`` where p == q. int32 ``[N]``."""
    logits, noise = _logits_and_noise(h, w, seeds, temperature)
    residual = jnp.maximum(jnp.exp(target) - jax.nn.softmax(logits, axis=-1), 0.0)
    empty = jnp.all(residual == 0, axis=-1)
    return jnp.argmax(jnp.where(empty[:, None], target, jnp.log(residual)) + noise, axis=-1).astype(jnp.int32)
