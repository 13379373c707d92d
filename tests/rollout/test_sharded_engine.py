"""The engine on a simulated 8-device generator mesh: slots over data-parallel axes, kv heads over
`tensor`, the same greedy tokens as on one device, and the programs the dry-run plan lowers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from rlx.models import ModelConfig, Qwen3
from rlx.parallel import MeshConfig, make_mesh, rules_for, tree_shardings
from rlx.rollout import Engine, Request, RolloutDriver
from tests.rollout.conftest import GREEDY, PAD, PROMPTS

CONFIG = ModelConfig(vocab_size=24, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                     max_seq_len=24)
SLOTS_SPEC = ("data", "fsdp")
CACHE_SPEC = PartitionSpec(None, SLOTS_SPEC, None, "tensor", None)


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(MeshConfig(data=2, fsdp=2, tensor=2), jax.devices()[:8])


def engine_on(mesh, params, config=CONFIG, slots=4) -> Engine:
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: Qwen3(config, rngs=nnx.Rngs(0))))
    return Engine(graphdef, params, config, max_concurrent_decodes=slots, max_prefill_length=12, max_decode_length=8,
                  stop_tokens=(), pad_id=PAD, steps_per_generate=2, mesh=mesh, rules=rules_for("serve_tp"))


@pytest.fixture(scope="module")
def params():
    return nnx.state(Qwen3(CONFIG, rngs=nnx.Rngs(4)), nnx.Param)


def test_slots_split_over_data_axes_and_greedy_tokens_equal_one_device(mesh, params):
    sharded, single = engine_on(mesh, params), engine_on(None, params)
    state = sharded.decode_state(jax.random.key(0))
    assert state.cache.k.sharding.spec == CACHE_SPEC and state.index.sharding.spec == PartitionSpec(SLOTS_SPEC)
    assert state.logits.sharding.spec == PartitionSpec(SLOTS_SPEC)
    q_proj = sharded.load_params()["layers"][0]["layer"]["attn"]["q_proj"]
    assert q_proj.sharding.spec == PartitionSpec(None, None, "tensor", None)  # [layers, embed, q_heads, head_dim]
    sharded.release(state)
    requests = [Request(p, max_tokens=6, samples=2, tag=i) for i, p in enumerate(PROMPTS)]  # 8 samples over 4 slots

    def run(engine):
        return {(c.tag, c.sample): c for c in RolloutDriver(engine, engine.load_params()).stream(requests, jax.random.key(0), GREEDY)}

    got, expected = run(sharded), run(single)
    assert got.keys() == expected.keys()
    for key, completion in expected.items():
        np.testing.assert_array_equal(got[key].tokens, completion.tokens)
        np.testing.assert_allclose(got[key].log_probs, completion.log_probs, atol=1e-5)


def test_slots_that_do_not_split_over_the_data_axes_are_refused(mesh, params):
    with pytest.raises(ValueError, match=r"decode slots \(rollout.max_concurrent_decodes\): 6 rows do not split .* \(4 ways\)"):
        engine_on(mesh, params, slots=6)


def test_programs_lower_from_abstract_weights_with_the_engine_shardings_and_allocate_nothing(mesh):
    abstract = nnx.state(nnx.eval_shape(lambda: Qwen3(CONFIG, rngs=nnx.Rngs(0))), nnx.Param)
    live = {id(array) for array in jax.live_arrays()}
    engine = engine_on(mesh, abstract)
    programs = engine.programs()
    assert list(programs) == ["generator prefill", "generator insert", "generator decode step", "generator recompute", "generator extend"]
    compiled = {name: fn.lower(*args).compile() for name, (fn, args) in programs.items()}
    assert not {id(array) for array in jax.live_arrays()} - live  # shapes only, nothing on a device
    for name, program in compiled.items():
        stats = program.memory_analysis()
        assert stats.argument_size_in_bytes > 0 and stats.output_size_in_bytes > 0, name
    cache_bytes = 2 * np.prod([CONFIG.num_layers, 4, 20, CONFIG.num_kv_heads, CONFIG.head_dim]) * 4 // 8  # k and v, over 8 devices
    decode = compiled["generator decode step"]
    assert decode.memory_analysis().alias_size_in_bytes >= cache_bytes  # the state is donated: the cache is updated in place
    state_out, tokens_out = decode.output_shardings
    assert state_out.cache.k.spec == CACHE_SPEC and tokens_out.data.spec == PartitionSpec(SLOTS_SPEC)
    param_in = decode.input_shardings[0][0]
    expected = tree_shardings(abstract, mesh, rules_for("serve_tp"))
    assert [s.spec for s in jax.tree.leaves(param_in)] == [s.spec for s in jax.tree.leaves(expected)]
    assert compiled["generator prefill"].output_shardings.cache.k.spec == CACHE_SPEC
    assert compiled["generator recompute"].output_shardings.cache.k.spec == CACHE_SPEC
    assert compiled["generator extend"].output_shardings.cache.k.spec == CACHE_SPEC
    with pytest.raises(ValueError, match="abstract weights"):
        engine.load_params()


def test_weights_and_cache_live_in_the_compute_dtype(params):
    config = CONFIG.__class__(**{**CONFIG.__dict__, "dtype": "bfloat16"})
    engine = engine_on(None, params, config)
    assert {x.dtype for x in jax.tree.leaves(engine.load_params())} == {jnp.dtype(jnp.bfloat16)}
    state = engine.decode_state()
    assert state.cache.dtype == jnp.bfloat16 and state.logits.dtype == jnp.float32
    engine.release(state)
    with pytest.raises(ValueError, match="float32.*bfloat16.*Engine.publish"):
        engine.load_params(params)  # float32 master weights must be published (cast) first
    republished = engine.load_params(engine.publish(jax.tree.map(lambda x: x * 2, params)))
    embed = republished["embed"]
    np.testing.assert_allclose(np.asarray(embed, np.float32), np.asarray(params["embed"] * 2, np.float32), rtol=1e-2)
    completions = list(RolloutDriver(engine, republished).stream([Request(PROMPTS[0], 4)], jax.random.key(0), GREEDY))
    assert len(completions[0].tokens) == 4
