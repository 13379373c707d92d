"""Placeholder expansion: `<image>`, `<audio>`, `<video>` in a prompt become as many placeholder
tokens as the modality's encoder emits, and the record's media become fixed-shape encoder inputs.

Each placeholder takes the next media item of its modality, in order of appearance; rlx's
encoders take one item per modality per prompt (fixed shapes, so nothing recompiles).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from rlx.data.media import MediaSpec, preprocess
from rlx.data.records import MODALITIES, PromptRecord

PLACEHOLDER = re.compile(r"<(image|audio|video)>")


def placeholder_counts(prompt: str) -> dict[str, int]:
    counts = {name: 0 for name in MODALITIES}
    for match in PLACEHOLDER.finditer(prompt):
        counts[match.group(1)] += 1
    return counts


def check_media(record: PromptRecord, spec: MediaSpec) -> None:
    """Raises ValueError naming the record when placeholders and media items do not pair up."""
    for name, count in placeholder_counts(record.prompt).items():
        items = len(record.media.get(name, ()))
        if count != items:
            raise ValueError(
                f"record {record.id!r}: the prompt has {count} <{name}> placeholder(s) but the record carries {items} "
                f"{name} item(s); each placeholder needs exactly one item"
            )
        if count and name not in spec.modalities:
            enable = "model.audio.enabled" if name == "audio" else "model.vision.enabled"
            raise ValueError(f"record {record.id!r} has {name} input but the model has no {name} encoder; set {enable}: true")
        if count > 1:
            raise ValueError(f"record {record.id!r}: {count} <{name}> placeholders; rlx encodes at most one {name} per prompt")


def prompt_ids(record: PromptRecord, tokenizer: Any, spec: MediaSpec | None) -> list[int]:
    """Token ids of the prompt (BOS first), each placeholder expanded to its encoder's token count."""
    if spec is None and not record.media and not PLACEHOLDER.search(record.prompt):
        return tokenizer.encode(record.prompt)
    spec = spec or MediaSpec()  # no encoders: any media makes check_media raise
    check_media(record, spec)
    ids = tokenizer.encode("", bos=True)
    position = 0
    for match in PLACEHOLDER.finditer(record.prompt):
        ids += tokenizer.encode(record.prompt[position:match.start()], bos=False)
        ids += [tokenizer.placeholder_ids[match.group(1)]] * spec.token_count(match.group(1))
        position = match.end()
    return ids + tokenizer.encode(record.prompt[position:], bos=False)


def media_inputs(record: PromptRecord, spec: MediaSpec) -> dict[str, np.ndarray]:
    """The encoder input of every modality the model has: the record's item, or zeros."""
    return {
        name: preprocess(name, record.media[name][0], spec) if record.media.get(name) else spec.empty(name)
        for name in spec.modalities
    }


def record_modality(record: PromptRecord) -> str:
    """The modality a record is about (its first media kind), or `text`."""
    return next((name for name in MODALITIES if record.media.get(name)), "text")
