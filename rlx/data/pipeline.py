"""grain pipelines that turn prompt records into left-padded token batches."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import numpy as np

from rlx.data.records import PromptRecord
from rlx.data.tokenizer import CharTokenizer


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """Prompts left-padded to a common width: row b's tokens occupy columns start[b]:."""

    records: list[PromptRecord]
    tokens: np.ndarray  # [B, P] int32
    start: np.ndarray  # [B] int32


def encode_prompts(records: Sequence[PromptRecord], tokenizer: CharTokenizer, width: int) -> PromptBatch:
    rows = [_encode_one(record, i, tokenizer, width) for i, record in enumerate(records)]
    return PromptBatch(list(records), np.stack([r["tokens"] for r in rows]), np.array([r["start"] for r in rows], np.int32))


def _encode_one(record: PromptRecord, index: int, tokenizer: CharTokenizer, width: int) -> dict[str, np.ndarray]:
    ids = tokenizer.encode(record.prompt)
    if len(ids) > width:
        raise ValueError(f"record {record.id!r}: prompt has {len(ids)} tokens, more than the width {width}")
    tokens = np.full((width,), tokenizer.pad_id, np.int32)
    tokens[width - len(ids):] = ids
    return {"tokens": tokens, "start": np.int32(width - len(ids)), "index": np.int64(index)}


class PromptStream:
    """An endless, per-epoch reshuffled stream of prompt batches whose position is checkpointable.

    Each epoch visits every record once, so no prompt repeats before all were used.
    """

    def __init__(self, records: Sequence[PromptRecord], tokenizer: CharTokenizer, batch_size: int, width: int, seed: int):
        if batch_size > len(records):
            raise ValueError(f"batch of {batch_size} prompts but only {len(records)} records")
        self._records = list(records)
        dataset = (
            grain.MapDataset.range(len(records))
            .shuffle(seed=seed)
            .repeat()
            .map(lambda index: _encode_one(self._records[index], index, tokenizer, width))
            .batch(batch_size)
        )
        self._iterator = iter(dataset.to_iter_dataset())

    def __iter__(self) -> "PromptStream":
        return self

    def __next__(self) -> PromptBatch:
        batch = next(self._iterator)
        records = [self._records[int(i)] for i in batch["index"]]
        return PromptBatch(records, batch["tokens"], batch["start"])

    def get_state(self) -> dict[str, Any]:
        return self._iterator.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._iterator.set_state(state)
