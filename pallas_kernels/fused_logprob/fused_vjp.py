"""The custom-VJP wiring the fused implementations share (chunked, Pallas TPU and GPU).

An implementation provides two functions, both taking a hashable ``settings``
value (temperature, block sizes, interpret flag) last:

* ``forward(h, w, targets, settings) -> (logp, entropy, lse)``, each
  float32 ``[N, 1]``;
* ``backward(h, w, targets, lse, entropy, g_logp, g_entropy, settings)
  -> (dh, dw)`` in the dtypes of ``h`` and ``w``, the cotangents ``[N]``.

``fused_op`` turns them into ``op(h, w, targets, settings) -> (logp [N],
entropy [N])`` whose backward reuses the forward's ``lse`` and ``entropy``
instead of storing logits.
"""

import functools
from collections.abc import Callable, Hashable

import jax


def fused_op(forward: Callable, backward: Callable) -> Callable:
    """The differentiable op built from an implementation's forward and backward."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
    def op(h: jax.Array, w: jax.Array, targets: jax.Array, settings: Hashable) -> tuple[jax.Array, jax.Array]:
        logp, entropy, _ = forward(h, w, targets, settings)
        return logp[:, 0], entropy[:, 0]

    def vjp_forward(h, w, targets, settings):
        logp, entropy, lse = forward(h, w, targets, settings)
        return (logp[:, 0], entropy[:, 0]), (h, w, targets, lse, entropy)

    def vjp_backward(settings, residuals, cotangents):
        dh, dw = backward(*residuals, *cotangents, settings)
        return dh, dw, None

    op.defvjp(vjp_forward, vjp_backward)
    return op
