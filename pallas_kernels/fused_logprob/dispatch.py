"""Public op: input validation and the choice of implementation."""

import math

import jax
import jax.numpy as jnp

from pallas_kernels.fused_logprob import chunked, pallas
from pallas_kernels.fused_logprob.reference import reference_token_logprobs_and_entropy

IMPLS = ("auto", "reference", "chunked", "pallas", "pallas_interpret")

# Mosaic TPU tiles: second-minor block dims are multiples of 8, minor of 128.
_TPU_SUBLANES, _TPU_LANES = 8, 128


def resolve_impl(impl: str = "auto", backend: str | None = None) -> str:
    """The implementation ``impl`` runs as on ``backend`` (default: JAX's default).

    ``"auto"`` picks the compiled Pallas kernels on TPU and the chunked XLA
    scan elsewhere. On GPU the chunked scan is the fused path: its per-chunk
    matmuls use XLA's GPU GEMMs, while these kernels carry a reduction across
    grid steps, which GPU Pallas backends (Triton, Mosaic GPU) run in parallel.
    Explicit names resolve to themselves; ``"pallas"`` is refused off TPU.
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; valid names: {', '.join(IMPLS)}")
    backend = jax.default_backend() if backend is None else backend
    if impl == "auto":
        return "pallas" if backend == "tpu" else "chunked"
    if impl == "pallas" and backend != "tpu":
        raise ValueError(
            f"impl='pallas' compiles Mosaic TPU kernels and needs backend 'tpu', got {backend!r}; "
            "use 'pallas_interpret' to run the same kernels in the interpreter, or 'chunked'"
        )
    return impl


def _check_inputs(h, w, targets, temperature) -> None:
    if h.ndim != 2 or w.ndim != 2:
        raise ValueError(f"h must be [N, D] and w [D, V], got shapes {h.shape} and {w.shape}")
    if h.shape[1] != w.shape[0]:
        raise ValueError(f"hidden sizes disagree: h is {h.shape} but w is {w.shape}")
    if 0 in h.shape or 0 in w.shape:
        raise ValueError(f"h and w must be non-empty, got shapes {h.shape} and {w.shape}")
    if targets.shape != (h.shape[0],):
        raise ValueError(f"targets must be [N] = [{h.shape[0]}], got shape {targets.shape}")
    if not (jnp.issubdtype(h.dtype, jnp.floating) and h.dtype == w.dtype):
        raise TypeError(f"h and w must share one floating dtype, got {h.dtype} and {w.dtype}")
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise TypeError(f"targets must be an integer array of token ids, got dtype {targets.dtype}")
    if isinstance(temperature, jax.core.Tracer):
        raise TypeError(
            "temperature must be a static Python number (it is not differentiated), got a traced value"
        )
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")


def _pallas_blocks(impl, rows, vocab, block_n, block_v) -> tuple[int, int]:
    """Default and clamp block sizes; compiled kernels need TPU-tile multiples."""
    block_n = min(block_n or pallas.DEFAULT_BLOCK_N, -(-rows // _TPU_SUBLANES) * _TPU_SUBLANES)
    block_v = min(block_v or pallas.DEFAULT_BLOCK_V, -(-vocab // _TPU_LANES) * _TPU_LANES)
    if impl == "pallas" and (block_n % _TPU_SUBLANES or block_v % _TPU_LANES):
        raise ValueError(
            f"compiled Pallas needs block_n % {_TPU_SUBLANES} == 0 and block_v % {_TPU_LANES} == 0, "
            f"got block_n={block_n}, block_v={block_v}"
        )
    return block_n, block_v


def token_logprobs_and_entropy(
    h: jax.Array,
    w: jax.Array,
    targets: jax.Array,
    temperature: float = 1.0,
    *,
    impl: str = "auto",
    block_n: int | None = None,
    block_v: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Per-token log-prob of the target and entropy, without ``[N, V]`` logits.

    With ``z = (h @ w) / temperature`` (float32 accumulation) and
    ``p = softmax(z)``, per row ``n``:

        logp_n = z_{n, y_n} - logsumexp(z_n)
        H_n    = logsumexp(z_n) - sum_k p_nk z_nk

    Args:
      h: ``[N, D]`` hidden states.
      w: ``[D, V]`` unembedding, same floating dtype as ``h``.
      targets: ``[N]`` integer token ids in ``[0, V)``; other ids give
        unspecified ``logp`` (values are not checked on device).
      temperature: static positive number; not differentiated.
      impl: one of ``IMPLS``; see ``resolve_impl``.
      block_n: rows per Pallas block (Pallas implementations only).
      block_v: vocabulary columns per chunk (chunked) or block (Pallas);
        ``None`` takes the implementation's tuned default.

    Returns:
      ``(logp, entropy)``, float32 ``[N]`` each. Both are differentiable with
      respect to ``h`` and ``w``; the fused implementations' custom VJPs
      recompute logits block by block instead of storing them.
    """
    name = resolve_impl(impl)
    h, w, targets = jnp.asarray(h), jnp.asarray(w), jnp.asarray(targets)
    _check_inputs(h, w, targets, temperature)
    targets = targets.astype(jnp.int32)
    temperature = float(temperature)
    for label, size in (("block_n", block_n), ("block_v", block_v)):
        if size is not None and size <= 0:
            raise ValueError(f"{label} must be a positive integer, got {size}")
    if name == "reference":
        return reference_token_logprobs_and_entropy(h, w, targets, temperature)
    if name == "chunked":
        return chunked.chunked_token_logprobs_and_entropy(
            h, w, targets, temperature, block_v or chunked.DEFAULT_BLOCK_V
        )
    block_n, block_v = _pallas_blocks(name, h.shape[0], w.shape[1], block_n, block_v)
    return pallas.pallas_token_logprobs_and_entropy(
        h, w, targets, temperature, block_n, block_v, name == "pallas_interpret"
    )
