"""Hugging Face Qwen3 / Qwen3-MoE checkpoints: logits parity with `transformers`, export round trips, errors."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rlx.models import CheckpointError, UnsupportedCheckpointError, from_pretrained, save_pretrained  # noqa: E402
from rlx.models.hf import tensor_maps  # noqa: E402

VOCAB = 97
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, max_position_embeddings=64, rms_norm_eps=1e-6)
CASES = {
    # GQA 4:1, head_dim 12 != hidden / heads = 4, tied embeddings, non-default rope_theta.
    "dense_tied_gqa4": ("qwen3", dict(num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, head_dim=12,
                                      tie_word_embeddings=True, rope_theta=500_000.0, bos_token_id=0, eos_token_id=0)),
    "dense_untied_gqa2": ("qwen3", dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=6,
                                        tie_word_embeddings=False, rope_theta=10_000.0)),
    # MoE with a dense layer in the middle (mlp_only_layers) and renormalized top-k weights.
    "moe_norm_topk": ("qwen3_moe", dict(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1, head_dim=10,
                                        num_experts=6, num_experts_per_tok=2, moe_intermediate_size=12, norm_topk_prob=True,
                                        mlp_only_layers=[1], tie_word_embeddings=False, rope_theta=1_000_000.0)),
    # Every second layer sparse, raw softmax weights, tied.
    "moe_sparse_step2": ("qwen3_moe", dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                           num_experts=4, num_experts_per_tok=3, moe_intermediate_size=8, norm_topk_prob=False,
                                           decoder_sparse_step=2, tie_word_embeddings=True)),
}


def _hf_model(kind, fields, seed=0):
    torch.manual_seed(seed)
    if kind == "qwen3":
        config = transformers.Qwen3Config(**COMMON, **fields)
        model = transformers.Qwen3ForCausalLM(config)
    else:
        config = transformers.Qwen3MoeConfig(**COMMON, **fields)
        model = transformers.Qwen3MoeForCausalLM(config)
    with torch.no_grad():  # q/k norms and norms start at 1: perturb them so a swapped norm is caught
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def _logits(model, ids):
    """`model(ids)` compiled as one program (eager op-by-op dispatch compiles every op separately)."""
    graphdef, state = nnx.split(model)
    return np.asarray(jax.jit(lambda st, x: nnx.merge(graphdef, st)(x))(state, jnp.asarray(ids)))


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(ids), dtype=torch.long)).logits.numpy()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """case -> (directory, the transformers model); saved once for the module."""
    out = {}
    for name, (kind, fields) in CASES.items():
        path = tmp_path_factory.mktemp(name)
        model = _hf_model(kind, fields)
        model.save_pretrained(path)
        out[name] = (path, model)
    return out


IDS = np.random.default_rng(0).integers(0, VOCAB, size=(2, 11))


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(checkpoints, case):
    path, hf_model = checkpoints[case]
    logits = _logits(from_pretrained(path), IDS)
    assert logits.shape == (2, 11, VOCAB) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, _hf_logits(hf_model, IDS), atol=1e-4, rtol=0)


def test_loaded_config_honours_hf_fields(checkpoints):
    dense = from_pretrained(checkpoints["dense_tied_gqa4"][0]).model.config
    assert (dense.rope_theta, dense.head_dim, dense.num_heads // dense.num_kv_heads, dense.tie_word_embeddings) == (500_000.0, 12, 4, True)
    moe = from_pretrained(checkpoints["moe_norm_topk"][0]).model.config
    assert [moe.is_moe_layer(i) for i in range(3)] == [True, False, True] and moe.norm_topk_prob
    step2 = from_pretrained(checkpoints["moe_sparse_step2"][0]).model.config
    assert [step2.is_moe_layer(i) for i in range(2)] == [False, True]


@pytest.mark.parametrize("case", ["dense_tied_gqa4", "moe_norm_topk"])
def test_export_reload_is_bit_exact_and_transformers_loads_it(checkpoints, case, tmp_path):
    path, _ = checkpoints[case]
    model = from_pretrained(path)
    save_pretrained(model, tmp_path / "export", max_shard_bytes=4096)  # tiny shards: exercises the index
    assert (tmp_path / "export" / "model.safetensors.index.json").is_file()
    again = from_pretrained(tmp_path / "export")
    for a, b in zip(jax.tree.leaves(model.model), jax.tree.leaves(again.model)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    exported = json.loads((tmp_path / "export" / "config.json").read_text())
    if case == "dense_tied_gqa4":  # id 0 is a real token id, kept, not dropped as "unset"
        assert exported["bos_token_id"] == 0 and exported["eos_token_id"] == 0
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32).eval()
    np.testing.assert_allclose(_hf_logits(reloaded, IDS), _logits(model, IDS), atol=1e-4, rtol=0)


def test_bfloat16_load_casts_weights(checkpoints):
    model = from_pretrained(checkpoints["dense_untied_gqa2"][0], dtype="bfloat16")
    assert model.model.embed[...].dtype == jnp.bfloat16
    logits = model(jnp.asarray(IDS[:1, :3]))  # the eager call is the public contract: logits only
    assert logits.shape == (1, 3, VOCAB) and logits.dtype == jnp.float32


def _copy(checkpoints, case, tmp_path):
    target = tmp_path / case
    shutil.copytree(checkpoints[case][0], target)
    return target


def _edit_tensors(path, edit):
    from safetensors.numpy import load_file, save_file
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors")


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_missing_tensor_is_named(checkpoints, tmp_path):
    path = _copy(checkpoints, "moe_norm_topk", tmp_path)
    _edit_tensors(path, lambda t: t.pop("model.layers.2.mlp.experts.5.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors \['model.layers.2.mlp.experts.5.up_proj.weight'\]"):
        from_pretrained(path)


def test_unexpected_tensor_is_named(checkpoints, tmp_path):
    path = _copy(checkpoints, "dense_tied_gqa4", tmp_path)
    _edit_tensors(path, lambda t: t.update({"lm_head.weight": np.zeros((VOCAB, 32), np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensors \['lm_head.weight'\]"):
        from_pretrained(path)


def test_shape_mismatch_is_named(checkpoints, tmp_path):
    path = _copy(checkpoints, "dense_untied_gqa2", tmp_path)
    _edit_tensors(path, lambda t: t.update({"model.layers.1.self_attn.k_proj.weight": np.zeros((13, 32), np.float32)}))
    with pytest.raises(CheckpointError, match=r"model.layers.1.self_attn.k_proj.weight: shape \(13, 32\).*implies \(12, 32\)"):
        from_pretrained(path)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(model_type="llama"), "model_type 'llama' is not supported; rlx loads qwen3, qwen3_moe"),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "'yarn' RoPE scaling"),
        (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}), "'linear' RoPE scaling"),
        (dict(attention_bias=True), "attention_bias = True needs q/k/v/o projection biases"),
        (dict(use_sliding_window=True, sliding_window=16), "use_sliding_window = True needs sliding-window attention"),
        (dict(hidden_act="gelu"), "hidden_act = 'gelu'"),
    ],
)
def test_unsupported_config_fields_are_rejected(checkpoints, tmp_path, changes, message):
    path = _copy(checkpoints, "dense_untied_gqa2", tmp_path)
    _edit_config(path, **changes)
    with pytest.raises(UnsupportedCheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_pretrained(path)


def test_tensor_maps_cover_every_parameter_once(checkpoints):
    model = from_pretrained(checkpoints["moe_norm_topk"][0]).model
    maps = tensor_maps(model.config)
    assert len({m.hf_name for m in maps}) == len(maps)
    covered = {m.path for m in maps}
    params = {path for path, _ in jax.tree_util.tree_flatten_with_path(model)[0]}
    assert len(covered) == len(params)
