"""Resolves `DataConfig` into a tokenizer and train/validation records."""

from __future__ import annotations

import dataclasses
import logging

from rlx.data.arithmetic import ALPHABET, arithmetic_splits, warmup_demonstrations
from rlx.data.config import DataConfig
from rlx.data.jsonl import read_jsonl
from rlx.data.records import PromptRecord
from rlx.data.hf_tokenizer import HFTokenizer
from rlx.data.tokenizer import CharTokenizer

log = logging.getLogger(__name__)

Tokenizer = CharTokenizer | HFTokenizer


@dataclasses.dataclass(frozen=True)
class TaskData:
    tokenizer: Tokenizer
    train: list[PromptRecord]
    val: list[PromptRecord]
    demonstrations: list[PromptRecord]  # what the supervised warm-up imitates
    counts: dict[str, int]  # data/* counters: rows skipped and why


def load_task(config: DataConfig) -> TaskData:
    if config.source == "arithmetic":
        train, val = arithmetic_splits(config.arithmetic, config.train_size, config.val_size, config.seed)
        tokenizer = CharTokenizer(ALPHABET)
        counts = {"data/skipped_bad_rows": 0}
    else:
        train, bad_train = read_jsonl(config.train_path, config.on_bad_row)
        val, bad_val = read_jsonl(config.val_path, config.on_bad_row)
        tokenizer = _jsonl_tokenizer(config, train + val)
        if config.chat_template:
            train, val = _as_chat(train, tokenizer), _as_chat(val, tokenizer)
        counts = {"data/skipped_bad_rows": bad_train + bad_val}
    train, long_train = _drop_long_prompts(train, tokenizer, config.max_prompt_len)
    val, long_val = _drop_long_prompts(val, tokenizer, config.max_prompt_len)
    counts["data/skipped_long_prompts"] = long_train + long_val
    if not train or not val:
        raise ValueError(f"no usable records left (train={len(train)}, val={len(val)}); see the warnings above")
    demonstrations = train
    if config.source == "arithmetic":
        demonstrations = warmup_demonstrations(train, config.arithmetic, config.seed + 1)
    return TaskData(tokenizer, train, val, demonstrations, counts)


def _jsonl_tokenizer(config: DataConfig, records: list[PromptRecord]) -> Tokenizer:
    if config.tokenizer_path is not None:
        return HFTokenizer.from_directory(config.tokenizer_path)
    return CharTokenizer("".join(sorted({ch for record in records for ch in record.prompt + record.answer})))


def _as_chat(records: list[PromptRecord], tokenizer: Tokenizer) -> list[PromptRecord]:
    """Each prompt as one user turn, rendered by the tokenizer's chat template (generation prompt added)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("data.chat_template is true but the tokenizer in data.tokenizer_path has no chat template")
    return [
        dataclasses.replace(record, prompt=tokenizer.apply_chat_template([{"role": "user", "content": record.prompt}]))
        for record in records
    ]


def _drop_long_prompts(records: list[PromptRecord], tokenizer: Tokenizer, max_len: int) -> tuple[list[PromptRecord], int]:
    kept = [r for r in records if len(tokenizer.encode(r.prompt)) <= max_len]
    dropped = len(records) - len(kept)
    if dropped:
        examples = [r.id for r in records if len(tokenizer.encode(r.prompt)) > max_len][:5]
        log.warning(
            "skipping %d prompt(s) longer than data.max_prompt_len=%d tokens (e.g. %s); raise it to keep them",
            dropped, max_len, examples,
        )
    return kept, dropped
