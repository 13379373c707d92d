"""Sharding on 8 simulated CPU devices: golden specs per preset, sharded == unsharded, resharding."""

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlx.models import ModelConfig, Qwen3
from rlx.parallel import (
    PRESETS, MeshConfig, ParallelConfig, ShardingError, batch_sharding, make_mesh, partition_spec, reshard, role_meshes,
    rules_for, spec_table, tree_shardings,
)

GOLDEN = Path(__file__).parent / "golden"
CONFIG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                     tie_word_embeddings=False, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, mlp_only_layers=(1,))
MESH = MeshConfig(fsdp=2, tensor=2, expert=2)


@pytest.fixture(scope="module")
def model():
    # Initialized in one compiled program: op-by-op eager init compiles every op separately.
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: Qwen3(CONFIG, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, jax.jit(lambda: nnx.state(Qwen3(CONFIG, rngs=nnx.Rngs(0))))())


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(MESH, jax.devices()[:8])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_parameter_specs_match_golden_files(model, mesh, preset):
    """Regenerate after an intended change with RLX_UPDATE_GOLDEN=1 and review the diff."""
    table = spec_table(nnx.state(model, nnx.Param), mesh, rules_for(preset))
    golden = GOLDEN / f"qwen3_moe_tiny_{preset}.json"
    if os.environ.get("RLX_UPDATE_GOLDEN"):
        golden.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    assert table == json.loads(golden.read_text())


def _loss(graphdef, params, ids):
    logits, _ = nnx.merge(graphdef, params)(ids)
    log_probs = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.mean(jnp.take_along_axis(log_probs, ids[:, 1:, None], axis=-1))


@pytest.fixture(scope="module")
def unsharded(model):
    """(value_and_grad, params, ids, loss, grads) of the plain single-device computation."""
    graphdef, params = nnx.split(model)
    ids = jax.random.randint(jax.random.key(1), (4, 9), 0, CONFIG.vocab_size)
    value_and_grad = lambda p, x: jax.value_and_grad(lambda q: _loss(graphdef, q, x))(p)
    return (value_and_grad, params, ids, *jax.jit(value_and_grad)(params, ids))


@pytest.mark.parametrize("preset", ["fsdp", "fsdp_tp_ep"])
def test_sharded_forward_and_backward_match_unsharded(unsharded, mesh, preset):
    value_and_grad, params, ids, expected_loss, expected_grads = unsharded
    rules = rules_for(preset)
    param_shardings = tree_shardings(params, mesh, rules)
    sharded = jax.jit(value_and_grad, in_shardings=(param_shardings, batch_sharding(mesh, rules, ids.shape)),
                      out_shardings=(None, param_shardings))
    placed = reshard(params, param_shardings)
    loss, grads = sharded(placed, ids)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
    table = spec_table(params, mesh, rules)
    for (path, leaf) in jax.tree_util.tree_flatten_with_path(grads)[0]:
        key = jax.tree_util.keystr(path[:-1])  # drop the Variable's value key
        assert leaf.sharding.spec == jax.sharding.PartitionSpec(*[tuple(a) if isinstance(a, list) else a for a in table[key]]), key


def test_expert_weights_are_split_over_the_expert_axis(model, mesh):
    params = reshard(nnx.state(model, nnx.Param), tree_shardings(nnx.state(model, nnx.Param), mesh, rules_for("fsdp_tp_ep")))
    gate = params["layers"][0]["layer"]["mlp"]["gate"][...]
    assert gate.shape == (1, 4, 32, 16)  # one layer in the first (MoE) stack
    assert {shard.data.shape for shard in gate.addressable_shards} == {(1, 2, 16, 8)}


def test_reshard_learner_slice_to_generator_slice_keeps_values(model):
    config = ParallelConfig(learner=MeshConfig(fsdp=4), generator=MeshConfig(tensor=2, expert=2), learner_rules="fsdp",
                            generator_rules="serve_tp_ep", placement="disaggregated")
    learner_mesh, generator_mesh = role_meshes(config, jax.devices()[:8])
    assert not set(learner_mesh.devices.flat) & set(generator_mesh.devices.flat)
    params = nnx.state(model, nnx.Param)
    on_learner = reshard(params, tree_shardings(params, learner_mesh, rules_for("fsdp")))
    on_generator = reshard(on_learner, tree_shardings(params, generator_mesh, rules_for("serve_tp_ep")))
    for before, after in zip(jax.tree.leaves(params), jax.tree.leaves(on_generator)):
        assert set(after.sharding.device_set) <= set(generator_mesh.devices.flat)
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
    router = on_generator["layers"][0]["layer"]["mlp"]["router"][...]
    assert router.sharding.spec == jax.sharding.PartitionSpec(None, None, None)  # "layers" and "router" are left whole


def test_bad_shardings_are_explained(mesh):
    with pytest.raises(ShardingError, match=r"dim 0 \('kv_heads', size 3\) does not split over mesh axes \('tensor',\)"):
        partition_spec(("kv_heads", "head_dim"), (3, 8), rules_for("fsdp_tp"), mesh, "k_proj")
    with pytest.raises(ShardingError, match="would shard two dims"):
        partition_spec(("mlp", "vocab"), (4, 4), rules_for("fsdp_tp"), mesh)
    with pytest.raises(ShardingError, match="unknown sharding preset 'zero3'"):
        rules_for("zero3")
    with pytest.raises(ValueError, match="colocated needs learner and generator meshes of one size"):
        ParallelConfig(learner=MeshConfig(fsdp=4), generator=MeshConfig(tensor=2))
    with pytest.raises(ValueError, match="unknown sharding preset 'tp'"):
        ParallelConfig(generator_rules="tp")
    with pytest.raises(ValueError, match="needs 16 devices"):
        role_meshes(ParallelConfig(learner=MeshConfig(fsdp=8), generator=MeshConfig(fsdp=8), placement="disaggregated"), jax.devices()[:8])
