"""Speculative decoding with the model's MTP head (`rollout.speculative: lossless | confidence`).

Each target forward runs two tokens per slot: the token `x` it emits, and a draft `d` of the token after it,
sampled from the MTP head's distribution q (`rlx.models.mtp`). The forward's logits at `x` give the target's
distribution p over the token after `x`. One forward emits `x` and, when the draft is kept, `d` too: 1 to 2
tokens per forward. What decides whether `d` is kept (`Speculation.mode`):

`lossless`: `d` is kept with probability min(1, p(d) / q(d)), otherwise the token after `x` is drawn from the
residual max(0, p - q) / sum(max(0, p - q)). The token after `x` is then distributed exactly as p (Leviathan et
al. 2023, Chen et al. 2023), so rollouts are samples of the policy as without drafting, and the behaviour
log-prob recorded for every token is log p of it (for a kept draft, p(d) from the forward that scored it).

`confidence` (PIPO): `d` is kept, unverified, when the confidence head (trained toward the draft's acceptance
probability, `rlx.learner.mtp`) rates it >= `threshold`; otherwise it is discarded and the token after `x` is
drawn from p. A kept draft was drawn from q, so its behaviour log-prob is log q(d); every other token records
log p. Samples are then not the policy's, but the learner's importance ratios pi / behaviour are those of the
distributions each token was actually drawn from, which off-policy corrections (`algorithm.correction`,
decoupled PPO) need, so the config requires one.

A resampled token (rejected or discarded draft) is emitted by the next forward (it is that forward's `x`).
Every forward also reports log q(d) - log p(d) of its draft, whose mean over drafts estimates KL(q || p)
without bias (`spec/draft_kl`).

Both modes draft with the fused drafting kernel (`pallas_kernels.mtp_draft`: unembedding, Gumbel-max sampling
and log-sum-exp over vocabulary blocks, no `[slots, vocab]` draft logits), which gives the draft and log q(d).
Lossless mode draws a rejected draft's replacement with the same kernel family (`residual_tokens`): q is
recomputed over vocabulary blocks against the forward's target log-probs p, so q is never materialised either.

The MTP head drafts from the trunk's hidden state at the column before `x` and the embedding of `x`; its
decoder layer keeps keys and values in the engine's KV cache as one extra layer (`model.num_layers`). Each step
(re)writes the MTP layer's two latest columns, so a kept draft (whose own MTP column was skipped) leaves no hole.

Only untruncated sampling (`temperature > 0`, no top-k / top-p) is drafted; other settings (greedy validation)
decode as without drafting on the same engine. `recompute` and `extend` rewrite the MTP layer's columns they
cover and the draft context alongside the trunk's (`refresh_mtp_chunk`, `refreshed_context`), so drafts after a
weight swap or an appended observation are the head's, as in an uninterrupted sequence.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from pallas_kernels.mtp_draft import draft_tokens, residual_tokens, resolve_impl
from rlx.models import KVCache, ModelConfig, Qwen3
from rlx.models.activation_sharding import map_rows
from rlx.rollout.forward_loop import run_forwards
from rlx.rollout.sampling import SamplingParams, draw_with_uniforms, sample_tokens, scaled_log_probs
from rlx.rollout.state import DecodeState, DraftContext, ResultTokens


@dataclasses.dataclass(frozen=True)
class Speculation:
    """How a speculative engine keeps drafts (see the module docstring); static in its compiled programs."""

    mode: Literal["lossless", "confidence"]
    threshold: float | None = None  # confidence mode (only): the least confidence of a kept draft

    def __post_init__(self) -> None:
        if self.mode not in ("lossless", "confidence"):
            raise ValueError(f"speculative mode must be lossless or confidence, got {self.mode!r}")
        if (self.mode == "confidence") != (self.threshold is not None):
            raise ValueError(f"a confidence threshold is what confidence mode (only) reads; got mode {self.mode} with threshold {self.threshold}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"the confidence threshold is a probability in [0, 1], got {self.threshold}")


def drafts(sampling: SamplingParams) -> bool:
    """Whether `sampling` is drafted (untruncated, not greedy)."""
    return sampling.temperature > 0 and not sampling.truncates


def cache_config(config: ModelConfig) -> ModelConfig:
    """The model config whose KV cache also holds the MTP layer (one layer more)."""
    return dataclasses.replace(config, num_layers=config.num_layers + 1)


def prefill_context(model: Qwen3, hidden: jax.Array, tokens: jax.Array, start: jax.Array, cache: KVCache) -> tuple[DraftContext, KVCache]:
    """A prefilled prompt's draft context and its MTP-layer cache columns 0 .. P - 2 (column P - 1 needs the first
    sampled token and is written by the first decode step). `hidden [N, P, D]` are the trunk's over `tokens [N, P]`."""
    cache = model.mtp_cache(hidden[:, :-1], tokens[:, 1:], start=start, cache=cache, cache_index=0)
    rows = tokens.shape[0]
    nothing = jnp.zeros((rows,), jnp.int32)
    return DraftContext(hidden[:, -2:], tokens[:, -1], nothing, jnp.zeros((rows,), jnp.float32), jnp.zeros((rows,), bool)), cache


