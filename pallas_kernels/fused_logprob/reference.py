"""Pure-jnp reference: materializes the full ``[N, V]`` logits.

It is the ground truth for tests (its gradients come from plain autodiff, so
they check the hand-derived VJPs of the fused implementations) and the
"naive" baseline in ``benchmarks/logprob_memory.py``.
"""

import jax
import jax.numpy as jnp


def reference_token_logprobs_and_entropy(
    h: jax.Array, w: jax.Array, targets: jax.Array, temperature: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """``logp_n = log softmax(z_n)[y_n]`` and ``H_n = -sum_k p_nk log p_nk``.

    ``z = (h @ w) / temperature`` with float32 accumulation; ``p = softmax(z)``.
    Returns two float32 ``[N]`` arrays.
    """
    logits = jnp.dot(h, w, preferred_element_type=jnp.float32) / temperature
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    logp = jnp.take_along_axis(log_probs, targets[:, None], axis=-1)[:, 0]
    entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
    return logp, entropy
