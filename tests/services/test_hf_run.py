"""An RL run started from a checkpoint `transformers` wrote (`model.init_from`), exported with
`run.export_hf`, loads back in `transformers` with the logits rlx computes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from rlx.config import load_config  # noqa: E402
from rlx.export import main as export_main  # noqa: E402
from rlx.models import init_params  # noqa: E402
from rlx.models.hf import INDEX_FILE  # noqa: E402
from rlx.parallel import expand_shardings, role_meshes, rules_for, tree_shardings  # noqa: E402
from rlx.services import train  # noqa: E402
from rlx.services.hf_export import export_policy, restore_policy  # noqa: E402
from rlx.services.trainer import Trainer  # noqa: E402
from rlx.services.tracking import read_metrics  # noqa: E402
from tests.conftest import tiny_overrides  # noqa: E402

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QUESTIONS = [(f"what is {a} plus {b}?", str(a + b)) for a in range(1, 7) for b in range(2, 6)]


def varied_reward(response, record):
    """Rewards that differ within a group, so GRPO has non-zero advantages and the weights move."""
    return float(len(response) % 2)


def _tokenizer(path):
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([q for q, _ in QUESTIONS] * 3 + ["user assistant"] * 3, trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(path)
    return tokenizer


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    """A tiny Qwen3 with a chat tokenizer, written by transformers (vocabulary padded past the tokenizer's, as Qwen3's is)."""
    path = tmp_path_factory.mktemp("qwen3_tiny")
    tokenizer = _tokenizer(path)
    torch.manual_seed(0)
    config = transformers.Qwen3Config(
        vocab_size=-(-len(tokenizer) // 8) * 8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, rope_theta=1_000_000.0, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    transformers.Qwen3ForCausalLM(config).save_pretrained(path)
    return path, tokenizer


def _overrides(tmp_path, checkpoint, output_dir):
    for name, rows in (("train", QUESTIONS[:16]), ("val", QUESTIONS[16:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": q, "answer": a}) + "\n" for q, a in rows))
    return [
        f"model.init_from={checkpoint}", "data.source=jsonl", f"data.train_path={tmp_path / 'train.jsonl'}",
        f"data.val_path={tmp_path / 'val.jsonl'}", "data.chat_template=true", "data.prompts_per_step=4", "data.max_prompt_len=24",
        "rollout.n_samples=2", "rollout.max_new_tokens=6", "reward.fn=tests.services.test_hf_run:varied_reward",
        f"run.output_dir={output_dir}", "run.steps=2", "run.eval_every=2", "run.checkpoint_every=2", "run.keep_checkpoints=3",
        "run.progress=false", "run.export_hf=true", "optimizer.learning_rate=0.01",
    ]


@pytest.fixture(scope="module")
def finished_run(hf_checkpoint, tmp_path_factory):
    checkpoint, _ = hf_checkpoint
    tmp_path = tmp_path_factory.mktemp("hf_run")
    config = load_config(None, _overrides(tmp_path, checkpoint, tmp_path / "run"))
    train(config)
    return config, tmp_path / "run"


def _tensors(path):
    tensors = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def test_the_run_starts_from_the_checkpoint_without_a_warm_up(hf_checkpoint, finished_run, tmp_path):
    """Checkpoint 0 (before any update; no warm-up configured) exports to exactly the tensors transformers wrote."""
    checkpoint, _ = hf_checkpoint
    config, run = finished_run
    assert config.model.hidden_size == 32 and config.model.tie_word_embeddings is False  # from config.json, not rlx defaults
    rows = read_metrics(run / "metrics.jsonl")
    assert [row["step"] for row in rows] == [0, 1, 2] and not any("warmup/sft_loss_last" in row for row in rows)
    assert export_main(["--run", str(run), "--step", "0"]) == 0
    original, exported = _tensors(checkpoint), _tensors(run / "hf_step_0")
    assert original.keys() == exported.keys()
    for name, tensor in original.items():
        np.testing.assert_array_equal(exported[name], tensor, err_msg=name)


def test_the_export_loads_in_transformers_with_rlx_logits(hf_checkpoint, finished_run):
    checkpoint, tokenizer = hf_checkpoint
    config, run = finished_run
    export = run / "hf"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= {p.name for p in export.iterdir()}
    assert not (export / INDEX_FILE).exists()
    moved = [name for name, t in _tensors(checkpoint).items() if not np.array_equal(_tensors(export)[name], t)]
    assert moved, "the export holds the initial weights, not the trained policy"
    policy = restore_policy(config, run, 2)  # the final policy as rlx holds it
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "what is 2 plus 3?"}], add_generation_prompt=True, tokenize=False)
    ids = np.asarray([tokenizer(prompt, add_special_tokens=False).input_ids])
    graphdef, state = nnx.split(policy)
    rlx_logits = np.asarray(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)[0])(state, jnp.asarray(ids)))
    hf = transformers.AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    with torch.no_grad():
        hf_logits = hf(torch.as_tensor(ids)).logits.numpy()
    np.testing.assert_allclose(hf_logits, rlx_logits, atol=1e-4, rtol=0)
    reloaded = transformers.AutoTokenizer.from_pretrained(export)
    assert reloaded("what is 2 plus 3?").input_ids == tokenizer("what is 2 plus 3?").input_ids
    assert reloaded.eos_token == "<|im_end|>" and reloaded.chat_template == TEMPLATE
    assert json.loads((export / "config.json").read_text())["eos_token_id"] == tokenizer.eos_token_id


def test_export_of_the_latest_checkpoint_equals_the_runs_own(finished_run, tmp_path, capsys):
    _, run = finished_run
    assert export_main(["--run", str(run), "--out", str(tmp_path / "latest")]) == 0
    latest, final = _tensors(tmp_path / "latest"), _tensors(run / "hf")
    assert latest.keys() == final.keys() and all(np.array_equal(latest[k], final[k]) for k in final)
    assert export_main(["--run", str(run), "--step", "1"]) == 2
    assert "no checkpoint of step 1; saved steps: [0, 2]" in capsys.readouterr().err


def test_trainer_loads_the_checkpoint_onto_the_learner_shardings(hf_checkpoint, tmp_path):
    checkpoint, _ = hf_checkpoint
    overrides = _overrides(tmp_path, checkpoint, tmp_path / "run") + [
        "parallel.learner={fsdp: 2, tensor: 2}", "parallel.generator={data: 2, tensor: 2}", "parallel.learner_rules=fsdp_tp"]
    config = load_config(None, overrides)
    trainer = Trainer(config)
    try:
        params = trainer.learner.params
        learner_mesh, _ = role_meshes(config.parallel)
        expected = jax.tree.leaves(expand_shardings(tree_shardings(params, learner_mesh, rules_for("fsdp_tp")), params))
        arrays = jax.tree.leaves(params)
        assert [a.sharding for a in arrays] == expected
        split = [a for a in arrays if max(s.data.size for s in a.addressable_shards) < a.size]
        assert len(split) == len([a for a in arrays if not a.sharding.is_fully_replicated]) >= 10
    finally:
        trainer.close()


def test_a_character_tokenizer_run_exports_weights_and_config_only(tmp_path, caplog):
    config = load_config(None, tiny_overrides(tmp_path / "run") + ["model.vocab_size=16"])
    model = nnx.merge(*init_params(config.model, lambda abstract: jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]),
                                                                                abstract, is_leaf=lambda x: isinstance(x, nnx.Variable)), 0))
    export_policy(config, model, tmp_path / "hf")
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {"config.json", "model.safetensors"}
    assert "character tokenizer" in caplog.text
    ids = np.arange(12).reshape(2, 6)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        hf_logits = hf(torch.as_tensor(ids)).logits.numpy()
    np.testing.assert_allclose(hf_logits, np.asarray(model(jnp.asarray(ids))[0]), atol=1e-4, rtol=0)
