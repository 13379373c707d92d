"""Public op: input validation and the choice of implementation (the fused log-prob's names, rules and block sizes)."""

import math

import jax
import jax.numpy as jnp

from pallas_kernels.fused_logprob.dispatch import IMPLS, _gpu_settings, _tpu_settings, resolve_impl
from pallas_kernels.mtp_draft import chunked
from pallas_kernels.mtp_draft.pallas import pallas_draft_tokens, pallas_residual_tokens
from pallas_kernels.mtp_draft.pallas_gpu import pallas_gpu_draft_tokens, pallas_gpu_residual_tokens
from pallas_kernels.mtp_draft.reference import reference_draft_tokens, reference_residual_tokens

__all__ = ["IMPLS", "draft_tokens", "residual_tokens", "resolve_impl"]


def _check_inputs(h, w, seeds, temperature) -> None:
    if h.ndim != 2 or w.ndim != 2 or h.shape[1] != w.shape[0] or 0 in h.shape or 0 in w.shape:
        raise ValueError(f"h must be [N, D] and w [D, V] (non-empty, the same D), got shapes {h.shape} and {w.shape}")
    if seeds.shape != (h.shape[0],) or not jnp.issubdtype(seeds.dtype, jnp.integer):
        raise ValueError(f"seeds must be integers [N] = [{h.shape[0]}], one per row, got {seeds.dtype} {seeds.shape}")
    if not (jnp.issubdtype(h.dtype, jnp.floating) and h.dtype == w.dtype):
        raise TypeError(f"h and w must share one floating dtype, got {h.dtype} and {w.dtype}")
    if isinstance(temperature, jax.core.Tracer) or not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a static Python number, finite and > 0, got {temperature}")


def _check_blocks(block_n, block_v) -> None:
    for label, size in (("block_n", block_n), ("block_v", block_v)):
        if size is not None and size <= 0:
            raise ValueError(f"{label} must be a positive integer, got {size}")


def _prepared(impl, backend, h, w, seeds, temperature, block_n, block_v):
    """``(implementation name, h, w, int32 seeds, float temperature)``, the inputs checked."""
    name = resolve_impl(impl, backend)
    h, w, seeds = jnp.asarray(h), jnp.asarray(w), jnp.asarray(seeds)
    _check_inputs(h, w, seeds, temperature)
    _check_blocks(block_n, block_v)
    return name, h, w, seeds.astype(jnp.int32), float(temperature)


def draft_tokens(h: jax.Array, w: jax.Array, seeds: jax.Array, temperature: float = 1.0, *, impl: str = "auto",
                 block_n: int | None = None, block_v: int | None = None, backend: str | None = None) -> tuple[jax.Array, jax.Array]:
    """One token per row sampled from ``softmax(h @ w / temperature)``, and its log-prob, without ``[N, V]`` logits.

    Gumbel-max over vocabulary blocks with counter-based noise (``blockmath``): the token of row ``n`` is a
    function of ``seeds[n]`` and the logits only, the same in every implementation (``reference`` materializes
    the logits to check the others). The log-prob comes from an online log-sum-exp over the same blocks.

    Args:
      h: ``[N, D]`` hidden states (e.g. the MTP head's, one per decode slot).
      w: ``[D, V]`` unembedding, same floating dtype as ``h``.
      seeds: ``[N]`` integers (any 32 bits), one per row; draw them from a ``jax.random`` key per step.
      temperature: static positive number.
      impl, block_n, block_v, backend: as ``pallas_kernels.token_logprobs_and_entropy`` (``auto``: the Mosaic TPU
        kernel on TPU, the Triton kernel on GPU, the chunked XLA scan elsewhere).

    Returns:
      ``(tokens, logp)``: int32 and float32 ``[N]``. Not differentiable (a sample).
    """
    name, h, w, seeds, temperature = _prepared(impl, backend, h, w, seeds, temperature, block_n, block_v)
    if name == "reference":
        return reference_draft_tokens(h, w, seeds, temperature)
    if name == "chunked":
        return chunked.chunked_draft_tokens(h, w, seeds, temperature, block_v or chunked.DEFAULT_BLOCK_V)
    (rows, dim), vocab = h.shape, w.shape[1]
    if name in ("pallas", "pallas_interpret"):
        return pallas_draft_tokens(h, w, seeds, _tpu_settings(name, rows, vocab, temperature, block_n, block_v))
    return pallas_gpu_draft_tokens(h, w, seeds, _gpu_settings(name, dim, rows, vocab, temperature, block_n, block_v))


def residual_tokens(target: jax.Array, h: jax.Array, w: jax.Array, seeds: jax.Array, temperature: float = 1.0, *, impl: str = "auto",
                    block_n: int | None = None, block_v: int | None = None, backend: str | None = None) -> jax.Array:
    """One token per row sampled from the residual ``max(0, p - q) / sum(max(0, p - q))`` of speculative decoding,
    with ``p = exp(target)`` and the draft distribution ``q = softmax(h @ w / temperature)`` recomputed over
    vocabulary blocks (two passes: q's log-sum-exp, then a Gumbel-max with ``draft_tokens``' noise), never ``[N, V]``.
    Where the residual is empty (p == q) the token is drawn from p. Use other seeds than the draft's: the same
    seeds would correlate the two draws.

    Args:
      target: ``[N, V]`` float32 normalised log-probs of the target distribution p.
      h, w, seeds, temperature, impl, block_n, block_v, backend: as ``draft_tokens``.

    Returns:
      int32 ``[N]``.
    """
    name, h, w, seeds, temperature = _prepared(impl, backend, h, w, seeds, temperature, block_n, block_v)
    target = jnp.asarray(target, jnp.float32)
    if target.shape != (h.shape[0], w.shape[1]):
        raise ValueError(f"target must be log-probs [N, V] = [{h.shape[0]}, {w.shape[1]}], got {target.shape}")
    if name == "reference":
        return reference_residual_tokens(target, h, w, seeds, temperature)
    if name == "chunked":
        return chunked.chunked_residual_tokens(target, h, w, seeds, temperature, block_v or chunked.DEFAULT_BLOCK_V)
    (rows, dim), vocab = h.shape, w.shape[1]
    if name in ("pallas", "pallas_interpret"):
        return pallas_residual_tokens(target, h, w, seeds, _tpu_settings(name, rows, vocab, temperature, block_n, block_v))
    return pallas_gpu_residual_tokens(target, h, w, seeds, _gpu_settings(name, dim, rows, vocab, temperature, block_n, block_v))
