import json

import pytest
from jinja2.exceptions import TemplateError
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from rlx.data.hf_tokenizer import HFTokenizer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
TEMPLATE = (
    "{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _write(path, config, template_file=None):
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["what is 12 plus 30?", "the answer is 42.", "hello world"] * 4, trainer)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    if template_file is not None:
        (path / "chat_template.jinja").write_text(template_file)
    return path


@pytest.fixture(scope="module")
def qwen_like(tmp_path_factory):
    config = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None, "chat_template": TEMPLATE}
    return HFTokenizer.from_directory(_write(tmp_path_factory.mktemp("tok"), config))


def test_interface_matches_char_tokenizer(qwen_like):
    assert (qwen_like.pad_id, qwen_like.eos_id, qwen_like.bos_id) == (0, 2, None)
    ids = qwen_like.encode("what is 12 plus 30?")
    assert qwen_like.decode(ids) == "what is 12 plus 30?"
    assert qwen_like.decode(ids + [qwen_like.eos_id] + qwen_like.encode("junk")) == "what is 12 plus 30?"
    assert qwen_like.decode_batch([ids, ids[:2]])[0] == "what is 12 plus 30?"
    assert qwen_like.vocab_size >= len(SPECIALS) + 256 and max(ids) < qwen_like.vocab_size


def test_chat_template_renders_and_encodes(qwen_like):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is 12 plus 30?"}]
    text = qwen_like.apply_chat_template(messages)
    assert text == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nwhat is 12 plus 30?<|im_end|>\n<|im_start|>assistant\n"
    ids = qwen_like.encode_chat(messages)
    assert ids[0] == 1 and ids.count(qwen_like.eos_id) == 2  # special tokens are single ids
    assert not qwen_like.apply_chat_template(messages, add_generation_prompt=False).endswith("assistant\n")
    with pytest.raises(TemplateError, match="unknown role tool"):
        qwen_like.apply_chat_template([{"role": "tool", "content": "x"}])


def test_special_token_id_zero_is_a_real_id(tmp_path):
    """EOS at id 0 must stop decoding and must not fall back to a default."""
    tokenizer = HFTokenizer.from_directory(_write(tmp_path, {"eos_token": "<|endoftext|>", "bos_token": {"content": "<|im_start|>"}}))
    assert tokenizer.eos_id == 0 and tokenizer.pad_id == 0 and tokenizer.bos_id == 1
    ids = tokenizer.encode("hello world")
    assert ids[0] == 1 and tokenizer.decode(ids + [0] + ids) == "hello world"


def test_template_file_wins_and_errors_are_clear(tmp_path):
    path = _write(tmp_path / "a", {"eos_token": "<|im_end|>"}, template_file="{{ messages[0]['content'] }}!")
    assert HFTokenizer.from_directory(path).apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=False) == "hi!"
    with pytest.raises(ValueError, match="no chat_template"):
        HFTokenizer.from_directory(_write(tmp_path / "b", {"eos_token": "<|im_end|>"})).apply_chat_template([])
    with pytest.raises(ValueError, match="eos_token '<nope>' is not a token"):
        HFTokenizer.from_directory(_write(tmp_path / "c", {"eos_token": "<nope>"}))
    with pytest.raises(ValueError, match="names no eos_token"):
        HFTokenizer.from_directory(_write(tmp_path / "d", {}))
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        HFTokenizer.from_directory(tmp_path / "missing")


def test_jsonl_dataset_with_hf_tokenizer_and_chat_template(tmp_path):
    from rlx.data import DataConfig, load_task

    tok_dir = _write(tmp_path / "tok", {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "chat_template": TEMPLATE})
    for name in ("train", "val"):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({"prompt": "what is 12 plus 30?", "answer": "42"}) + "\n")
    config = DataConfig(source="jsonl", train_path=str(tmp_path / "train.jsonl"), val_path=str(tmp_path / "val.jsonl"),
                        tokenizer_path=str(tok_dir), chat_template=True, max_prompt_len=64)
    task = load_task(config)
    assert isinstance(task.tokenizer, HFTokenizer)
    assert task.train[0].prompt == "<|im_start|>user\nwhat is 12 plus 30?<|im_end|>\n<|im_start|>assistant\n"
    assert task.tokenizer.encode(task.train[0].prompt)[0] == 1  # <|im_start|> is one special token


def test_chat_template_needs_a_tokenizer_and_a_template(tmp_path):
    from rlx.data import DataConfig, load_task

    with pytest.raises(ValueError, match="chat_template: true needs a Hugging Face tokenizer: data.tokenizer_path, or model.init_from"):
        DataConfig(source="jsonl", train_path="a", val_path="b", chat_template=True)
    tok_dir = _write(tmp_path / "tok", {"eos_token": "<|im_end|>"})
    (tmp_path / "d.jsonl").write_text(json.dumps({"prompt": "hello world", "answer": "x"}) + "\n")
    config = DataConfig(source="jsonl", train_path=str(tmp_path / "d.jsonl"), val_path=str(tmp_path / "d.jsonl"),
                        tokenizer_path=str(tok_dir), chat_template=True, max_prompt_len=64)
    with pytest.raises(ValueError, match="has no chat template"):
        load_task(config)
