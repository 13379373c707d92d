"""Per-token log-probs and entropies of responses under the learner's weights.

Every learner log-prob (old, reference, current, teacher) goes through the fused kernel in
`pallas_kernels`, which never materializes the [tokens, vocab] logits. On a mesh the kernel runs
on each device's rows under `shard_map` (with a cross-device log-sum-exp where the rules split
the vocabulary), since XLA cannot partition a Pallas call.
"""

from __future__ import annotations

import jax

from pallas_kernels import sharded_token_logprobs_and_entropy
from rlx.models import Qwen3
from rlx.models.multimodal import Media
from rlx.parallel.layout import Layout


def response_log_probs(
    model: Qwen3, tokens: jax.Array, start: jax.Array, prompt_len: int, temperature: float, impl: str = "auto",
    media: Media | None = None, remat: str = "none", layout: Layout | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(log-probs, entropies) [B, R] of `tokens[:, prompt_len:]` given everything before each token.

    `tokens [B, P + R]` is a left-padded prompt followed by the right-padded response;
    `impl` names the fused kernel implementation (see `LearnerConfig.logprob_impl`); `media`
    are the prompts' encoder inputs, re-encoded here so encoder weights get gradients too;
    `remat` rematerialises decoder layers in the backward pass; `layout` is the mesh the rows
    are split on (None: one device).
    """
    hidden, _ = model.hidden_states(tokens[:, :-1], start=start, media=media, media_columns=prompt_len, remat=remat)
    hidden = hidden[:, prompt_len - 1:]
    batch, length, width = hidden.shape
    targets = tokens[:, prompt_len:]
    placement = {} if layout is None else {"mesh": layout.mesh, "row_axes": layout.row_axes, "vocab_axes": layout.axes("vocab")}
    log_probs, entropy = sharded_token_logprobs_and_entropy(
        hidden.reshape(batch * length, width), model.unembedding().astype(hidden.dtype), targets.reshape(-1), temperature,
        impl=impl, **placement)
    return log_probs.reshape(batch, length), entropy.reshape(batch, length)