def refresh_mtp_chunk(model: Qwen3, hidden: jax.Array, following: jax.Array, start: jax.Array, cache: KVCache,
                      index: jax.Array) -> KVCache:
    """Rewrites the MTP layer's cache columns `index .. index + W - 1` [B] of a chunk the trunk just ran (`recompute`,
    `extend`): column t from the trunk's `hidden [B, W, D]` at t and the token after t (`following [B, W]`). The
    column of a row's last token is rewritten by its next decode step, which knows the token after it."""
    return model.mtp_cache(hidden, following, start=start, cache=cache, cache_index=index)


def refreshed_context(model: Qwen3, state: DecodeState, cache: KVCache, lengths: jax.Array, columns: jax.Array, first_token: jax.Array,
                      last_hidden: jax.Array, before_last: jax.Array, last_token: jax.Array) -> tuple[KVCache, DraftContext]:
    """After `recompute` or `extend` ran `lengths [B]` tokens (the first `first_token`) at `columns` onwards: the draft
    context of those rows (the trunk's hidden states at their last two columns, their last token, no pending token:
    the next forward draws afresh), and the MTP layer's two columns before `columns`, which no chunk covers: from the
    slot's draft context, as its next decode step would have written them, with `first_token` as that step's token
    (none when `columns` < 2: a recompute from column 0). An extension is expected right after the slot's last
    decoded column (the context's)."""
    chosen = lengths > 0
    boundary = jnp.where(chosen & (columns >= 2), columns - 2, cache.max_len)  # beyond the cache: the write is dropped
    context = state.draft
    cache = model.mtp_cache(context.hidden, jnp.stack([context.token, first_token], axis=1), start=state.start, cache=cache,
                            cache_index=boundary)
    rows = lambda new, old: jnp.where(chosen.reshape(-1, *([1] * (new.ndim - 1))), new, old)
    return cache, DraftContext(hidden=rows(jnp.stack([before_last, last_hidden], axis=1), context.hidden),
                               token=rows(last_token, context.token), pending=context.pending,
                               pending_log_prob=context.pending_log_prob, has_pending=context.has_pending & ~chosen)


def lossless_keep(uniform: jax.Array, target_log_probs: jax.Array, draft: jax.Array, draft_log_q: jax.Array) -> jax.Array:
    """Exact rejection sampling's test of `draft [B]` drawn from q: kept [B] where `uniform [B]` < min(1, p(d) / q(d)),
    with p's normalised log-probs `[B, V]` and log q(d) `[B]`. A kept draft, else a draw of the residual max(0, p - q)
    (`kernel_residual`), is distributed as p whatever q is."""
    return uniform < jnp.exp(jnp.minimum(_at(target_log_probs, draft) - draft_log_q, 0.0))


