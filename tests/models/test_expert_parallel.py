"""Expert parallelism on 8 simulated devices: the MoE layer under a mesh context equals the unsharded layer."""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlx.models import ModelConfig, MoEBlock, Qwen3
from rlx.models import grouped_matmul
from rlx.models.activation_sharding import current_mesh_rules, mesh_rules
from rlx.parallel import MeshConfig, batch_sharding, make_mesh, rules_for, tree_shardings
from rlx.parallel.mesh import expand_shardings

EXPERTS = 16
CONFIG = ModelConfig(vocab_size=32, hidden_size=24, intermediate_size=24, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                     num_experts=EXPERTS, num_experts_per_tok=2, moe_intermediate_size=12, moe_impl="scan")
X = jax.random.normal(jax.random.key(1), (8, 3, 24))
# Every token to experts 5 and 2: the others receive none.
FORCED = jnp.broadcast_to(jnp.array([5, 2], jnp.int32), (8, 3, 2))
MESHES = {
    "learner": (MeshConfig(fsdp=2, tensor=2, expert=2), "fsdp_tp_ep"),
    "learner_ep4": (MeshConfig(fsdp=2, expert=4), "fsdp_tp_ep"),
    "generator": (MeshConfig(data=2, tensor=2, expert=2), "serve_tp_ep"),
}


def _block(config=CONFIG):
    return MoEBlock(config, rngs=nnx.Rngs(0))


def _value_and_grads(block, x, routes=None, mesh=None, rules=None, split_rows=True):
    """Outputs, routes and gradients (weights and input) of sum(y * c), under the mesh context if given
    (with the rows of x split as the rules say, or on one device)."""
    graphdef, state = nnx.split(block)
    cotangent = jnp.cos(jnp.arange(x.size, dtype=jnp.float32)).reshape(x.shape)

    def loss(state, x):
        y, used = nnx.merge(graphdef, state)(x, routes)
        return jnp.sum(y * cotangent), (y, used)

    step = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
    if mesh is None:
        return step(state, x)
    state = jax.device_put(state, tree_shardings(state, mesh, rules))
    if split_rows:
        x = jax.device_put(x, batch_sharding(mesh, rules, x.shape))
    with mesh_rules(mesh, rules):
        compiled = step.lower(state, x).compile()
    (grads, grad_x), aux = compiled(state, x)
    return (grads, grad_x), aux, state, compiled.as_text()


def _all_gather_shapes(hlo: str) -> list[tuple[int, ...]]:
    found = re.findall(r"= \w+\[([\d,]*)\][^ ]* all-gather(?:-start)?\(", hlo)
    return [tuple(int(d) for d in dims.split(",") if d) for dims in found]


