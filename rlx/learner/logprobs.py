"""Per-token log-probs and entropies of responses under the learner's weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlx.models import Qwen3


def token_log_probs_and_entropy(hidden: jax.Array, unembedding: jax.Array, targets: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
    """log softmax(h W / T)[y] and the entropy of softmax(h W / T), for h [N, D], W [D, V], y [N]."""
    logits = jnp.einsum("nd,dv->nv", hidden, unembedding.astype(hidden.dtype), preferred_element_type=jnp.float32)
    log_probs = jax.nn.log_softmax(logits / temperature, axis=-1)
    chosen = jnp.take_along_axis(log_probs, targets[:, None], axis=-1)[:, 0]
    entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
    return chosen, entropy


def response_log_probs(model: Qwen3, tokens: jax.Array, start: jax.Array, prompt_len: int, temperature: float) -> tuple[jax.Array, jax.Array]:
    """(log-probs, entropies) [B, R] of `tokens[:, prompt_len:]` given everything before each token.

    `tokens [B, P + R]` is a left-padded prompt followed by the right-padded response.
    """
    hidden, _ = model.hidden_states(tokens[:, :-1], start=start)
    hidden = hidden[:, prompt_len - 1:]
    batch, length, width = hidden.shape
    targets = tokens[:, prompt_len:]
    log_probs, entropy = token_log_probs_and_entropy(
        hidden.reshape(batch * length, width), model.unembedding(), targets.reshape(-1), temperature
    )
    return log_probs.reshape(batch, length), entropy.reshape(batch, length)
