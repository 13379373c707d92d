"""Per-token log-probs and entropies of responses under the learner's weights.

Every learner log-prob (old, reference, current, teacher) goes through the fused kernel in
`pallas_kernels`, which never materializes the [tokens, vocab] logits.
"""

from __future__ import annotations

import jax

from pallas_kernels import token_logprobs_and_entropy
from rlx.models import Qwen3
from rlx.models.multimodal import Media


def response_log_probs(
    model: Qwen3, tokens: jax.Array, start: jax.Array, prompt_len: int, temperature: float, impl: str = "auto",
    media: Media | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(log-probs, entropies) [B, R] of `tokens[:, prompt_len:]` given everything before each token.

    `tokens [B, P + R]` is a left-padded prompt followed by the right-padded response;
    `impl` names the fused kernel implementation (see `LearnerConfig.logprob_impl`); `media`
    are the prompts' encoder inputs, re-encoded here so encoder weights get gradients too.
    """
    hidden, _ = model.hidden_states(tokens[:, :-1], start=start, media=media)
    hidden = hidden[:, prompt_len - 1:]
    batch, length, width = hidden.shape
    targets = tokens[:, prompt_len:]
    log_probs, entropy = token_logprobs_and_entropy(
        hidden.reshape(batch * length, width), model.unembedding().astype(hidden.dtype), targets.reshape(-1), temperature, impl=impl
    )
    return log_probs.reshape(batch, length), entropy.reshape(batch, length)
