"""Qwen3-MoE sparse MLP: a softmax top-k router over SwiGLU experts, with routing replay.

Routing (Qwen3-MoE, as in Hugging Face `Qwen3MoeSparseMoeBlock`):

    p = softmax(x W_router)                       (float32)
    E_k(x) = top-k indices of p,   w_k = p[E_k]    (w_k / sum_k w_k if norm_topk_prob)
    y = sum_k w_k * down(silu(gate_e(x)) * up_e(x)),  e = E_k(x)

Replay (rollout routing replay, R3): given the expert indices the generator chose, the
layer uses them instead of its own top-k, and recomputes only their weights from the
current router, so the learner scores exactly the experts that produced the tokens.

Experts run as grouped matmuls (`jax.lax.ragged_dot`) over the token copies sorted by
expert: no capacity limit, no dropped tokens, and no [tokens, experts] dense compute.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlx.models.config import ModelConfig
from rlx.models.layers import param


def route(router_logits: jax.Array, top_k: int, normalize: bool, routes: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(weights [..., k] float32, expert indices [..., k] int32) from logits [..., E].

    With `routes` given, those indices are kept and only their weights are computed.
    """
    probs = jax.nn.softmax(router_logits.astype(jnp.float32), axis=-1)
    if routes is None:
        weights, routes = jax.lax.top_k(probs, top_k)
    else:
        if routes.shape[-1] != top_k:
            raise ValueError(f"replayed routes choose {routes.shape[-1]} experts per token, the model {top_k}")
        weights = jnp.take_along_axis(probs, routes, axis=-1)
    if normalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights, routes.astype(jnp.int32)


class MoEBlock(nnx.Module):
    """Sparse MLP of one Qwen3-MoE layer. Expert weights are stacked on a leading `exp` axis."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.top_k = config.num_experts_per_tok
        self.normalize = config.norm_topk_prob
        dt = jnp.dtype(config.param_dtype)
        e, d, f = config.num_experts, config.hidden_size, config.moe_intermediate_size
        init = nnx.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
        self.router = param(rngs, nnx.initializers.lecun_normal(), (d, e), ("embed", "router"), dt)
        self.gate = param(rngs, init, (e, d, f), ("exp", "embed", "moe_mlp"), dt)
        self.up = param(rngs, init, (e, d, f), ("exp", "embed", "moe_mlp"), dt)
        self.down = param(rngs, init, (e, f, d), ("exp", "moe_mlp", "embed"), dt)

    def __call__(self, x: jax.Array, routes: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """y [B, S, D] and the expert indices used [B, S, k] (the replayed ones when given)."""
        dtype = x.dtype
        batch, steps, width = x.shape
        logits = jnp.einsum("bsd,de->bse", x, self.router[...].astype(dtype))
        weights, routes = route(logits, self.top_k, self.normalize, routes)
        flat_experts = routes.reshape(-1)  # [T * k], token t's copies at t*k .. t*k + k - 1
        order = jnp.argsort(flat_experts, stable=True)
        tokens = x.reshape(-1, width)[order // self.top_k]
        group_sizes = jnp.bincount(flat_experts, length=self.gate.shape[0]).astype(jnp.int32)
        hidden = jax.nn.silu(jax.lax.ragged_dot(tokens, self.gate[...].astype(dtype), group_sizes))
        hidden = hidden * jax.lax.ragged_dot(tokens, self.up[...].astype(dtype), group_sizes)
        expert_out = jax.lax.ragged_dot(hidden, self.down[...].astype(dtype), group_sizes)
        unsorted = jnp.zeros_like(expert_out).at[order].set(expert_out)
        combined = jnp.einsum("tkd,tk->td", unsorted.reshape(-1, self.top_k, width), weights.reshape(-1, self.top_k).astype(dtype))
        return combined.reshape(batch, steps, width), routes
