"""The compiled Pallas kernels lower for devices this host lacks.

Pallas lowers kernels in Python when a program is lowered (to Triton IR for
GPU, to Mosaic for TPU), so lowering for ``cuda`` or ``tpu`` on a CPU host
already rejects unsupported operations and non-power-of-two Triton tiles.
What needs the device is only the compilation after that (Triton to PTX,
Mosaic to TPU code).
"""

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels import token_logprobs_and_entropy
from pallas_kernels.fused_logprob import resolve_impl

# Kernel custom-call target per platform.
KERNEL_CALL = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}

# Qwen3-4B's hidden size (not a power of two), a vocabulary and a token count
# that divide no block size, bfloat16 as in training.
SHAPES = (
    jax.ShapeDtypeStruct((200, 2560), jnp.bfloat16),
    jax.ShapeDtypeStruct((2560, 1000), jnp.bfloat16),
    jax.ShapeDtypeStruct((200,), jnp.int32),
)


def _lowered_text(fn, platform: str, shapes: tuple = SHAPES) -> str:
    try:
        jax.jit(jnp.sin).trace(jnp.zeros(3)).lower(lowering_platforms=(platform,))
    except Exception as error:  # noqa: BLE001 - any failure here means: no lowering for this platform at all
        pytest.skip(f"this jaxlib cannot lower even jnp.sin for {platform!r}: {error}")
    return jax.jit(fn).trace(*shapes).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("platform, kernel_set", [("cuda", "pallas_gpu"), ("tpu", "pallas")])
def test_auto_lowers_the_platforms_kernels_forward_and_backward(platform, kernel_set):
    def forward(h, w, targets):
        return token_logprobs_and_entropy(h, w, targets, 0.7, backend=platform)

    def loss(h, w, targets):
        logp, entropy = forward(h, w, targets)
        return jnp.sum(logp) + 0.1 * jnp.sum(entropy)

    assert resolve_impl("auto", platform) == kernel_set
    forward_text = _lowered_text(forward, platform)
    backward_text = _lowered_text(jax.grad(loss, argnums=(0, 1)), platform)
    # forward: one kernel; gradient: the forward (for lse) plus the dh and dw kernels.
    assert forward_text.count(KERNEL_CALL[platform]) == 1
    assert backward_text.count(KERNEL_CALL[platform]) == 3
