"""The fused op on sharded inputs: each device runs the kernel on its rows under ``shard_map``.

XLA cannot partition a Pallas call (a custom call), so inside a sharded program it would gather
the rows onto every device. Under ``shard_map`` each device instead runs the kernel on its block
of rows (``h`` and ``targets`` split over ``row_axes``) with the whole unembedding, which FSDP
gathers as it would for a matmul.

With the unembedding's vocabulary split over ``vocab_axes`` (tensor parallelism), each device
sees ``V / n`` columns: it runs the kernel on its columns and the results are combined by a
cross-device log-sum-exp. From the local kernel's ``logp_i`` and ``H_i`` (over the local columns,
for a local target ``t`` chosen in range) and the local target logit ``z_t`` (one gathered column
per row):

    lse_i = z_t - logp_i                      local log-sum-exp
    lse   = log sum_i exp(lse_i)              global
    logp  = z_y - lse                         z_y from the device that owns column y
    H     = lse - sum_i exp(lse_i - lse) (lse_i - H_i)

since ``sum_{k in i} p_k z_k = exp(lse_i - lse) * E_{p^i}[z] = exp(lse_i - lse) (lse_i - H_i)``.
Every step is differentiable, so gradients flow through the local kernel's custom VJP.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from pallas_kernels.fused_logprob.dispatch import token_logprobs_and_entropy


def _vocab_parallel(h, w, targets, temperature, vocab_axes, kernel):
    width = w.shape[1]
    local = targets - jax.lax.axis_index(vocab_axes) * width
    owned = (local >= 0) & (local < width)
    column = jnp.clip(local, 0, width - 1)
    logp_local, entropy_local = kernel(h, w, column)
    target_logit = jnp.einsum("nd,dn->n", h, jnp.take(w, column, axis=1), preferred_element_type=jnp.float32) / temperature
    lse_local = target_logit - logp_local
    shift = jax.lax.pmax(jax.lax.stop_gradient(lse_local), vocab_axes)
    lse = shift + jnp.log(jax.lax.psum(jnp.exp(lse_local - shift), vocab_axes))
    logp = jax.lax.psum(jnp.where(owned, target_logit, 0.0), vocab_axes) - lse
    mean_logit = jax.lax.psum(jnp.exp(lse_local - lse) * (lse_local - entropy_local), vocab_axes)
    return logp, jnp.maximum(lse - mean_logit, 0.0)


def sharded_token_logprobs_and_entropy(
    h: jax.Array,
    w: jax.Array,
    targets: jax.Array,
    temperature: float = 1.0,
    *,
    mesh: Mesh | None = None,
    row_axes: Sequence[str] = (),
    vocab_axes: Sequence[str] = (),
    **options,
) -> tuple[jax.Array, jax.Array]:
    """``token_logprobs_and_entropy`` (same arguments; ``options`` are its keywords) with the rows of
    ``h`` and ``targets`` split over the mesh axes ``row_axes`` and the columns of ``w`` over
    ``vocab_axes``. Call inside ``jax.jit``; the results' rows are split like ``h``'s."""
    row_axes, vocab_axes = tuple(row_axes), tuple(vocab_axes)
    kernel = lambda h, w, targets: token_logprobs_and_entropy(h, w, targets, temperature, **options)
    if mesh is None or not (row_axes or vocab_axes):
        return kernel(h, w, targets)
    rows = PartitionSpec(row_axes or None)

    def local(h, w, targets):
        if not vocab_axes:
            return kernel(h, w, targets)
        return _vocab_parallel(h, w, targets, temperature, vocab_axes, kernel)

    in_specs = (PartitionSpec(row_axes or None, None), PartitionSpec(None, vocab_axes or None), rows)
    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=(rows, rows), check_vma=False)(h, w, targets)
