"""The bus in a checkpoint: batches the generator sealed ahead of the learner, saved beside the learner state, so a
resumed run trains them as they were and neither regenerates nor skips a prompt.

One file per checkpoint step, `<output_dir>/checkpoints_bus/<step>.npz`: each group's arrays (tokens, per-token
versions, log-probs, rewards, ...) under `<batch>/<group>/<field>`, and one JSON document with the rest (the groups'
record ids and responses, each batch's metadata: its generation metrics and the prompt stream's position after it).
With partial rollouts (`rollout.token_budget`) the file also holds the work they carried after the last of those
batches (`rlx.services.carried_checkpoint`): unfinished groups, their finished samples and the samples in decode slots.
It is written before the learner state, so a checkpoint that exists has its file; a checkpoint without one (made
before this file existed) resumes as before, drawing those batches again (counted in `bus/regenerated_on_resume`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rlx.bus import stale_rows
from rlx.data import PromptRecord
from rlx.rollout.partial import Carried
from rlx.services.carried_checkpoint import carried_arrays, carried_from

_DOCUMENT = "document.json"


@dataclasses.dataclass(frozen=True)
class DrawnBatch:
    """One sealed, untrained step: its groups as `TransferQueue.put` takes them, and the batch's meta."""

    step: int
    groups: list[tuple[dict[str, np.ndarray], dict[str, Any]]]  # (fields, meta: records, responses)
    meta: dict[str, Any]  # metrics, data_state

    @property
    def rows(self) -> int:
        return sum(len(fields["tokens"]) for fields, _ in self.groups)


def bus_file(directory: Path, step: int) -> Path:
    return directory / f"{step}.npz"


def save_drawn_ahead(directory: Path, step: int, batches: list[DrawnBatch], keep: set[int], carried: Carried | None = None) -> None:
    """Writes checkpoint `step`'s drawn-ahead `batches` and the partial rollouts' `carried` work after them (atomically),
    and removes the files of steps not in `keep`."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = carried_arrays(carried) if carried is not None else {}
    document = []
    for b, batch in enumerate(batches):
        groups = []
        for g, (fields, meta) in enumerate(batch.groups):
            arrays.update({f"{b}/{g}/{name}": value for name, value in fields.items()})
            groups.append({"fields": sorted(fields), "records": [record.id for record in meta["records"]], "responses": meta["responses"]})
        document.append({"step": batch.step, "meta": batch.meta, "groups": groups})
    arrays[_DOCUMENT] = np.array(json.dumps(document))
    partial = directory / f"{step}.partial.npz"
    np.savez(partial, **arrays)
    os.replace(partial, bus_file(directory, step))
    for old in directory.glob("*.npz"):
        if old.stem.isdigit() and int(old.stem) not in keep | {step}:
            old.unlink(missing_ok=True)


def load_drawn_ahead(directory: Path, step: int, records: Mapping[str, PromptRecord]) -> list[DrawnBatch] | None:
    """Checkpoint `step`'s drawn-ahead batches; None without a file, or when a record is no longer in the data set."""
    path = bus_file(directory, step)
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as stored:
        document = json.loads(str(stored[_DOCUMENT]))
        batches = []
        for b, batch in enumerate(document):
            groups = []
            for g, group in enumerate(batch["groups"]):
                if not all(record_id in records for record_id in group["records"]):
                    return None
                fields = {name: stored[f"{b}/{g}/{name}"] for name in group["fields"]}
                groups.append((fields, {"records": [records[r] for r in group["records"]], "responses": group["responses"]}))
            batches.append(DrawnBatch(batch["step"], groups, batch["meta"]))
    return batches


def load_carried(directory: Path, step: int, records: Mapping[str, PromptRecord]) -> Carried | None:
    """The partial rollouts' carried work in checkpoint `step`'s file; None without it, or when a record is no longer in the data set."""
    path = bus_file(directory, step)
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as stored:
        return carried_from(stored, records)


def admissible(batches: list[DrawnBatch], trained: int, max_staleness: int, capacity: int) -> list[DrawnBatch]:
    """The longest run of `batches` (in step order, right after step `trained`) that the bus as now configured admits:
    within `capacity` groups, each step admitted by the staleness bound, no token staler than it. A resumed run with a
    smaller bus or bound draws the rest again."""
    kept, held = [], 0
    for expected, batch in enumerate(batches, start=trained + 1):
        held += len(batch.groups)
        stale = any(stale_rows(fields["versions"], batch.step, max_staleness).any() for fields, _ in batch.groups)
        if batch.step != expected or batch.step - 1 - trained > max_staleness or held > capacity or stale:
            break
        kept.append(batch)
    return kept
