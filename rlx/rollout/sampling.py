"""Token choice from logits: greedy, temperature, top-k and nucleus (top-p)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def scaled_log_probs(logits: jax.Array, temperature: jax.Array | float) -> jax.Array:
    """log softmax(logits / T); T = 0 (greedy) scores under T = 1.

    This is the distribution the learner recomputes, so behaviour and learner
    log-probs are comparable token for token.
    """
    temperature = jnp.asarray(temperature, jnp.float32)
    safe = jnp.where(temperature > 0, temperature, 1.0)
    return jax.nn.log_softmax(logits.astype(jnp.float32) / safe, axis=-1)


def top_p_keep(log_probs: jax.Array, top_p: jax.Array | float) -> jax.Array:
    """Boolean mask of the smallest set of most-likely tokens whose mass reaches `top_p`."""
    sorted_lp = jnp.sort(log_probs, axis=-1)[..., ::-1]
    probs = jnp.exp(sorted_lp)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = mass_before < top_p  # the most likely token always has mass_before 0
    threshold = jnp.min(jnp.where(kept, sorted_lp, jnp.inf), axis=-1, keepdims=True)
    return log_probs >= threshold


def top_k_keep(log_probs: jax.Array, top_k: jax.Array | int) -> jax.Array:
    """Boolean mask of the `top_k` most likely tokens (ties at the k-th value are all kept); 0 keeps all."""
    vocab = log_probs.shape[-1]
    top_k = jnp.asarray(top_k, jnp.int32)
    sorted_lp = jnp.sort(log_probs, axis=-1)[..., ::-1]
    kth = jnp.take(sorted_lp, jnp.clip(top_k - 1, 0, vocab - 1), axis=-1)[..., None]
    return (log_probs >= kth) | (top_k <= 0)


def sample_tokens(
    key: jax.Array,
    logits: jax.Array,
    temperature: jax.Array | float,
    top_p: jax.Array | float,
    top_k: jax.Array | int = 0,
) -> tuple[jax.Array, jax.Array]:
    """Draws one token per row of `logits [B, V]`; returns (tokens [B], their log-probs [B]).

    The draw is restricted to the top-k and top-p set; the returned log-prob is that of the
    unrestricted tempered distribution, which is what the learner recomputes.
    """
    log_probs = scaled_log_probs(logits, temperature)
    keep = top_p_keep(log_probs, top_p) & top_k_keep(log_probs, top_k)
    restricted = jnp.where(keep, log_probs, -jnp.inf)
    sampled = jax.random.categorical(key, restricted, axis=-1)
    greedy = jnp.argmax(log_probs, axis=-1)
    tokens = jnp.where(jnp.asarray(temperature) > 0, sampled, greedy).astype(jnp.int32)
    return tokens, jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]
