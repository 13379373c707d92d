import json

import numpy as np
import pytest

from rlx.data import CharTokenizer, DataConfig, PromptRecord, PromptStream, encode_prompts, load_task
from rlx.data.arithmetic import add_without_carry, arithmetic_splits, warmup_demonstrations
from rlx.data.config import ArithmeticConfig
from rlx.data.jsonl import BadRowError, read_jsonl


def test_tokenizer_round_trip_and_explicit_special_ids():
    tokenizer = CharTokenizer("0123456789+=")
    ids = tokenizer.encode("12+3=")
    assert ids[0] == tokenizer.bos_id == 1 and tokenizer.pad_id == 0 and tokenizer.eos_id == 2
    assert tokenizer.decode(ids) == "12+3="
    assert tokenizer.decode([*tokenizer.encode("42", bos=False), tokenizer.eos_id, *tokenizer.encode("9", bos=False)]) == "42"
    with pytest.raises(ValueError, match="'x' in 'x1' is not in the tokenizer alphabet"):
        tokenizer.encode("x1")
    with pytest.raises(ValueError, match="repeated"):
        CharTokenizer("aa")


def test_arithmetic_splits_are_disjoint_and_correct():
    train, val = arithmetic_splits(ArithmeticConfig(1, 2), 500, 100, seed=0)
    assert len(train) == 500 and len(val) == 100
    assert not {r.prompt for r in train} & {r.prompt for r in val}
    for record in train[:50]:
        a, b = record.prompt.rstrip("=").split("+")
        assert int(record.answer) == int(a) + int(b)
    again, _ = arithmetic_splits(ArithmeticConfig(1, 2), 500, 100, seed=0)
    assert again == train


def test_arithmetic_refuses_impossible_sizes():
    with pytest.raises(ValueError, match="cannot draw"):
        arithmetic_splits(ArithmeticConfig(1, 1), 200, 10, seed=0)


def test_add_without_carry():
    assert add_without_carry(157, 291) == 348
    assert add_without_carry(9, 1) == 0
    assert add_without_carry(12, 34) == 46


@pytest.mark.parametrize("flaw, flawed_answer", [("no_carry", "15"), ("reversed", "521")])
def test_warmup_demonstrations_carry_the_flaw_at_the_configured_rate(flaw, flawed_answer):
    records = [PromptRecord(id=str(i), prompt="58+67=", answer="125") for i in range(2000)]
    demos = warmup_demonstrations(records, ArithmeticConfig(warmup_flaw=flaw, warmup_flaw_rate=0.7), seed=0)
    flawed = np.mean([d.answer == flawed_answer for d in demos])
    assert 0.66 < flawed < 0.74
    assert all(d.answer in (flawed_answer, "125") for d in demos)
    assert warmup_demonstrations(records, ArithmeticConfig(), seed=0) == records


def test_ramble_demonstrations_repeat_the_answer_for_a_long_tailed_length():
    records = [PromptRecord(id=str(i), prompt="58+67=", answer="125") for i in range(2000)]
    demos = warmup_demonstrations(records, ArithmeticConfig(warmup_flaw="ramble", warmup_flaw_rate=0.5), seed=0)
    rambling = [d.answer for d in demos if d.answer != "125"]
    assert 0.46 < len(rambling) / len(demos) < 0.54
    assert all(a.startswith("125") and a == ("125" * len(a))[: len(a)] for a in rambling)
    extra = np.array([len(a) - 3 for a in rambling])
    assert 6 <= np.median(extra) <= 10  # lognormal, median 8
    assert np.percentile(extra, 90) > 3 * np.median(extra)  # the long tail
    longer = warmup_demonstrations(records, ArithmeticConfig(warmup_flaw="ramble", warmup_flaw_rate=1.0, ramble_median_chars=32), seed=0)
    assert 28 <= np.median([len(d.answer) - 3 for d in longer]) <= 36  # median ramble_median_chars


@pytest.mark.parametrize("fields", [dict(warmup_flaw="no_carry"), dict(warmup_flaw_rate=0.5), dict(warmup_flaw="reversed", warmup_flaw_rate=1.5)])
def test_warmup_flaw_needs_both_knobs(fields):
    with pytest.raises(ValueError, match="warmup_flaw"):
        ArithmeticConfig(**fields)


def test_prompts_are_left_padded():
    tokenizer = CharTokenizer("0123456789+=")
    batch = encode_prompts([PromptRecord("a", "1+2=", "3"), PromptRecord("b", "10+20=", "30")], tokenizer, 8)
    assert batch.tokens.shape == (2, 8)
    assert list(batch.start) == [3, 1]
    assert tokenizer.decode(batch.tokens[0, 3:]) == "1+2=" and (batch.tokens[0, :3] == 0).all()


def test_stream_visits_each_record_once_per_epoch_and_resumes():
    tokenizer = CharTokenizer("0123456789+=")
    records = [PromptRecord(str(i), f"{i}+1=", str(i + 1)) for i in range(12)]
    stream = PromptStream(records, tokenizer, batch_size=4, width=8, seed=3)
    epoch = [r.id for _ in range(3) for r in next(stream).records]
    assert sorted(epoch, key=int) == [str(i) for i in range(12)]
    state = stream.get_state()
    expected = [r.id for r in next(stream).records]
    resumed = PromptStream(records, tokenizer, batch_size=4, width=8, seed=3)
    resumed.set_state(state)
    assert [r.id for r in next(resumed).records] == expected


def write_jsonl(path, rows):
    path.write_text("\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n")


def test_jsonl_skips_and_counts_malformed_rows(tmp_path, caplog):
    path = tmp_path / "train.jsonl"
    write_jsonl(path, [{"prompt": "1+1=", "answer": 2}, "{not json", {"prompt": "2+2="}, ["a"], {"prompt": "", "answer": "0"}, {"id": "x", "prompt": "3+3=", "answer": "6"}])
    records, skipped = read_jsonl(path)
    assert [r.id for r in records] == ["train-1", "x"] and records[0].answer == "2"
    assert skipped == 4
    assert "train.jsonl:2" in caplog.text and "missing field(s) ['answer']" in caplog.text


def test_jsonl_error_mode_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    write_jsonl(path, [{"prompt": "1+1=", "answer": "2"}, "{oops"])
    with pytest.raises(BadRowError, match=r"train.jsonl:2: not valid JSON"):
        read_jsonl(path, on_bad_row="error")


def test_jsonl_task_builds_tokenizer_and_drops_long_prompts(tmp_path, caplog):
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    write_jsonl(train, [{"prompt": "ab", "answer": "c"}, {"prompt": "a" * 40, "answer": "b"}, "bad"])
    write_jsonl(val, [{"prompt": "ba", "answer": "cc"}])
    task = load_task(DataConfig(source="jsonl", train_path=str(train), val_path=str(val), max_prompt_len=8))
    assert [r.prompt for r in task.train] == ["ab"] and task.tokenizer.alphabet == "abc"
    assert task.counts == {"data/skipped_bad_rows": 1, "data/skipped_media": 0, "data/skipped_long_prompts": 1}
    assert "longer than data.max_prompt_len=8" in caplog.text


def test_records_reject_wrong_types_and_unknown_modalities():
    with pytest.raises(TypeError, match="answer must be a string"):
        PromptRecord("a", "1+1=", 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown modalities"):
        PromptRecord("a", "x", "y", media={"smell": ()})
    record = PromptRecord("a", "<image>x", "y", media={"image": (np.zeros((2, 2, 3)),)})
    assert record.media["image"][0].shape == (2, 2, 3)
