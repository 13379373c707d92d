"""Weights created or loaded onto their shardings on 8 simulated devices: never whole on one device,
each device reading only its slices of the checkpoint, and equal to the unsharded result."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rlx.models import CheckpointError, ModelConfig, Qwen3, from_pretrained, init_params, load_params  # noqa: E402
from rlx.models.hf import CheckpointReader, tensor_maps  # noqa: E402
from rlx.models.hf_config import model_config_from_hf, read_hf_config  # noqa: E402
from rlx.parallel import MeshConfig, expand_shardings, make_mesh, rules_for, tree_shardings  # noqa: E402

VOCAB = 96  # splits over 2 tensor-parallel devices
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, max_position_embeddings=64, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, tie_word_embeddings=False)
CASES = {
    "dense": ("qwen3", dict(num_hidden_layers=2)),
    # Every layer sparse: one stack [layers=2, experts=4, ...], so one rlx array gathers 2 x 4 checkpoint tensors.
    "moe": ("qwen3_moe", dict(num_hidden_layers=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=12)),
}
# Between them, every kind of dim sharded somewhere (a mesh axis shards one dim per tensor): the stacked
# layers and experts; heads inside a flattened checkpoint dim; head_dim, a range that does not cover whole
# rows of the checkpoint's [out, in] layout; vocabulary and width.
_TP = {"q_heads": ("tensor",), "kv_heads": ("tensor",), "mlp": ("tensor",), "moe_mlp": ("tensor",), "vocab": ("tensor",)}
TABLES = {
    "fsdp_tp_ep": rules_for("fsdp_tp_ep"),
    "stacked_dims": {"layers": ("fsdp",), "exp": ("expert",), **_TP},
    "inner_dims": {"layers": ("fsdp",), "embed": ("expert",), "head_dim": ("tensor",), "mlp": ("tensor",), "moe_mlp": ("tensor",),
                   "vocab": ("tensor",)},
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    for name, (kind, fields) in CASES.items():
        torch.manual_seed(0)
        config_cls, model_cls = ((transformers.Qwen3Config, transformers.Qwen3ForCausalLM) if kind == "qwen3"
                                 else (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM))
        path = tmp_path_factory.mktemp(name)
        model_cls(config_cls(**COMMON, **fields)).save_pretrained(path, max_shard_size="20KB")  # sharded: an index file
        out[name] = path
    return out


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(MeshConfig(fsdp=2, tensor=2, expert=2), jax.devices()[:8])


def _shardings_for(mesh, rules):
    return lambda abstract: tree_shardings(abstract, mesh, rules)


def _leaves(state):
    return dict(jax.tree_util.tree_flatten_with_path(state)[0])


def _at(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _assert_on_shardings(params, mesh, rules):
    """Every array has the sharding the rules give; a sharded one is on no device whole. Returns the sharded count."""
    expected = _leaves(expand_shardings(tree_shardings(params, mesh, rules), params))
    sharded = 0
    for path, array in _leaves(params).items():
        assert array.sharding == expected[path], jax.tree_util.keystr(path)
        if not array.sharding.is_fully_replicated:
            sharded += 1
            assert max(shard.data.size for shard in array.addressable_shards) < array.size, jax.tree_util.keystr(path)
    return sharded


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("table", list(TABLES))
def test_sharded_load_equals_unsharded_load(checkpoints, mesh, case, table):
    path = checkpoints[case]
    rules = TABLES[table]
    config = model_config_from_hf(read_hf_config(path))
    _, params = load_params(path, config, _shardings_for(mesh, rules))
    assert _assert_on_shardings(params, mesh, rules) >= 8
    reference = _leaves(nnx.state(from_pretrained(path).model))
    loaded = _leaves(params)
    assert loaded.keys() == reference.keys()
    for key, array in loaded.items():
        np.testing.assert_array_equal(np.asarray(array), np.asarray(reference[key]), err_msg=jax.tree_util.keystr(key))


@pytest.mark.parametrize("case", list(CASES))
def test_each_device_reads_only_its_slices(checkpoints, mesh, monkeypatch, case):
    """No device reads a checkpoint tensor whole when its rlx array is split along the tensor's own dims,
    and all reads together are no more than one read per distinct shard."""
    path = checkpoints[case]
    rules = rules_for("fsdp_tp_ep")
    config = model_config_from_hf(read_hf_config(path))
    reads = []
    original = CheckpointReader.read

    def recording(self, name, index):
        block = original(self, name, index)
        reads.append((name, block.size))
        return block

    monkeypatch.setattr(CheckpointReader, "read", recording)
    _, params = load_params(path, config, _shardings_for(mesh, rules))
    values = nnx.to_pure_dict(params)
    split_tensors = set()
    for m in tensor_maps(config):
        spec = _at(values, m.path).sharding.spec
        if any(axis is not None for axis in tuple(spec)[len(m.index):]):
            split_tensors.add(m.hf_name)
    full = {m.hf_name: int(np.prod(m.hf_shape)) for m in tensor_maps(config)}
    assert len(split_tensors) >= 6
    for name, size in reads:
        if name in split_tensors:
            assert size < full[name], name
    distinct_shards = sum(len({str(s.index) for s in a.addressable_shards}) * a.addressable_shards[0].data.size for a in jax.tree.leaves(values))
    assert sum(size for _, size in reads) <= distinct_shards


def test_load_refuses_a_config_that_is_not_the_checkpoints(checkpoints, mesh):
    path = checkpoints["dense"]
    config = model_config_from_hf(read_hf_config(path))
    wrong = dataclasses.replace(config, hidden_size=64, rope_theta=1.0)
    with pytest.raises(CheckpointError, match=r"model.hidden_size = 64 but config.json gives 32; model.rope_theta = 1.0 but"):
        load_params(path, wrong, _shardings_for(mesh, rules_for("fsdp")))


def test_bfloat16_checkpoint_loads_into_float32_master_weights(tmp_path, mesh):
    torch.manual_seed(0)
    hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**COMMON, num_hidden_layers=1)).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    config = model_config_from_hf(read_hf_config(tmp_path), dtype="float32")
    _, params = load_params(tmp_path, config, _shardings_for(mesh, rules_for("fsdp_tp")))
    q = params["layers"][0]["layer"]["attn"]["q_proj"][...]
    assert q.dtype == np.float32
    expected = hf.model.layers[0].self_attn.q_proj.weight.float().detach().numpy().T.reshape(32, 4, 8)
    np.testing.assert_array_equal(np.asarray(q)[0], expected)


@pytest.mark.parametrize("moe", [False, True])
def test_init_under_jit_lands_on_shardings_and_equals_eager_init(mesh, moe):
    extra = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=12) if moe else {}
    config = ModelConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_layers=2, num_heads=4, num_kv_heads=2,
                         head_dim=8, tie_word_embeddings=False, **extra)
    rules = rules_for("fsdp_tp_ep")
    graphdef, params = init_params(config, _shardings_for(mesh, rules), seed=3)
    assert _assert_on_shardings(params, mesh, rules) >= 8
    eager_graphdef, eager = nnx.split(Qwen3(config, rngs=nnx.Rngs(3)))
    assert graphdef == eager_graphdef
    eager_leaves = _leaves(eager)
    for key, array in _leaves(params).items():
        np.testing.assert_allclose(np.asarray(array), np.asarray(eager_leaves[key]), rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(key))
