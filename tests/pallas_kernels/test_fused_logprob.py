"""Fused log-prob/entropy: chunked and Pallas (TPU and GPU kernels, interpreted) against the reference.

Shapes are chosen so that N and V are not multiples of the block sizes: the
last row block and the last vocabulary block/chunk are partial; for the GPU
kernels, which also block the hidden axis, so is the last hidden block where
D is not a power of two.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl

from pallas_kernels import token_logprobs_and_entropy
from pallas_kernels.fused_logprob import IMPLS, reference_token_logprobs_and_entropy, resolve_impl

# Small blocks so that a few dozen rows and a few hundred columns already span
# several blocks, with a partial one at each edge.
BLOCKS = {
    "chunked": dict(block_v=128),
    "pallas_interpret": dict(block_n=8, block_v=128),
    "pallas_gpu_interpret": dict(block_n=16, block_v=64),
}
FUSED = tuple(BLOCKS)
INTERPRETED = ("pallas_interpret", "pallas_gpu_interpret")

# (N, D, V, temperature): V % 64 != 0 and N % 8 != 0 throughout. For the GPU
# kernels (hidden blocks of min(64, D rounded up to a power of two)), D = 96
# spans a full and a partial hidden block and D = 24 one partial block; the
# last case has V smaller than one 128-wide block.
CASES = [(13, 96, 300, 1.0), (20, 16, 777, 0.6), (5, 24, 90, 1.7)]


def _inputs(n, d, v, dtype=jnp.float32, seed=0):
    """Fresh random ``h, w, targets`` and cotangents for ``(logp, entropy)``."""
    rng = np.random.default_rng(seed)
    # Scales give logits of order 1-3: peaked rows and flat rows both occur.
    h = jnp.asarray(rng.standard_normal((n, d), np.float32), dtype)
    w = jnp.asarray(rng.standard_normal((d, v), np.float32) * (2.0 / np.sqrt(d)), dtype)
    targets = jnp.asarray(rng.integers(0, v, n), jnp.int32)
    cotangents = tuple(jnp.asarray(rng.standard_normal(n, np.float32)) for _ in range(2))
    return h, w, targets, cotangents


def _value_and_grads(fn, h, w, targets, temperature, cotangents):
    """Outputs and the gradients of ``<g_logp, logp> + <g_entropy, entropy>``."""
    g_logp, g_entropy = cotangents

    def loss(h, w):
        logp, entropy = fn(h, w, targets, temperature)
        return jnp.sum(g_logp * logp) + jnp.sum(g_entropy * entropy), (logp, entropy)

    (_, outputs), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(h, w)
    return outputs, grads


def _fused(impl):
    return lambda h, w, y, t: token_logprobs_and_entropy(h, w, y, t, impl=impl, **BLOCKS[impl])


def _assert_close(actual, expected, rtol, atol_fraction):
    """Elementwise closeness with the absolute slack scaled to ``max|expected|``."""
    expected = np.asarray(expected, np.float32)
    atol = atol_fraction * float(np.max(np.abs(expected)))
    np.testing.assert_allclose(np.asarray(actual, np.float32), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("n, d, v, temperature", CASES)
def test_values_and_gradients_match_reference(n, d, v, temperature):
    h, w, targets, cot = _inputs(n, d, v)
    expected = _value_and_grads(reference_token_logprobs_and_entropy, h, w, targets, temperature, cot)
    for impl in FUSED:
        (logp, ent), (dh, dw) = actual = _value_and_grads(_fused(impl), h, w, targets, temperature, cot)
        assert logp.dtype == ent.dtype == jnp.float32 and logp.shape == ent.shape == (n,)
        assert dh.dtype == h.dtype and dw.dtype == w.dtype
        for got, want in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
            _assert_close(got, want, rtol=1e-5, atol_fraction=1e-5)


def test_bfloat16_inputs_match_float32_reference():
    n, d, v, temperature = 20, 64, 500, 0.8
    h, w, targets, cot = _inputs(n, d, v, dtype=jnp.bfloat16, seed=1)
    h32, w32 = h.astype(jnp.float32), w.astype(jnp.float32)
    (ref_logp, ref_ent), (ref_dh, ref_dw) = _value_and_grads(
        reference_token_logprobs_and_entropy, h32, w32, targets, temperature, cot
    )
    for impl in FUSED:
        (logp, ent), (dh, dw) = _value_and_grads(_fused(impl), h, w, targets, temperature, cot)
        # Products of bfloat16 inputs are exact in float32, so the outputs keep
        # float32 accuracy; the gradients are rounded to bfloat16 (8 bits).
        _assert_close(logp, ref_logp, rtol=1e-4, atol_fraction=1e-4)
        _assert_close(ent, ref_ent, rtol=1e-4, atol_fraction=1e-4)
        assert dh.dtype == dw.dtype == jnp.bfloat16
        _assert_close(dh, ref_dh, rtol=2e-2, atol_fraction=2e-2)
        _assert_close(dw, ref_dw, rtol=2e-2, atol_fraction=2e-2)


@pytest.mark.parametrize("impl", FUSED)
def test_default_blocks_clamp_to_small_inputs(impl):
    """Default blocks (wider than V and N here) give single partial blocks."""
    h, w, targets, _ = _inputs(11, 16, 200, seed=3)
    for got, want in zip(
        token_logprobs_and_entropy(h, w, targets, impl=impl),
        reference_token_logprobs_and_entropy(h, w, targets),
    ):
        _assert_close(got, want, rtol=1e-5, atol_fraction=1e-5)


def test_interpreter_poisons_unwritten_outputs_and_padding():
    """Premise of the next test: interpret mode starts every output as NaN
    and pads partial edge blocks of inputs with NaN."""

    def kernel(x_ref, seen_ref, untouched_ref):
        seen_ref[...] = x_ref[...]

    x = jnp.ones((5, 3), jnp.float32)
    seen, untouched = pl.pallas_call(
        kernel,
        grid=(1,),
        in_specs=[pl.BlockSpec((8, 3), lambda i: (0, 0))],
        out_specs=[pl.BlockSpec((8, 3), lambda i: (0, 0))] * 2,
        out_shape=[jax.ShapeDtypeStruct((8, 3), jnp.float32)] * 2,
        interpret=True,
    )(x)
    assert np.isnan(np.asarray(untouched)).all()
    assert np.isnan(np.asarray(seen)[5:]).all() and (np.asarray(seen)[:5] == 1).all()


@pytest.mark.parametrize("impl", INTERPRETED)
def test_pallas_writes_every_element_of_partial_blocks(impl):
    """Rows past N and columns past V read as NaN, outputs start as NaN: any
    unmasked padding or unwritten element shows up as a NaN here."""
    n, d, v = 11, 16, 200  # one full and one 3-row block (TPU); a 72- or 8-column last block
    h, w, targets, cot = _inputs(n, d, v, seed=2)
    (logp, ent), (dh, dw) = _value_and_grads(_fused(impl), h, w, targets, 1.3, cot)
    for array in (logp, ent, dh, dw):
        assert np.isfinite(np.asarray(array)).all()


def test_chunked_never_holds_full_logits():
    """Compiled scratch memory of a forward+backward stays far below one
    float32 [N, V] array, which the reference does need."""
    n, d, v = 64, 32, 20_000
    shapes = [
        jax.ShapeDtypeStruct((n, d), jnp.float32),
        jax.ShapeDtypeStruct((d, v), jnp.float32),
        jax.ShapeDtypeStruct((n,), jnp.int32),
    ]

    def temp_bytes(impl):
        def loss(h, w, targets):
            logp, ent = token_logprobs_and_entropy(h, w, targets, impl=impl, block_v=512)
            return jnp.sum(logp) + jnp.sum(ent)

        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*shapes).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    logits_bytes = n * v * 4
    assert temp_bytes("reference") >= logits_bytes
    assert temp_bytes("chunked") < logits_bytes / 8


def test_resolve_impl():
    assert resolve_impl("auto", "cpu") == "chunked"
    assert resolve_impl("auto", "gpu") == resolve_impl("auto", "cuda") == "pallas_gpu"
    assert resolve_impl("auto", "tpu") == "pallas"
    assert resolve_impl("auto") == resolve_impl("auto", jax.default_backend())
    for name in ("reference", "chunked", "pallas_interpret", "pallas_gpu_interpret"):
        assert resolve_impl(name, "cpu") == name
    assert resolve_impl("pallas", "tpu") == "pallas"
    assert resolve_impl("pallas_gpu", "gpu") == "pallas_gpu"
    assert set(IMPLS) == {
        "auto", "reference", "chunked", "pallas", "pallas_interpret", "pallas_gpu", "pallas_gpu_interpret",
    }


def test_bad_impl_names_lists_valid_ones():
    with pytest.raises(ValueError, match="auto, reference, chunked, pallas, pallas_interpret, pallas_gpu"):
        resolve_impl("triton")
    with pytest.raises(ValueError, match="needs backend 'tpu'.*'pallas_interpret'"):
        resolve_impl("pallas", "cpu")
    with pytest.raises(ValueError, match="Triton GPU.*got 'tpu'.*'pallas_gpu_interpret'"):
        resolve_impl("pallas_gpu", "tpu")


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(impl="fast"), ValueError, "valid names"),
        (dict(h=jnp.zeros((4, 8, 2))), ValueError, r"h must be \[N, D\]"),
        (dict(w=jnp.zeros((9, 50))), ValueError, "hidden sizes disagree"),
        (dict(targets=jnp.zeros((5,), jnp.int32)), ValueError, r"targets must be \[N\] = \[4\]"),
        (dict(h=jnp.zeros((0, 8)), targets=jnp.zeros((0,), jnp.int32)), ValueError, "non-empty"),
        (dict(targets=jnp.zeros((4,), jnp.float32)), TypeError, "integer array"),
        (dict(w=jnp.zeros((8, 50), jnp.bfloat16)), TypeError, "share one floating dtype"),
        (dict(h=jnp.zeros((4, 8), jnp.int32), w=jnp.zeros((8, 50), jnp.int32)), TypeError, "floating dtype"),
        (dict(temperature=0.0), ValueError, "temperature must be finite and > 0"),
        (dict(temperature=float("inf")), ValueError, "temperature must be finite and > 0"),
        (dict(block_v=0), ValueError, "block_v must be a positive integer"),
        (dict(impl="pallas_gpu_interpret", block_v=96), ValueError, "block_v to be a power of two >= 16"),
        (dict(impl="pallas_gpu_interpret", block_n=8), ValueError, "block_n to be a power of two >= 16"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, error, message):
    args = dict(h=jnp.zeros((4, 8)), w=jnp.zeros((8, 50)), targets=jnp.zeros((4,), jnp.int32))
    args.update(change)
    with pytest.raises(error, match=message):
        token_logprobs_and_entropy(**args)


def test_traced_temperature_is_refused():
    h, w, targets, _ = _inputs(4, 8, 50)
    with pytest.raises(TypeError, match="static Python number"):
        jax.jit(lambda t: token_logprobs_and_entropy(h, w, targets, t))(1.0)
