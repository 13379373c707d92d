import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlx.models import ModelConfig, MoEBlock, Qwen3
from rlx.models.moe import route

CONFIG = ModelConfig(vocab_size=16, hidden_size=8, num_layers=3, num_heads=2, num_kv_heads=1, head_dim=4,
                     num_experts=5, num_experts_per_tok=2, moe_intermediate_size=6, mlp_only_layers=(1,))


@pytest.fixture(scope="module")
def block():
    return MoEBlock(CONFIG, rngs=nnx.Rngs(0))


X = jax.random.normal(jax.random.key(1), (2, 3, 8))


def _reference(block, x, normalize=True):
    """Token by token: softmax router, top-k, weighted sum of the chosen SwiGLU experts."""
    router, gate, up, down = (np.asarray(block.router[...]), np.asarray(block.gate[...]),
                              np.asarray(block.up[...]), np.asarray(block.down[...]))
    out = np.zeros(x.shape, np.float32)
    for b in range(x.shape[0]):
        for s in range(x.shape[1]):
            token = np.asarray(x[b, s])
            logits = token @ router
            probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
            chosen = np.argsort(-probs)[: CONFIG.num_experts_per_tok]
            weights = probs[chosen] / (probs[chosen].sum() if normalize else 1.0)
            for w, e in zip(weights, chosen):
                h = token @ gate[e]
                out[b, s] += w * ((h / (1 + np.exp(-h))) * (token @ up[e])) @ down[e]
    return out


@pytest.mark.parametrize("impl", ["auto", "ragged_dot", "scan"])
def test_block_matches_token_by_token_reference(block, impl):
    block = MoEBlock(dataclasses.replace(CONFIG, moe_impl=impl), rngs=nnx.Rngs(0)) if impl != "auto" else block
    y, routes = block(X)
    assert y.shape == X.shape and routes.shape == (2, 3, 2) and routes.dtype == jnp.int32
    np.testing.assert_allclose(y, _reference(block, X), atol=1e-5)


def test_route_weights():
    logits = jnp.array([[2.0, 1.0, 0.0, -1.0]])
    weights, used, own = route(logits, 2, normalize=False)
    probs = jax.nn.softmax(logits)
    np.testing.assert_array_equal(used, [[0, 1]])
    np.testing.assert_array_equal(own, used)
    np.testing.assert_allclose(weights, probs[:, :2], rtol=1e-6)
    normalized, _, _ = route(logits, 2, normalize=True)
    np.testing.assert_allclose(normalized.sum(-1), 1.0, rtol=1e-6)


def test_replayed_route_weights_and_unrecorded_tokens():
    """Recorded ids are used with the router's probabilities; a token recorded as -1 takes its own top-k."""
    logits = jnp.array([[2.0, 1.0, 0.0, -1.0], [2.0, 1.0, 0.0, -1.0]])
    probs = jax.nn.softmax(logits)
    weights, used, own = route(logits, 2, normalize=False, routes=jnp.array([[3, 2], [-1, -1]]))
    np.testing.assert_array_equal(used, [[3, 2], [0, 1]])
    np.testing.assert_array_equal(own, [[0, 1], [0, 1]])
    np.testing.assert_allclose(weights, [[probs[0, 3], probs[0, 2]], [probs[1, 0], probs[1, 1]]], rtol=1e-6)


def test_replayed_routes_are_used_and_reweighted(block):
    _, own = block(X)
    same, _ = block(X, routes=own)
    np.testing.assert_allclose(same, block(X)[0], atol=1e-6)
    forced = jnp.stack([jnp.full((2, 3), 4), jnp.full((2, 3), 3)], axis=-1).astype(jnp.int32)
    y, chosen = block(X, routes=forced)
    np.testing.assert_array_equal(chosen, own)  # what the router would choose, whatever was replayed
    assert not np.allclose(y, same)
    unrecorded, _ = block(X, routes=jnp.full_like(forced, -1))
    np.testing.assert_allclose(unrecorded, same, atol=1e-6)  # nothing recorded: nothing replayed
    graphdef, state = nnx.split(block)
    grads = jax.grad(lambda st: jnp.sum(nnx.merge(graphdef, st)(X, routes=forced)[0]))(state)
    assert np.abs(np.asarray(grads["router"][...])[:, 3:]).sum() > 0  # the router learns through the replayed experts' weights
    with pytest.raises(ValueError, match="replayed routes choose 1 experts per token, the model 2"):
        block(X, routes=forced[..., :1])


