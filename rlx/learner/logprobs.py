"""Per-token log-probs and entropies of responses under the learner's weights.

Every learner log-prob (old, reference, current, teacher) goes through the fused kernel in
`pallas_kernels`, which never materializes the [tokens, vocab] logits. On a mesh the kernel runs
on each device's rows under `shard_map` (with a cross-device log-sum-exp where the rules split
the vocabulary), since XLA cannot partition a Pallas call.

Rollout routing replay (R3): given the experts the generator's engine routed each token to, the
forward can replay them (`rlx.models.moe`), and either way counts how many of those token-layer
routes the learner's own router would have chosen.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from pallas_kernels import sharded_token_logprobs_and_entropy
from rlx.models import Qwen3
from rlx.models.multimodal import Media
from rlx.parallel.layout import Layout


class ResponseScores(NamedTuple):
    log_probs: jax.Array  # [B, R]
    entropy: jax.Array  # [B, R]
    route_agreement: jax.Array | None  # [B, 2] float32 (see `route_agreement`); None without recorded routes


def route_agreement(own: jax.Array, recorded: jax.Array) -> jax.Array:
    """Per row [B, 2]: token-layer routes whose expert set the router chooses itself (`own`), and
    token-layer routes recorded; both [B, S, moe_layers, k], -1 in `recorded` where nothing was."""
    present = recorded[..., 0] >= 0
    same = jnp.all(jnp.sort(own, axis=-1) == jnp.sort(recorded, axis=-1), axis=-1) & present
    return jnp.stack([jnp.sum(same, axis=(1, 2)), jnp.sum(present, axis=(1, 2))], axis=-1).astype(jnp.float32)


def response_scores(
    model: Qwen3, tokens: jax.Array, start: jax.Array, prompt_len: int, temperature: float, impl: str = "auto",
    media: Media | None = None, remat: str = "none", layout: Layout | None = None, routes: jax.Array | None = None,
    replay: bool = False,
) -> ResponseScores:
    """(log-probs, entropies) [B, R] of `tokens[:, prompt_len:]` given everything before each token,
    and the route agreement.

    `tokens [B, P + R]` is a left-padded prompt followed by the right-padded response;
    `impl` names the fused kernel implementation (see `LearnerConfig.logprob_impl`); `media`
    are the prompts' encoder inputs, re-encoded here so encoder weights get gradients too;
    `remat` rematerialises decoder layers in the backward pass; `layout` is the mesh the rows
    are split on (None: one device). `routes [B, P + R, moe_layers, k]` are the experts the
    sampler routed each token to (-1 where none): replayed by every MoE layer with `replay`,
    compared with the learner's own choice either way.
    """
    return response_hidden_and_scores(model, tokens, start, prompt_len, temperature, impl, media, remat, layout, routes, replay)[1]


def response_hidden_and_scores(
    model: Qwen3, tokens: jax.Array, start: jax.Array, prompt_len: int, temperature: float, impl: str = "auto",
    media: Media | None = None, remat: str = "none", layout: Layout | None = None, routes: jax.Array | None = None,
    replay: bool = False,
) -> tuple[jax.Array, ResponseScores]:
    """The trunk's hidden states [B, P + R - 1, D] (`trunk_hidden`) and `response_scores` computed from them
    (arguments as `response_scores`), for losses that share the forward pass (the MTP heads')."""
    recorded = routes[:, :-1] if routes is not None else None
    hidden, own = trunk_hidden(model, tokens, start, prompt_len, media, remat, recorded if replay else None)
    return hidden, scores_of_hidden(model, hidden, tokens, prompt_len, temperature, impl, layout, own, recorded)


def trunk_hidden(model: Qwen3, tokens: jax.Array, start: jax.Array, prompt_len: int, media: Media | None = None, remat: str = "none",
                 replayed: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
    """Final-normed hidden states [B, P + R - 1, D] of `tokens[:, :-1]` (column t predicts token t + 1) and the
    router's own routes; `replayed` routes of `tokens[:, :-1]` are replayed (arguments as `response_scores`)."""
    hidden, _, own = model.hidden_states_and_routes(tokens[:, :-1], start=start, media=media, media_columns=prompt_len, remat=remat,
                                                    routes=replayed)
    return hidden, own


def scores_of_hidden(model: Qwen3, hidden: jax.Array, tokens: jax.Array, prompt_len: int, temperature: float, impl: str = "auto",
                     layout: Layout | None = None, own: jax.Array | None = None, recorded: jax.Array | None = None) -> ResponseScores:
    """`response_scores` from the trunk's `hidden` (`trunk_hidden`); `own` and `recorded` routes give the route agreement."""
    hidden = hidden[:, prompt_len - 1:]
    batch, length, width = hidden.shape
    targets = tokens[:, prompt_len:]
    log_probs, entropy = vocab_log_probs(hidden.reshape(batch * length, width), model.unembedding(), targets.reshape(-1),
                                         temperature, impl, layout)
    agreement = route_agreement(own, recorded) if recorded is not None else None
    return ResponseScores(log_probs.reshape(batch, length), entropy.reshape(batch, length), agreement)


def vocab_log_probs(hidden: jax.Array, unembedding: jax.Array, targets: jax.Array, temperature: float, impl: str = "auto",
                    layout: Layout | None = None) -> tuple[jax.Array, jax.Array]:
    """(log-probs of `targets` [N], entropies [N]) of the fused kernel on rows `hidden [N, D]` (unembedding cast to their dtype)."""
    placement = {} if layout is None else {"mesh": layout.mesh, "row_axes": layout.row_axes, "vocab_axes": layout.axes("vocab")}
    return sharded_token_logprobs_and_entropy(hidden, unembedding.astype(hidden.dtype), targets, temperature, impl=impl, **placement)


def response_log_probs(
    model: Qwen3, tokens: jax.Array, start: jax.Array, prompt_len: int, temperature: float, impl: str = "auto",
    media: Media | None = None, remat: str = "none", layout: Layout | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(log-probs, entropies) [B, R]: `response_scores` without routes."""
    scores = response_scores(model, tokens, start, prompt_len, temperature, impl, media, remat, layout)
    return scores.log_probs, scores.entropy
