"""Qwen3-MoE sparse MLP: a softmax top-k router over SwiGLU experts, with routing replay.

Routing (Qwen3-MoE, as in Hugging Face `Qwen3MoeSparseMoeBlock`):

    p = softmax(x W_router)                       (float32)
    E_k(x) = top-k indices of p,   w_k = p[E_k]    (w_k / sum_k w_k if norm_topk_prob)
    y = sum_k w_k * down(silu(gate_e(x)) * up_e(x)),  e = E_k(x)

Replay (rollout routing replay, R3): given the expert indices the generator chose, the
layer uses them instead of its own top-k, and recomputes only their weights from the
current router, so the learner scores exactly the experts that produced the tokens (and the
router still gets gradients through those weights). A token whose replayed indices are -1
(nothing recorded: padding) is routed by its own top-k. The layer always returns the
router's own top-k, replayed or not, so a caller can count how often the two agree.

Experts run as grouped matmuls (`rlx.models.grouped_matmul`, chosen by `model.moe_impl`)
over the token copies sorted by expert: no capacity limit, no dropped tokens, and no
[tokens, experts] dense compute.

Under a mesh context (`rlx.models.activation_sharding.current_mesh_rules`) with more than one device, the layer runs
per device in `shard_map` (expert parallelism):

* weights split along `embed` (FSDP) are all-gathered, one layer at a time;
* each device routes its own rows, then computes only its own experts (`exp` axes) and its
  slice of their width (`moe_mlp` axes), so every token's output is a sum of partial outputs
  over those axes;
* over those of them that also split the batch rows (the learner's `expert`), the rows (with
  their routes) are all-gathered first and the partial outputs reduce-scattered back to their
  rows; over the others (the generator's `expert`, `tensor`) the rows are whole already and the
  partial outputs are summed.

Batch axes that do not divide the rows are left out (the rows stay whole over them). Without a
context the layer runs as on one device, the compiler partitioning it as it can.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlx.models.config import ModelConfig
from rlx.models.grouped_matmul import grouped_matmul
from rlx.models.layers import param
from rlx.models.activation_sharding import MeshRules, current_mesh_rules


def route(router_logits: jax.Array, top_k: int, normalize: bool, routes: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(weights [..., k] float32, expert indices used [..., k] int32, the router's own top-k [..., k] int32)
    from logits [..., E].

    With `routes` given, a token's recorded indices are used (and only their weights computed);
    a token whose indices are -1 (nothing recorded) uses its own top-k.
    """
    probs = jax.nn.softmax(router_logits.astype(jnp.float32), axis=-1)
    weights, own = jax.lax.top_k(probs, top_k)
    used = own
    if routes is not None:
        if routes.shape[-1] != top_k:
            raise ValueError(f"replayed routes choose {routes.shape[-1]} experts per token, the model {top_k}")
        used = jnp.where(routes[..., :1] >= 0, routes, own)
        weights = jnp.take_along_axis(probs, used, axis=-1)
    if normalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights, used.astype(jnp.int32), own.astype(jnp.int32)


def mix_experts(tokens: jax.Array, weights: jax.Array, routes: jax.Array, gate: jax.Array, up: jax.Array, down: jax.Array,
                first_expert: jax.Array | int, impl: str) -> jax.Array:
    """[T, D]: for each token of `tokens [T, D]`, sum_k weights[t, k] * expert_e(token), e = routes[t, k],
    over the copies routed to the experts held here (`first_expert ..` + gate.shape[0]); other copies add 0."""
    top_k = routes.shape[1]
    held = gate.shape[0]
    local = routes.reshape(-1) - first_expert  # token t's copies at t*k .. t*k + k - 1
    group = jnp.where((local >= 0) & (local < held), local, held)  # other devices' experts sort last, past the groups
    order = jnp.argsort(group, stable=True)
    sizes = jnp.zeros((held,), jnp.int32).at[group].add(1, mode="drop")
    token = order // top_k
    rows = tokens[token]
    hidden = jax.nn.silu(grouped_matmul(rows, gate, sizes, impl)) * grouped_matmul(rows, up, sizes, impl)
    hidden = hidden * weights.reshape(-1)[order].astype(hidden.dtype)[:, None]  # scaled before `down`: F < D columns
    out = grouped_matmul(hidden, down, sizes, impl)  # rows past the groups are 0: they add nothing below
    return jnp.zeros_like(tokens).at[token].add(out)


