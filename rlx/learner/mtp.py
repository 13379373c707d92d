"""Training the MTP drafting heads (`rlx.models.mtp`) on the same tokens as the policy, in the same jitted step.

For response token r >= 1 (target column c = P + r) the MTP head drafts it from the trunk's hidden state at
c - 2 and token c - 1; it is trained where both tokens c - 1 and c are response tokens (`mtp_mask`):

    mtp/loss = token-mean over those tokens of  -log q(token c)         q: the MTP head's distribution at `temperature`

The confidence head, reading the trunk and MTP hidden states at c - 2 (what the engine has when it drafts),
is trained toward the draft's acceptance probability under exact rejection sampling. PIPO regresses on
min(1, p(d) / q(d)) of a sampled draft d ~ q; its expectation over d, the target here, is

    accept = sum_v min(p_v, q_v) = E_{d ~ q} min(1, p(d) / q(d))                 p: the policy at column c - 1

the same minimiser for MSE and BCE without the sampling noise. It is computed exactly over vocabulary tiles
(`acceptance_probability`), never as [tokens, vocab] at once. With `train_trunk: false` every gradient of
these losses stops at the trunk (hidden states, embedding, unembedding); the confidence head never trains
the trunk or the MTP head.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlx.learner.logprobs import vocab_log_probs
from rlx.learner.objective import linear_coefficients
from rlx.models import Qwen3
from rlx.parallel.layout import Layout

VOCAB_TILE = 2048  # columns of the unembedding per step of the acceptance scan


def mtp_mask(mask: jax.Array) -> jax.Array:
    """[B, R]: 1 where response token r and the one before it are both trained tokens (0 at r = 0)."""
    return jnp.pad(mask[:, 1:] * mask[:, :-1], ((0, 0), (1, 0)))


def mtp_coefficients(mask: jax.Array) -> jax.Array:
    """Per-token coefficients [B, R] of the MTP token-mean over a minibatch (`rlx.learner.objective`'s linear aggregation)."""
    return linear_coefficients(mtp_mask(mask), "token-mean")


def acceptance_probability(p_hidden: jax.Array, q_hidden: jax.Array, unembedding: jax.Array, temperature: float,
                           tile: int = VOCAB_TILE) -> jax.Array:
    """sum_v min(p_v, q_v) [N] for p = softmax(p_hidden @ W / T), q = softmax(q_hidden @ W / T), in float32,
    over vocabulary tiles: a first pass for both log-sum-exps, a second for the sum of minima."""
    vocab = unembedding.shape[1]
    tiles = -(-vocab // tile)
    padded = jnp.pad(unembedding, ((0, 0), (0, tiles * tile - vocab)))
    weights = padded.reshape(unembedding.shape[0], tiles, tile).transpose(1, 0, 2).astype(p_hidden.dtype)  # [tiles, D, tile]
    valid = (jnp.arange(tiles * tile) < vocab).reshape(tiles, tile)

    def logits(w, ok):
        z = lambda h: jnp.where(ok, jnp.einsum("nd,dv->nv", h, w, preferred_element_type=jnp.float32) / temperature, -jnp.inf)
        return z(p_hidden), z(q_hidden)

    def lse_step(carry, tile_args):
        zp, zq = logits(*tile_args)
        return (jnp.logaddexp(carry[0], jax.nn.logsumexp(zp, axis=-1)), jnp.logaddexp(carry[1], jax.nn.logsumexp(zq, axis=-1))), None

    start = jnp.full(p_hidden.shape[:1], -jnp.inf, jnp.float32)
    (lse_p, lse_q), _ = jax.lax.scan(lse_step, (start, start), (weights, valid))

    def overlap_step(total, tile_args):
        zp, zq = logits(*tile_args)
        return total + jnp.sum(jnp.minimum(jnp.exp(zp - lse_p[:, None]), jnp.exp(zq - lse_q[:, None])), axis=-1), None

    overlap, _ = jax.lax.scan(overlap_step, jnp.zeros_like(lse_p), (weights, valid))
    return jnp.clip(overlap, 0.0, 1.0)


def mtp_loss(model: Qwen3, hidden: jax.Array, tokens: jax.Array, start: jax.Array, prompt_len: int, coefficients: jax.Array,
             temperature: float, impl: str = "auto", layout: Layout | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """A micro-batch's share of `loss_coef * mtp/loss + confidence_coef * confidence loss`, and its metrics.

    `hidden [B, P + R - 1, D]` are the trunk's (`rlx.learner.logprobs.trunk_hidden`) for `tokens [B, P + R]`;
    `coefficients [B, R]` are `mtp_coefficients` of the minibatch; `impl` and `layout` as the fused log-prob's.
    """
    config = model.config.mtp
    train_trunk = config.train_trunk
    unembedding = model.unembedding() if train_trunk else jax.lax.stop_gradient(model.unembedding())
    drafted, _ = model.mtp_hidden_states(hidden[:, :-1], tokens[:, 1:-1], start=start, trunk_gradient=train_trunk)
    drafted = drafted[:, prompt_len - 1:]  # [B, R - 1]: drafts of response tokens 1 .. R - 1
    batch, length, width = drafted.shape
    targets = tokens[:, prompt_len + 1:]
    draft_log_probs, _ = vocab_log_probs(drafted.reshape(-1, width), unembedding, targets.reshape(-1), temperature, impl, layout)
    share = coefficients[:, 1:]
    cross_entropy = -jnp.sum(draft_log_probs.reshape(batch, length) * share)

    fixed = jax.lax.stop_gradient
    context, policy = fixed(hidden[:, prompt_len - 1:-1]), fixed(hidden[:, prompt_len:])
    accept = acceptance_probability(policy.reshape(-1, width), fixed(drafted).reshape(-1, width), fixed(model.unembedding()),
                                    temperature).reshape(batch, length)
    logit = model.mtp.confidence_logit(context, fixed(drafted))
    if config.confidence_loss == "bce":
        per_token = jax.nn.softplus(logit) - accept * logit
    else:
        per_token = jnp.square(jax.nn.sigmoid(logit) - accept)
    confidence = jnp.sum(per_token * share)
    loss = config.loss_coef * cross_entropy + config.confidence_coef * confidence
    metrics = {"mtp/loss": cross_entropy, "mtp/accept_prob_mean": jnp.sum(accept * share),
               "mtp/confidence_loss": confidence, "mtp/confidence_mean": jnp.sum(jax.nn.sigmoid(logit) * share)}
    return loss, metrics