def test_moe_layers_follow_the_hf_rule_and_name_their_axes():
    model = nnx.eval_shape(lambda: Qwen3(CONFIG, rngs=nnx.Rngs(0)))
    assert [(stack.first, stack.count, stack.layer.is_moe) for stack in model.layers] == [(0, 1, True), (1, 1, False), (2, 1, True)]
    names = model.layers[0].layer.mlp.gate.get_metadata()["out_sharding"]
    assert names == ("layers", "exp", "embed", "moe_mlp")
    step2 = ModelConfig(num_layers=4, num_experts=4, num_experts_per_tok=1, decoder_sparse_step=2)
    assert [step2.is_moe_layer(i) for i in range(4)] == [False, True, False, True]
    assert not ModelConfig().is_moe_layer(0)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(num_experts=4, num_experts_per_tok=5), r"num_experts_per_tok must be in \[1, num_experts=4\], got 5"),
        (dict(num_experts=-1), "num_experts must be >= 0"),
        (dict(num_layers=2, mlp_only_layers=(2,)), r"mlp_only_layers \[2\] are outside \[0, num_layers=2\)"),
        (dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=0), "moe_intermediate_size and decoder_sparse_step must be >= 1"),
        (dict(moe_impl="dense"), "moe_impl must be one of auto, ragged_dot, scan, megablox, got 'dense'"),
    ],
)
def test_bad_moe_config(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**fields)


def _model_routes(model, ids, routes=None):
    """(hidden states, the routers' own routes) of a jitted forward (eager scans are slow)."""
    graphdef, state = nnx.split(model)
    return _forward(graphdef, state, ids, routes)


@partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, ids, routes):
    hidden, _, own = nnx.merge(graphdef, state).hidden_states_and_routes(ids, routes=routes)
    return hidden, own


def test_stacks_emit_routes_in_layer_order_and_replay_them():
    """Layers 0 and 2 are MoE stacks around a dense one: routes [B, S, 2, k], the layer-2 stack's second."""
    model = Qwen3(CONFIG, rngs=nnx.Rngs(0))
    ids = jax.random.randint(jax.random.key(2), (2, 5), 0, 16)
    hidden, routes = _model_routes(model, ids)
    assert routes.shape == (2, 5, CONFIG.moe_layers, 2) == (2, 5, 2, 2) and routes.dtype == jnp.int32
    replayed, chosen = _model_routes(model, ids, routes=routes)
    np.testing.assert_array_equal(replayed, hidden)  # replaying the router's own choice changes nothing
    np.testing.assert_array_equal(chosen, routes)
    # A route forced in the last MoE layer only changes the output; the earlier layer's choice is untouched.
    forced = routes.at[:, :, 1].set(jnp.array([3, 4]))
    other, chosen = _model_routes(model, ids, routes=forced)
    assert not np.allclose(other, hidden)
    np.testing.assert_array_equal(chosen[:, :, 0], routes[:, :, 0])
    unrecorded, _ = _model_routes(model, ids, routes=jnp.full_like(routes, -1))
    np.testing.assert_array_equal(unrecorded, hidden)


def test_dense_model_has_no_routes():
    dense = dataclasses.replace(CONFIG, num_experts=0)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen3(dense, rngs=nnx.Rngs(0))))
    _, _, routes = jax.eval_shape(lambda st, ids: nnx.merge(graphdef, st).hidden_states_and_routes(ids), state, jnp.zeros((1, 3), jnp.int32))
    assert routes is None and dense.moe_layers == 0


def test_router_gets_gradients_under_replay_in_every_moe_layer():
    model = Qwen3(CONFIG, rngs=nnx.Rngs(0))
    ids = jax.random.randint(jax.random.key(2), (2, 5), 0, 16)
    _, routes = _model_routes(model, ids)
    forced = (routes + 1) % CONFIG.num_experts
    graphdef, state = nnx.split(model)
    grads = jax.jit(jax.grad(lambda st: jnp.sum(jnp.sin(_forward(graphdef, st, ids, forced)[0]))))(state)
    for stack in (0, 2):
        assert np.abs(np.asarray(grads["layers"][stack]["layer"]["mlp"]["router"][...])).sum() > 0