def kernel_draft(model: Qwen3, mtp_hidden: jax.Array, seeds: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
    """(draft [B], log q(draft) [B]) from the MTP head's final hidden states `[B, D]` by the fused drafting kernel
    (`pallas_kernels.mtp_draft`, `auto`)."""
    return _per_device_rows(lambda unembedding, impl, hidden, seeds: draft_tokens(hidden, unembedding, seeds, temperature, impl=impl),
                            model, mtp_hidden, seeds)


def kernel_residual(model: Qwen3, mtp_hidden: jax.Array, target_log_probs: jax.Array, seeds: jax.Array, temperature: float) -> jax.Array:
    """A draw [B] of the residual max(0, p - q) (of p where p == q) by the fused kernel: p from its log-probs `[B, V]`,
    q recomputed blockwise from the MTP head's final hidden states `[B, D]`; `seeds [B]` other than the draft's."""
    residual = lambda unembedding, impl, hidden, target, seeds: residual_tokens(target, hidden, unembedding, seeds, temperature, impl=impl)
    return _per_device_rows(residual, model, mtp_hidden, target_log_probs, seeds)


def _per_device_rows(op, model: Qwen3, mtp_hidden: jax.Array, *rows: jax.Array):
    """`op(unembedding, impl, mtp_hidden, *rows)` with the `auto` implementation; a Pallas kernel, which XLA cannot
    partition, runs on each device's rows."""
    unembedding = model.unembedding().astype(mtp_hidden.dtype)
    impl = resolve_impl("auto")
    run = lambda *args: op(unembedding, impl, *args)
    return run(mtp_hidden, *rows) if impl == "chunked" else map_rows(run, mtp_hidden, *rows)


def _at(log_probs: jax.Array, tokens: jax.Array) -> jax.Array:
    return jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]


def speculative_generate(model: Qwen3, state: DecodeState, sampling: SamplingParams, speculation: Speculation, *, steps: int,
                         end_after: jax.Array, kv_len: int, max_len: int, stops: jax.Array) -> tuple[DecodeState, ResultTokens]:
    """Up to `steps` speculative forwards (`speculative_step`, `run_forwards`) on every slot: the new state and the engine's
    `ResultTokens` with `2 * steps` token columns per slot, (x, kept draft) per forward, and each forward's log q(d) - log p(d)."""
    step = lambda state: speculative_step(model, state, sampling, speculation, kv_len=kv_len, max_len=max_len, stops=stops)
    state, (tokens, valid, log_probs, kl), ran = run_forwards(step, state, steps, end_after)
    pairs = lambda x: jnp.moveaxis(x, 0, 1).reshape(x.shape[1], -1)  # [steps, slots, 2] -> [slots, 2 * steps]
    k = 2 * steps
    data = jnp.concatenate([pairs(tokens), pairs(valid).astype(jnp.int32), state.generated[:, None]], axis=1)
    return state, ResultTokens(data, pairs(log_probs), (0, k), (k, 2 * k), (2 * k, 2 * k + 1), drafts=True, draft_kl=kl.T,
                               forwards=jnp.full(state.done.shape, ran))


