"""grain pipelines that turn prompt records into left-padded token batches (and encoder inputs).

With a `MediaSpec`, each record's media are read and preprocessed inside the grain map;
`workers > 0` runs that map in worker processes that prefetch ahead of the consumer, so
media preprocessing overlaps generation and learning.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import numpy as np
from absl import flags

from rlx.data.media import MediaSpec
from rlx.data.placeholders import media_inputs, prompt_ids
from rlx.data.records import PromptRecord
from rlx.data.tokenizer import CharTokenizer


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """Prompts left-padded to a common width: row b's tokens occupy columns start[b]:."""

    records: list[PromptRecord]
    tokens: np.ndarray  # [B, P] int32
    start: np.ndarray  # [B] int32
    media: dict[str, np.ndarray] | None = None  # encoder inputs by modality, [B, ...] each (see rlx.models.multimodal.Media)

    def row_media(self, row: int) -> dict[str, np.ndarray] | None:
        """One prompt's encoder inputs, unbatched, or None for text."""
        return None if self.media is None else {name: array[row] for name, array in self.media.items()}

    def take(self, rows: Sequence[int]) -> dict[str, np.ndarray] | None:
        """The media of `rows` (e.g. each prompt repeated once per sample), or None for text."""
        return None if self.media is None else {name: array[np.asarray(rows)] for name, array in self.media.items()}


def encode_prompts(records: Sequence[PromptRecord], tokenizer: CharTokenizer, width: int, media: MediaSpec | None = None) -> PromptBatch:
    encode = _EncodeRecord(records, tokenizer, width, media)
    rows = [encode(i) for i in range(len(records))]
    stacked = {name: np.stack([row["media"][name] for row in rows]) for name in media.modalities} if media else None
    return PromptBatch(list(records), np.stack([r["tokens"] for r in rows]), np.array([r["start"] for r in rows], np.int32), stacked)


class _EncodeRecord:
    """Record index -> left-padded tokens (+ preprocessed media). A class so worker processes can pickle it."""

    def __init__(self, records: Sequence[PromptRecord], tokenizer: CharTokenizer, width: int, media: MediaSpec | None):
        self.records, self.tokenizer, self.width, self.media = records, tokenizer, width, media

    def __call__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        ids = prompt_ids(record, self.tokenizer, self.media)
        if len(ids) > self.width:
            raise ValueError(f"record {record.id!r}: prompt has {len(ids)} tokens, more than the width {self.width}")
        tokens = np.full((self.width,), self.tokenizer.pad_id, np.int32)
        tokens[self.width - len(ids):] = ids
        row = {"tokens": tokens, "start": np.int32(self.width - len(ids)), "index": np.int64(index)}
        if self.media is not None:
            row["media"] = media_inputs(record, self.media)
        return row


class _ShardPosition:
    """Position j of a shard's stream -> the record index at its place in the one-shard stream `order`."""

    def __init__(self, order: grain.MapDataset, batch_size: int, local: int, offset: int):
        self.order, self.batch_size, self.local, self.offset = order, batch_size, local, offset

    def __call__(self, position: int) -> int:
        batch, within = divmod(position, self.local)
        return self.order[batch * self.batch_size + self.offset + within]


class PromptStream:
    """An endless, per-epoch reshuffled stream of prompt batches whose position is checkpointable.

    Each epoch visits every record once, so no prompt repeats before all were used. With
    `shards > 1` (one per process of a multi-process run) this stream yields block `shard` of
    each batch of the one-shard stream (`batch_size / shards` prompts): the shards together
    draw exactly the same prompts as one stream, and all sit at the same position.
    """

    def __init__(self, records: Sequence[PromptRecord], tokenizer: CharTokenizer, batch_size: int, width: int, seed: int,
                 media: MediaSpec | None = None, workers: int = 0, shard: int = 0, shards: int = 1):
        if batch_size > len(records):
            raise ValueError(f"batch of {batch_size} prompts but only {len(records)} records")
        if batch_size % shards:
            raise ValueError(f"a batch of {batch_size} prompts does not split into {shards} shards")
        self._records = list(records)
        order = grain.MapDataset.range(len(records)).shuffle(seed=seed).repeat()
        local = batch_size // shards
        dataset = (
            grain.MapDataset.range(len(order) // batch_size * local)
            .map(_ShardPosition(order, batch_size, local, local * shard))
            .map(_EncodeRecord(self._records, tokenizer, width, media))
            .batch(local)
            .to_iter_dataset()
        )
        if workers:
            if not flags.FLAGS.is_parsed():
                flags.FLAGS.mark_as_parsed()  # grain's worker pool reads absl flags; rlx takes no command-line flags there
            dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
        self._iterator = iter(dataset)

    def __iter__(self) -> "PromptStream":
        return self

    def __next__(self) -> PromptBatch:
        batch = next(self._iterator)
        records = [self._records[int(i)] for i in batch["index"]]
        return PromptBatch(records, batch["tokens"], batch["start"], batch.get("media"))

    def get_state(self) -> dict[str, Any]:
        return self._iterator.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._iterator.set_state(state)

    def close(self) -> None:
        """Stops worker processes and frees their shared memory (a no-op without workers)."""
        self._iterator.close()