def _row_axes(context: MeshRules, rows: int) -> tuple[str, ...]:
    """The leading `batch` mesh axes that split `rows` evenly (rows stay whole over the rest)."""
    axes: tuple[str, ...] = ()
    for axis in context.axes("batch"):
        if rows % context.size(axes + (axis,)):
            break
        axes += (axis,)
    return axes


def expert_parallel(context: MeshRules, x: jax.Array, router: jax.Array, gate: jax.Array, up: jax.Array, down: jax.Array,
                    routes: jax.Array | None, top_k: int, normalize: bool, impl: str) -> tuple[jax.Array, jax.Array]:
    """The sparse MLP of x [B, S, D] with each device routing its own rows and running its own experts in `shard_map`."""
    rows = _row_axes(context, x.shape[0])
    experts, embed, mlp = context.axes("exp"), context.axes("embed"), context.axes("moe_mlp")
    gathered = tuple(a for a in rows if a in experts + mlp)
    summed = tuple(a for a in experts + mlp if a not in gathered)
    held = gate.shape[0] // context.size(experts)

    def per_device(x, router, gate, up, down, routes):
        if embed:
            router = jax.lax.all_gather(router, embed, axis=0, tiled=True)
            gate, up = (jax.lax.all_gather(w, embed, axis=1, tiled=True) for w in (gate, up))
            down = jax.lax.all_gather(down, embed, axis=2, tiled=True)
        weights, used, own = route(jnp.einsum("bsd,de->bse", x, router), top_k, normalize, routes)
        tokens, token_weights, token_routes = x, weights, used
        if gathered:
            tokens, token_weights, token_routes = (jax.lax.all_gather(a, gathered, axis=0, tiled=True) for a in (x, weights, used))
        first = jax.lax.axis_index(experts) * held if experts else 0
        flat = lambda a: a.reshape(-1, a.shape[-1])
        y = mix_experts(flat(tokens), flat(token_weights), flat(token_routes), gate, up, down, first, impl).reshape(tokens.shape)
        if gathered:
            y = jax.lax.psum_scatter(y, gathered, scatter_dimension=0, tiled=True)
        return (jax.lax.psum(y, summed) if summed else y), own

    row_spec = context.spec(rows)
    in_proj, out_proj = context.spec(experts, embed, mlp), context.spec(experts, mlp, embed)
    # check_vma off: the megablox kernel's outputs carry no per-device typing. The transposes are then JAX's
    # unchecked ones (a psum over the axes an input is whole on), which the tests check against one device.
    run = jax.shard_map(per_device, mesh=context.mesh, out_specs=(row_spec, row_spec), check_vma=False,
                        in_specs=(row_spec, context.spec(embed), in_proj, in_proj, out_proj, row_spec))
    return run(x, router, gate, up, down, routes)


class MoEBlock(nnx.Module):
    """Sparse MLP of one Qwen3-MoE layer. Expert weights are stacked on a leading `exp` axis."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.top_k = config.num_experts_per_tok
        self.normalize = config.norm_topk_prob
        self.impl = config.moe_impl
        dt = jnp.dtype(config.param_dtype)
        e, d, f = config.num_experts, config.hidden_size, config.moe_intermediate_size
        init = nnx.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
        self.router = param(rngs, nnx.initializers.lecun_normal(), (d, e), ("embed", "router"), dt)
        self.gate = param(rngs, init, (e, d, f), ("exp", "embed", "moe_mlp"), dt)
        self.up = param(rngs, init, (e, d, f), ("exp", "embed", "moe_mlp"), dt)
        self.down = param(rngs, init, (e, f, d), ("exp", "moe_mlp", "embed"), dt)

    def __call__(self, x: jax.Array, routes: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """y [B, S, D] and the router's own top-k expert indices [B, S, k] (what it would choose; the
        replayed `routes` [B, S, k] are used instead where given and not -1)."""
        router, gate, up, down = (w[...].astype(x.dtype) for w in (self.router, self.gate, self.up, self.down))
        context = current_mesh_rules()
        if context is not None and context.mesh.size > 1:
            return expert_parallel(context, x, router, gate, up, down, routes, self.top_k, self.normalize, self.impl)
        weights, used, own = route(jnp.einsum("bsd,de->bse", x, router), self.top_k, self.normalize, routes)
        flat = lambda a: a.reshape(-1, a.shape[-1])
        return mix_experts(flat(x), flat(weights), flat(used), gate, up, down, 0, self.impl).reshape(x.shape), own