@pytest.mark.parametrize("replay", [False, True], ids=["routed", "replayed"])
@pytest.mark.parametrize("layout", MESHES)
def test_sharded_layer_equals_unsharded_for_outputs_and_gradients(layout, replay):
    block = _block()
    routes = FORCED if replay else None
    (want_grads, want_dx), (want_y, want_routes) = _value_and_grads(block, X, routes)
    config, preset = MESHES[layout]
    mesh, rules = make_mesh(config, jax.devices()[: config.size]), rules_for(preset)
    (grads, grad_x), (y, used), state, hlo = _value_and_grads(block, X, routes, mesh, rules)

    np.testing.assert_array_equal(used, want_routes)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad_x, want_dx, rtol=1e-5, atol=1e-5)
    for name in ("router", "gate", "up", "down"):
        np.testing.assert_allclose(grads[name][...], want_grads[name][...], rtol=1e-5, atol=1e-5, err_msg=name)
    for name in ("gate", "up", "down"):  # the experts' gradients come out of shard_map on their weights' shards
        assert grads[name][...].sharding.is_equivalent_to(state[name][...].sharding, 3), name
    assert np.abs(np.asarray(grads["router"][...])).sum() > 0
    if replay:  # experts without tokens get no gradient, on any device
        assert not np.asarray(grads["gate"][...])[[e for e in range(EXPERTS) if e not in (2, 5)]].any()
    # Expert weights stay split over `expert`: nothing gathers a tensor holding all experts. The learner
    # gathers its own experts' FSDP shards (full width, its `tensor` slice); the generator gathers no weights.
    gathers = _all_gather_shapes(hlo)
    assert not [shape for shape in gathers if len(shape) == 3 and shape[0] == EXPERTS]
    own_experts = (EXPERTS // config.expert, CONFIG.hidden_size, CONFIG.moe_intermediate_size // config.tensor)
    assert (own_experts in gathers) == (preset == "fsdp_tp_ep")


@pytest.mark.parametrize("impl", ["ragged_dot", "megablox"])
def test_other_impls_run_under_the_expert_parallel_meshes(impl, monkeypatch):
    """(The other tests run `scan`.) Megablox runs its TPU kernels in interpret mode, standing in for `scan`."""
    if impl == "megablox":
        monkeypatch.setitem(grouped_matmul._IMPLS, "scan", functools.partial(grouped_matmul.megablox_grouped_matmul, interpret=True))
    block = _block(dataclasses.replace(CONFIG, moe_impl="ragged_dot" if impl == "ragged_dot" else "scan"))
    (want_grads, want_dx), (want_y, _) = _value_and_grads(block, X)
    for layout in ("learner", "generator"):
        config, preset = MESHES[layout]
        (grads, grad_x), (y, _), _, _ = _value_and_grads(block, X, None, make_mesh(config, jax.devices()), rules_for(preset))
        np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(grad_x, want_dx, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(grads["gate"][...], want_grads["gate"][...], rtol=1e-5, atol=1e-5)


def test_rows_that_do_not_split_over_every_batch_axis_stay_whole_there():
    block = _block()
    (_, want_dx), (want_y, _) = _value_and_grads(block, X[:2])
    config, preset = MESHES["learner_ep4"]  # 2 rows, 8 devices: rows split over fsdp only, summed over expert
    (_, grad_x), (y, _), _, _ = _value_and_grads(block, X[:2], None, make_mesh(config, jax.devices()), rules_for(preset),
                                               split_rows=False)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad_x, want_dx, rtol=1e-5, atol=1e-5)


def test_whole_model_under_the_learner_context_equals_unsharded():
    config = dataclasses.replace(CONFIG, num_layers=1)
    graphdef, state = nnx.split(Qwen3(config, rngs=nnx.Rngs(0)))
    ids = jax.random.randint(jax.random.key(2), (8, 5), 0, config.vocab_size)

    def loss(state, ids):
        logits = nnx.merge(graphdef, state)(ids, remat="full")[0]
        return jnp.sum(jax.nn.log_softmax(logits)[..., 0]), logits

    step = jax.jit(jax.grad(loss, has_aux=True))
    want_grads, want = step(state, ids)
    mesh_config, preset = MESHES["learner"]
    mesh, rules = make_mesh(mesh_config, jax.devices()), rules_for(preset)
    sharded = jax.device_put(state, tree_shardings(state, mesh, rules))
    ids = jax.device_put(ids, batch_sharding(mesh, rules, ids.shape))
    with mesh_rules(mesh, rules):
        grads, got = jax.jit(jax.grad(loss, has_aux=True))(sharded, ids)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    gate = lambda tree: tree["layers"][0]["layer"]["mlp"]["gate"][...]
    np.testing.assert_allclose(gate(grads), gate(want_grads), rtol=1e-4, atol=1e-5)


def test_per_device_temporaries_are_far_below_the_dense_mask():
    """A mid-size layer (1,024 tokens, 64 experts, top-4), forward and backward on {fsdp: 2, expert: 4}."""
    tokens, experts, top_k, width = 16 * 64, 64, 4, 256
    config = dataclasses.replace(CONFIG, hidden_size=width, num_experts=experts, num_experts_per_tok=top_k, moe_intermediate_size=64)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: _block(config)))
    mesh_config, preset = MESHES["learner_ep4"]
    mesh, rules = make_mesh(mesh_config, jax.devices()), rules_for(preset)
    x = jax.ShapeDtypeStruct((16, 64, width), jnp.float32, sharding=batch_sharding(mesh, rules, (16, 64, width)))
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state,
                         expand_shardings(tree_shardings(state, mesh, rules), state))
    step = jax.jit(jax.grad(lambda st, x: jnp.sum(nnx.merge(graphdef, st)(x)[0] ** 2), argnums=(0, 1)))
    with mesh_rules(mesh, rules):
        temp = step.lower(state, x).compile().memory_analysis().temp_size_in_bytes
    dense_mask = tokens * top_k * experts * width * 4  # [token copies, experts, width] float32: XLA's CPU ragged_dot
    copies_here = tokens // 8 * 4 * top_k  # this device's rows, gathered over `expert`, times top-k
    assert temp < dense_mask / 10
    assert temp < 12 * copies_here * width * 4  # a few [copies, width] buffers: bounded by the rows, not the experts


def test_context_nests_and_resets():
    mesh = make_mesh(MeshConfig(expert=2), jax.devices()[:2])
    assert current_mesh_rules() is None
    with mesh_rules(mesh, rules_for("fsdp_tp_ep")) as outer:
        assert current_mesh_rules() is outer and outer.axes("exp") == ("expert",) and outer.axes("embed") == ()
        with mesh_rules(mesh, rules_for("serve_tp_ep")) as inner:
            assert current_mesh_rules() is inner and inner.axes("batch") == ()
        assert current_mesh_rules() is outer
    assert current_mesh_rules() is None
