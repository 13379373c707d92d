"""Public op: input validation and the choice of implementation."""

import math

import jax
import jax.numpy as jnp

from pallas_kernels.fused_logprob import chunked, pallas, pallas_gpu
from pallas_kernels.fused_logprob.reference import reference_token_logprobs_and_entropy

IMPLS = ("auto", "reference", "chunked", "pallas", "pallas_interpret", "pallas_gpu", "pallas_gpu_interpret")

# JAX backend names of GPUs (``jax.default_backend()`` says "gpu"; platform names "cuda"/"rocm").
GPU_BACKENDS = ("gpu", "cuda", "rocm")

# Mosaic TPU tiles: second-minor block dims are multiples of 8, minor of 128.
_TPU_SUBLANES, _TPU_LANES = 8, 128

# Compiled kernel sets: (compiler, backends they compile for).
_NEEDS_BACKEND = {"pallas": ("Mosaic TPU", ("tpu",)), "pallas_gpu": ("Triton GPU", GPU_BACKENDS)}


def resolve_impl(impl: str = "auto", backend: str | None = None) -> str:
    """The implementation ``impl`` runs as on ``backend`` (default: JAX's default).

    ``"auto"`` picks the compiled Pallas kernels for the backend: the Mosaic
    TPU kernels (``pallas``) on TPU, the Triton kernels (``pallas_gpu``) on
    GPU, and the chunked XLA scan on CPU, where Pallas only interprets.
    Explicit names resolve to themselves; the compiled kernels are refused off
    their backend (their ``*_interpret`` twins run anywhere).
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; valid names: {', '.join(IMPLS)}")
    backend = jax.default_backend() if backend is None else backend
    if impl == "auto":
        return "pallas" if backend == "tpu" else "pallas_gpu" if backend in GPU_BACKENDS else "chunked"
    if impl in _NEEDS_BACKEND and backend not in _NEEDS_BACKEND[impl][1]:
        compiler, backends = _NEEDS_BACKEND[impl]
        raise ValueError(
            f"impl={impl!r} compiles {compiler} kernels and needs backend {' or '.join(map(repr, backends))}, "
            f"got {backend!r}; use {impl + '_interpret'!r} to run the same kernels in the interpreter, "
            "or 'chunked'"
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


def _round_up(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def _tpu_settings(impl, rows, vocab, temperature, block_n, block_v) -> pallas.Settings:
    """Default and clamp block sizes; compiled kernels need TPU-tile multiples."""
    block_n = min(block_n or pallas.DEFAULT_BLOCK_N, _round_up(rows, _TPU_SUBLANES))
    block_v = min(block_v or pallas.DEFAULT_BLOCK_V, _round_up(vocab, _TPU_LANES))
    if impl == "pallas" and (block_n % _TPU_SUBLANES or block_v % _TPU_LANES):
        raise ValueError(
            f"compiled Pallas needs block_n % {_TPU_SUBLANES} == 0 and block_v % {_TPU_LANES} == 0, "
            f"got block_n={block_n}, block_v={block_v}"
        )
    return pallas.Settings(temperature, block_n, block_v, impl == "pallas_interpret")


def _gpu_block(label: str, requested: int | None, default: int, size: int) -> int:
    """The requested (else default) block, clamped to ``size`` rounded up to a power of two >= 16."""
    if requested is not None and (requested < pallas_gpu.MIN_BLOCK or requested & (requested - 1)):
        raise ValueError(
            f"the GPU Pallas kernels need {label} to be a power of two >= {pallas_gpu.MIN_BLOCK} (Triton tiles), "
            f"got {requested}"
        )
    fitted = max(pallas_gpu.MIN_BLOCK, 1 << (size - 1).bit_length())
    return min(requested or default, fitted)


def _gpu_settings(impl, dim, rows, vocab, temperature, block_n, block_v) -> pallas_gpu.Settings:
    return pallas_gpu.Settings(
        temperature,
        _gpu_block("block_n", block_n, pallas_gpu.DEFAULT_BLOCK_N, rows),
        _gpu_block("block_v", block_v, pallas_gpu.DEFAULT_BLOCK_V, vocab),
        _gpu_block("block_d", None, pallas_gpu.DEFAULT_BLOCK_D, dim),
        impl == "pallas_gpu_interpret",
    )


def token_logprobs_and_entropy(
    h: jax.Array,
    w: jax.Array,
    targets: jax.Array,
    temperature: float = 1.0,
    *,
    impl: str = "auto",
    block_n: int | None = None,
    block_v: int | None = None,
    backend: str | None = None,
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
        ``None`` takes the implementation's default. The GPU kernels
        (``pallas_gpu*``) need powers of two >= 16 (Triton tiles).
      backend: the backend ``impl`` is resolved for (default: JAX's default
        backend). Set it to lower for a device this host lacks, e.g. with
        ``jax.jit(f).trace(...).lower(lowering_platforms=("cuda",))``.

    Returns:
      ``(logp, entropy)``, float32 ``[N]`` each. Both are differentiable with
      respect to ``h`` and ``w``; the fused implementations' custom VJPs
      recompute logits block by block instead of storing them.
    """
    name = resolve_impl(impl, backend)
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
        settings = chunked.Settings(temperature, block_v or chunked.DEFAULT_BLOCK_V)
        return chunked.chunked_token_logprobs_and_entropy(h, w, targets, settings)
    (rows, dim), vocab = h.shape, w.shape[1]
    if name in ("pallas", "pallas_interpret"):
        settings = _tpu_settings(name, rows, vocab, temperature, block_n, block_v)
        return pallas.pallas_token_logprobs_and_entropy(h, w, targets, settings)
    settings = _gpu_settings(name, dim, rows, vocab, temperature, block_n, block_v)
    return pallas_gpu.pallas_gpu_token_logprobs_and_entropy(h, w, targets, settings)
