"""The compiled drafting kernels lower for devices this host lacks (see test_fused_logprob_lowering.py: Pallas
lowers to Triton IR / Mosaic in Python, so unsupported operations and tiles fail here already)."""

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels import draft_tokens
from pallas_kernels.mtp_draft import residual_tokens, resolve_impl
from tests.pallas_kernels.test_fused_logprob_lowering import KERNEL_CALL, _lowered_text

# Qwen3-4B's hidden size, a vocabulary and a row count that divide no block size, bfloat16 as served.
SHAPES = (
    jax.ShapeDtypeStruct((200, 2560), jnp.bfloat16),
    jax.ShapeDtypeStruct((2560, 1000), jnp.bfloat16),
    jax.ShapeDtypeStruct((200,), jnp.int32),
)


@pytest.mark.parametrize("platform, kernel_set", [("cuda", "pallas_gpu"), ("tpu", "pallas")])
def test_auto_lowers_the_platforms_drafting_kernel(platform, kernel_set):
    assert resolve_impl("auto", platform) == kernel_set
    text = _lowered_text(lambda h, w, seeds: draft_tokens(h, w, seeds, 0.7, backend=platform), platform, SHAPES)
    assert text.count(KERNEL_CALL[platform]) == 1


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_auto_lowers_the_platforms_residual_kernel(platform):
    target = jax.ShapeDtypeStruct((200, 1000), jnp.float32)
    text = _lowered_text(lambda t, h, w, seeds: residual_tokens(t, h, w, seeds, 0.7, backend=platform), platform, (target, *SHAPES))
    assert text.count(KERNEL_CALL[platform]) == 1
