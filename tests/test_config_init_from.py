"""`model.init_from`: the architecture comes from the checkpoint's config.json, resolved at config load."""

import json
from pathlib import Path

import pytest

from rlx.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]

DENSE = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "vocab_size": 300, "hidden_size": 48, "intermediate_size": 96,
         "num_hidden_layers": 3, "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 8, "rope_theta": 1000000,
         "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "max_position_embeddings": 128, "dtype": "bfloat16"}
MOE = {**DENSE, "model_type": "qwen3_moe", "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
       "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [0]}


def _checkpoint(path, config):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


def _jsonl(tmp_path):
    for name in ("train", "val"):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({"prompt": "1+1", "answer": "2"}) + "\n")
    return [f"data.train_path={tmp_path / 'train.jsonl'}", f"data.val_path={tmp_path / 'val.jsonl'}", "data.source=jsonl"]


def test_architecture_fields_come_from_the_checkpoint(tmp_path):
    ckpt = _checkpoint(tmp_path / "ckpt", DENSE)
    model = load_config(None, [f"model.init_from={ckpt}"]).model
    assert (model.vocab_size, model.hidden_size, model.intermediate_size, model.num_layers) == (300, 48, 96, 3)
    assert (model.num_heads, model.num_kv_heads, model.head_dim, model.rope_theta) == (6, 2, 8, 1e6)
    assert model.tie_word_embeddings is False and model.max_seq_len == 128 and model.num_experts == 0
    assert model.dtype == model.param_dtype == "float32"  # precision stays the run's choice, not the checkpoint's bfloat16
    assert model.init_from == str(ckpt)


def test_moe_architecture_and_the_teacher_resolve_too(tmp_path):
    ckpt = _checkpoint(tmp_path / "moe", MOE)
    config = load_config(None, [f"model.init_from={ckpt}", f"distill.teacher.init_from={ckpt}"])
    for model in (config.model, config.distill.teacher):
        assert (model.num_experts, model.num_experts_per_tok, model.moe_intermediate_size, model.mlp_only_layers) == (8, 2, 16, (0,))
        assert model.norm_topk_prob and [model.is_moe_layer(i) for i in range(3)] == [False, True, True]


def test_an_explicit_field_must_agree_with_the_checkpoint(tmp_path):
    ckpt = _checkpoint(tmp_path / "ckpt", DENSE)
    same = load_config(None, [f"model.init_from={ckpt}", "model.hidden_size=48", "model.rope_theta=1000000", "model.dtype=bfloat16"])
    assert same.model.hidden_size == 48 and same.model.dtype == "bfloat16"
    with pytest.raises(ConfigError, match=rf"model.hidden_size = 64 but {ckpt}/config.json gives 48; .*remove model.hidden_size"):
        load_config(None, [f"model.init_from={ckpt}", "model.hidden_size=64"])
    with pytest.raises(ConfigError, match=r"model.tie_word_embeddings = True but .* gives False"):
        load_config(None, [f"model.init_from={ckpt}", "model.tie_word_embeddings=true"])
    with pytest.raises(ConfigError, match=r"model.num_experts = 4 but .* gives 0"):
        load_config(None, [f"model.init_from={ckpt}", "model.num_experts=4"])


def test_the_tokenizer_defaults_to_the_checkpoints(tmp_path):
    ckpt = _checkpoint(tmp_path / "ckpt", DENSE)
    data = load_config(None, [f"model.init_from={ckpt}", *_jsonl(tmp_path), "data.chat_template=true"]).data
    assert data.tokenizer_path == str(ckpt) and data.chat_template
    other = load_config(None, [f"model.init_from={ckpt}", *_jsonl(tmp_path), "data.tokenizer_path=elsewhere"]).data
    assert other.tokenizer_path == "elsewhere"
    assert load_config(None, [f"model.init_from={ckpt}"]).data.tokenizer_path is None  # arithmetic: its own tokenizer


def test_bad_checkpoints_and_combinations_are_explained(tmp_path):
    with pytest.raises(ConfigError, match=rf"model.init_from: {tmp_path / 'nope'}: no config.json"):
        load_config(None, [f"model.init_from={tmp_path / 'nope'}"])
    llama = _checkpoint(tmp_path / "llama", {**DENSE, "model_type": "llama"})
    with pytest.raises(ConfigError, match="model_type 'llama' is not supported"):
        load_config(None, [f"model.init_from={llama}"])
    ckpt = _checkpoint(tmp_path / "ckpt", DENSE)
    with pytest.raises(ConfigError, match="text-only Qwen3 checkpoints"):
        load_config(None, [f"model.init_from={ckpt}", "model.vision.enabled=true", "rollout.backend=engine"])
    with pytest.raises(ConfigError, match="text-only Qwen3 checkpoints"):
        load_config(None, ["run.export_hf=true", "model.audio.enabled=true"])
    with pytest.raises(ConfigError, match="chat_template: true needs a Hugging Face tokenizer"):
        load_config(None, [*_jsonl(tmp_path), "data.chat_template=true"])


QWEN3_1_7B = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "vocab_size": 151936, "hidden_size": 2048,
              "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
              "rope_theta": 1000000, "rms_norm_eps": 1e-06, "tie_word_embeddings": True, "max_position_embeddings": 40960,
              "hidden_act": "silu", "attention_bias": False, "use_sliding_window": False, "torch_dtype": "bfloat16"}


def test_the_math_recipe_resolves_against_a_qwen3_directory(tmp_path):
    from tests.data.test_hf_tokenizer import TEMPLATE, _write

    from rlx.data import load_task

    text = (REPO / "configs" / "qwen3_math.yaml").read_text()
    assert "python -m rlx.launch --config configs/qwen3_math.yaml" in text.splitlines()[1]
    ckpt = _checkpoint(tmp_path / "Qwen3-1.7B", QWEN3_1_7B)
    _write(ckpt, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "chat_template": TEMPLATE})
    config = load_config(REPO / "configs" / "qwen3_math.yaml", [f"model.init_from={ckpt}",
                         f"data.train_path={REPO / 'configs/data/math/train.jsonl'}", f"data.val_path={REPO / 'configs/data/math/val.jsonl'}"])
    assert (config.model.hidden_size, config.model.num_layers, config.model.tie_word_embeddings) == (2048, 28, True)
    assert (config.model.dtype, config.model.param_dtype, config.reward.fn, config.run.export_hf) == ("bfloat16", "float32", "math_verify", True)
    assert config.data.tokenizer_path == str(ckpt) and config.warmup.sft_steps == 0
    task = load_task(config.data)
    assert (len(task.train), len(task.val), task.counts["data/skipped_bad_rows"]) == (24, 8, 0)
    assert task.train[0].prompt.startswith("<|im_start|>user\n") and "\\boxed{number}" in task.train[0].prompt