def speculative_step(model: Qwen3, state: DecodeState, sampling: SamplingParams, speculation: Speculation, *, kv_len: int,
                     max_len: int, stops: jax.Array) -> tuple[DecodeState, tuple[jax.Array, jax.Array, jax.Array, jax.Array]]:
    """One target forward on every slot of `state` (an engine `DecodeState` with a draft context): returns the new
    state and, per slot, (tokens [B, 2], valid [B, 2], behaviour log-probs [B, 2], log q(d) - log p(d) [B], 0 if not live):
    `x`, then the kept draft. The token after those is drawn here too, by one draw per row (from p after the kept
    draft, or the replacement's distribution after x), and is the next forward's `x`."""
    context: DraftContext = state.draft
    key = jax.random.fold_in(state.key, state.step)
    sample_key, uniform_key, seed_key = jax.random.split(key, 3)
    # All of this forward's uniforms in one call: the verify's one, the next token's two.
    verify_uniform, next_outer, next_inner = jax.random.uniform(uniform_key, (3, state.index.shape[0]))
    live = ~state.done & (state.index < max_len)
    # Only rows fresh from insert, recompute or extend hold no drawn token: most forwards skip this draw.
    sampled, sampled_log_prob = jax.lax.cond(jnp.any(live & ~context.has_pending), lambda: sample_tokens(sample_key, state.logits, sampling),
                                             lambda: (context.pending, context.pending_log_prob))
    x = jnp.where(context.has_pending, context.pending, sampled)
    x_log_prob = jnp.where(context.has_pending, context.pending_log_prob, sampled_log_prob)
    column = jnp.minimum(state.index, max_len - 1)

    # The MTP layer's two latest columns: (hidden before the last token, last token), (hidden before x, x); the draft
    # is made from the second, the first only (re)writes its keys and values.
    mtp_hidden, cache = model.mtp_last_hidden(context.hidden, jnp.stack([context.token, x], axis=1), start=state.start,
                                              cache=state.cache, cache_index=column - 2, kv_len=kv_len)
    draft_seeds, residual_seeds = jax.random.bits(seed_key, (2, *x.shape), jnp.uint32).astype(jnp.int32)
    draft, draft_q = kernel_draft(model, mtp_hidden, draft_seeds, sampling.temperature)

    hidden, cache = model.hidden_states(jnp.stack([x, draft], axis=1), start=state.start, cache=cache, cache_index=column, kv_len=kv_len)
    logits = model.logits(hidden)  # [B, 2, V]: after x, after the draft
    target_log_probs = scaled_log_probs(logits[:, 0], sampling.temperature)
    after_draft_log_probs = scaled_log_probs(logits[:, 1], sampling.temperature)
    if speculation.mode == "lossless":
        kept = lossless_keep(verify_uniform, target_log_probs, draft, draft_q)
        # Forwards whose live drafts are all kept (most, with few slots and a good head) skip the residual's two passes.
        replacement = jax.lax.cond(jnp.any(live & ~kept),
                                   lambda: kernel_residual(model, mtp_hidden, target_log_probs, residual_seeds, sampling.temperature),
                                   lambda: jnp.zeros_like(draft))
        after = jnp.where(kept, draw_with_uniforms(next_outer, next_inner, after_draft_log_probs), replacement)
        draft_log_prob = _at(target_log_probs, draft)
    else:  # PIPO: no verification; a discarded draft is replaced by a draw of p
        kept = model.mtp.confidence(context.hidden[:, 1], mtp_hidden) >= speculation.threshold
        after = draw_with_uniforms(next_outer, next_inner, jnp.where(kept[:, None], after_draft_log_probs, target_log_probs))
        draft_log_prob = draft_q
    # A replacement is recorded with log p: it is distributed as p (lossless), or drawn from p (confidence).
    after_log_prob = jnp.where(kept, _at(after_draft_log_probs, after), _at(target_log_probs, after))

    x_stops = jnp.isin(x, stops)
    kept = kept & live & ~x_stops & (state.index + 1 < max_len)  # rows this turns off end here: `after` is never emitted
    done = state.done | ~live | x_stops | jnp.where(kept, jnp.isin(draft, stops) | (state.index + 2 >= max_len), state.index + 1 >= max_len)
    pick = lambda if_kept, otherwise: jnp.where(kept.reshape(-1, *([1] * (if_kept.ndim - 1))), if_kept, otherwise)
    new_context = DraftContext(
        hidden=pick(hidden, jnp.stack([context.hidden[:, 1], hidden[:, 0]], axis=1)),
        token=pick(draft, x),
        pending=after,
        pending_log_prob=after_log_prob,
        has_pending=jnp.ones_like(kept),
    )
    state = dataclasses.replace(state, cache=cache, index=state.index + 1 + kept, logits=pick(logits[:, 1], logits[:, 0]),
                                generated=state.generated + live + kept, done=done, step=state.step + 1, draft=new_context)
    outputs = jnp.stack([x, draft], axis=1), jnp.stack([live, kept], axis=1), jnp.stack([x_log_prob, draft_log_prob], axis=1)
    return state, (*outputs, jnp.where(live, draft_q - _at(target_log_probs, draft), 0.0))
