"""Token choice from logits (greedy, temperature, top-k, top-p) and the exact log-prob of each choice.

A token is drawn from the *truncated* distribution mu: the tempered softmax restricted to
the top-k tokens (`lax.top_k`, exactly k), then to the smallest most-likely set whose mass
reaches `top_p` (computed on the top-k-renormalised probabilities, as Hugging Face and vLLM
do), renormalised. The behaviour log-prob recorded for it is log mu(token), the probability
it was actually drawn with.

The learner recomputes the *untruncated* tempered policy pi (`rlx.learner.logprobs`: its
fused kernel does not truncate). With `top_p = 1, top_k = 0` the two are the same
distribution. With truncation they differ by design: on a kept token
log mu = log pi - log pi(kept set), so mu >= pi. The off-policy corrections (TIS, IcePop,
decoupled PPO) weight tokens by pi / mu, which is the importance ratio of a sample drawn from
mu, so they stay correct; `training/rollout_probs_diff_*` then also shows the truncated mass.

Sampling parameters are static (one compiled variant per setting): `top_p = 1, top_k = 0`
sorts nothing, top-k takes `lax.top_k` of k, and top-p alone sorts the vocabulary once.
`temperature: 0` is greedy; greedy tokens are scored under temperature 1.

The draw is an inverse-CDF one in two levels (a block of DRAW_BLOCK tokens by the blocks'
masses, then a token within it): two uniforms per row, where `jax.random.categorical`'s
Gumbel trick draws one per vocabulary entry (40x slower on CPU at a 32k vocabulary).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

DRAW_BLOCK = 256  # tokens per block of the two-level draw (larger blocks are slower to scan on CPU)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """`temperature: 0` is greedy; `top_k: 0` and `top_p: 1` keep the whole vocabulary."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 keeps every token), got {self.top_k}")

    @property
    def truncates(self) -> bool:
        return self.temperature > 0 and (self.top_k > 0 or self.top_p < 1.0)


def scaled_log_probs(logits: jax.Array, temperature: float) -> jax.Array:
    """log softmax(logits / T), the untruncated policy the learner recomputes; T = 0 scores under T = 1."""
    return jax.nn.log_softmax(logits.astype(jnp.float32) / (temperature if temperature > 0 else 1.0), axis=-1)


def _candidates(log_probs: jax.Array, sampling: SamplingParams) -> tuple[jax.Array, jax.Array]:
    """(log mu of the candidates [..., C], their token ids [..., C]), most likely first; dropped ones are -inf."""
    if sampling.top_k > 0:
        values, ids = jax.lax.top_k(log_probs, min(sampling.top_k, log_probs.shape[-1]))
    else:  # top-p alone: one sort of the vocabulary
        iota = jax.lax.broadcasted_iota(jnp.int32, log_probs.shape, log_probs.ndim - 1)
        negated, ids = jax.lax.sort((-log_probs, iota), dimension=log_probs.ndim - 1, num_keys=1)
        values = -negated
    values = jax.nn.log_softmax(values, axis=-1)
    if sampling.top_p < 1.0:
        probs = jnp.exp(values)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        values = jax.nn.log_softmax(jnp.where(mass_before < sampling.top_p, values, -jnp.inf), axis=-1)  # the first always stays
    return values, ids


def sample_tokens(key: jax.Array, logits: jax.Array, sampling: SamplingParams) -> tuple[jax.Array, jax.Array]:
    """Draws one token per row of `logits [B, V]`: (tokens [B] int32, behaviour log-probs [B], log mu)."""
    log_probs = scaled_log_probs(logits, sampling.temperature)
    if sampling.temperature == 0:
        tokens = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
        return tokens, jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]
    if not sampling.truncates:
        tokens = _draw(key, log_probs)
        return tokens, jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]
    values, ids = _candidates(log_probs, sampling)
    choice = _draw(key, values)[:, None]
    return jnp.take_along_axis(ids, choice, axis=-1)[:, 0].astype(jnp.int32), jnp.take_along_axis(values, choice, axis=-1)[:, 0]


def _draw(key: jax.Array, log_probs: jax.Array) -> jax.Array:
    """An index per row of normalised `log_probs [B, C]` drawn with probability exp(log_probs) (-inf: never)."""
    outer, inner = jax.random.split(key)
    rows = log_probs.shape[0]
    return draw_with_uniforms(jax.random.uniform(outer, (rows,)), jax.random.uniform(inner, (rows,)), log_probs)


def draw_with_uniforms(outer: jax.Array, inner: jax.Array, log_probs: jax.Array) -> jax.Array:
    """`_draw` with its two uniforms per row given (`outer`, `inner` [B] in [0, 1)): a caller that draws several
    times per step makes all its uniforms in one call of the random generator (each call is many small ops on CPU)."""
    rows, size = log_probs.shape
    width = min(DRAW_BLOCK, size)
    padded = jnp.pad(log_probs, ((0, 0), (0, -size % width)), constant_values=-jnp.inf)
    probs = jnp.exp(padded).reshape(rows, -1, width)
    block = _inverse_cdf(outer, jnp.sum(probs, axis=-1))
    within = _inverse_cdf(inner, jnp.take_along_axis(probs, block[:, None, None], axis=1)[:, 0])
    return block * width + within


def _inverse_cdf(uniform: jax.Array, weights: jax.Array) -> jax.Array:
    """Index i of each row of `weights [B, n]` (>= 0, some > 0) with probability weights[i] / sum, for `uniform [B]`."""
    cumulative = jax.lax.associative_scan(jnp.add, weights, axis=-1)
    # A threshold in (0, total]: the first index whose cumulative mass reaches it has positive weight.
    threshold = (1.0 - uniform) * cumulative[:, -1]
    return jnp.minimum(jnp.sum(cumulative < threshold[:, None], axis=-1), weights.shape[1] - 1).astype(jnp.int32)


def token_log_probs(logits: jax.Array, tokens: jax.Array, sampling: SamplingParams) -> jax.Array:
    """log mu(tokens) under `sampling` for `logits [..., V]` and `tokens [...]` (-inf for a token mu excludes)."""
    log_probs = scaled_log_probs(logits, sampling.temperature)
    if not sampling.truncates:
        return jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
    values, ids = _candidates(log_probs, sampling)
    return jnp.max(jnp.where(ids == tokens[..., None], values, -jnp.inf), axis=-1)
