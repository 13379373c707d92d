"""Resolves `DataConfig` into a tokenizer and train/validation records."""

from __future__ import annotations

import dataclasses
import functools
import logging

from rlx.data.arithmetic import ALPHABET, CALCULATOR_ALPHABET, arithmetic_splits, warmup_demonstrations
from rlx.data.config import DataConfig
from rlx.data.jsonl import read_jsonl
from rlx.data.media import READERS, MediaReadError, MediaSpec, read_image, read_video
from rlx.data.omni import ALPHABET as OMNI_ALPHABET, flawed_demonstrations, omni_splits
from rlx.data.placeholders import PLACEHOLDER, prompt_ids
from rlx.data.records import PromptRecord
from rlx.data.hf_tokenizer import HFTokenizer
from rlx.data.tokenizer import CharTokenizer
from rlx.errors import UserError

log = logging.getLogger(__name__)

Tokenizer = CharTokenizer | HFTokenizer


@dataclasses.dataclass(frozen=True)
class TaskData:
    tokenizer: Tokenizer
    train: list[PromptRecord]
    val: list[PromptRecord]
    demonstrations: list[PromptRecord]  # what the supervised warm-up imitates (for multi-turn runs, see env.demonstrations)
    counts: dict[str, int]  # data/* counters: rows skipped and why


def load_task(config: DataConfig, media: MediaSpec | None = None) -> TaskData:
    """`media` describes the model's encoders (None for a text-only model)."""
    counts = {"data/skipped_bad_rows": 0}
    if config.source == "arithmetic":
        train, val = arithmetic_splits(config.arithmetic, config.train_size, config.val_size, config.seed)
        tokenizer = CharTokenizer(ALPHABET)
    elif config.source == "calculator":
        train, val = arithmetic_splits(config.arithmetic, config.train_size, config.val_size, config.seed, symbol="*")
        tokenizer = CharTokenizer(CALCULATOR_ALPHABET)
    elif config.source == "omni":
        if media is None:
            raise UserError("data.source: omni needs modality encoders; set model.vision.enabled and model.audio.enabled")
        train, val = omni_splits(config.omni, media, config.train_size, config.val_size, config.seed)
        tokenizer = CharTokenizer(OMNI_ALPHABET)
    else:
        train, bad_train = read_jsonl(config.train_path, config.on_bad_row)
        val, bad_val = read_jsonl(config.val_path, config.on_bad_row)
        tokenizer = _jsonl_tokenizer(config, train + val)
        if config.chat_template:
            train, val = _as_chat(train, tokenizer), _as_chat(val, tokenizer)
        (train, bad_train_media), (val, bad_val_media) = (_drop_unreadable_media(split, config.max_image_pixels) for split in (train, val))
        counts = {"data/skipped_bad_rows": bad_train + bad_val, "data/skipped_media": bad_train_media + bad_val_media}
    train, long_train = _drop_long_prompts(train, tokenizer, config.max_prompt_len, media)
    val, long_val = _drop_long_prompts(val, tokenizer, config.max_prompt_len, media)
    counts["data/skipped_long_prompts"] = long_train + long_val
    if not train or not val:
        skipped = ", ".join(f"{name.removeprefix('data/skipped_')}: {count}" for name, count in counts.items())
        raise UserError(f"no usable records left (train={len(train)}, val={len(val)}); rows skipped by cause: {skipped}; "
                        "the warnings above name each file and line")
    demonstrations = train
    if config.source == "arithmetic":
        demonstrations = warmup_demonstrations(train, config.arithmetic, config.seed + 1)
    elif config.source == "omni":
        demonstrations = flawed_demonstrations(train, config.omni.warmup_flaw_rate, config.seed + 1)
    return TaskData(tokenizer, train, val, demonstrations, counts)


def _drop_unreadable_media(records: list[PromptRecord], max_pixels: int) -> tuple[list[PromptRecord], int]:
    """Reads every referenced media file once; records with an unreadable, empty, inconsistent or too large one
    are skipped (path logged), so grain's workers never meet them.

    An unsupported format is not skipped: it raises, listing the supported formats.
    """
    readers = {**READERS, "image": functools.partial(read_image, max_pixels=max_pixels),
               "video": functools.partial(read_video, max_pixels=max_pixels)}
    kept = []
    for record in records:
        try:
            for name, items in record.media.items():
                for item in items:
                    readers[name](item)
            kept.append(record)
        except MediaReadError as err:
            log.warning("skipping record %r: %s", record.id, err)
    return kept, len(records) - len(kept)


def _jsonl_tokenizer(config: DataConfig, records: list[PromptRecord]) -> Tokenizer:
    if config.tokenizer_path is not None:
        return HFTokenizer.from_directory(config.tokenizer_path)
    text = (PLACEHOLDER.sub("", record.prompt) + record.answer for record in records)
    return CharTokenizer("".join(sorted({ch for chunk in text for ch in chunk})))


def _as_chat(records: list[PromptRecord], tokenizer: Tokenizer) -> list[PromptRecord]:
    """Each prompt as one user turn, rendered by the tokenizer's chat template (generation prompt added)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise UserError("data.chat_template is true but the tokenizer in data.tokenizer_path has no chat template")
    return [
        dataclasses.replace(record, prompt=tokenizer.apply_chat_template([{"role": "user", "content": record.prompt}]))
        for record in records
    ]


def _drop_long_prompts(records: list[PromptRecord], tokenizer: Tokenizer, max_len: int, media: MediaSpec | None) -> tuple[list[PromptRecord], int]:
    fits = [len(prompt_ids(r, tokenizer, media)) <= max_len for r in records]
    kept = [r for r, ok in zip(records, fits) if ok]
    dropped = len(records) - len(kept)
    if dropped:
        examples = [r.id for r, ok in zip(records, fits) if not ok][:5]
        log.warning(
            "skipping %d prompt(s) longer than data.max_prompt_len=%d tokens (e.g. %s); raise it to keep them",
            dropped, max_len, examples,
        )
    return kept, dropped
