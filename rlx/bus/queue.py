"""The TransferQueue: a bounded, host-side store of prompt groups whose fields arrive over time.

A group is the `n` samples of one prompt: named numpy arrays with `n` rows (tokens, loss mask,
behaviour log-probs, per-token policy versions, rewards, ...), filled by different producers
at different times. Producers `put` a group into a batch (one learner step's worth) and `seal`
the batch when it is complete; a consumer `take_batch`es a sealed batch once every group holds
the fields it needs. `put` blocks while `capacity` groups are held (back-pressure); `close`
wakes every waiter with `BusClosed`, so no thread hangs at shutdown.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections import defaultdict
from typing import Any, Mapping, Sequence

import numpy as np


class BusClosed(RuntimeError):
    """The bus was closed while a producer or consumer waited on it."""


@dataclasses.dataclass
class Group:
    id: int
    batch: int
    fields: dict[str, np.ndarray]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def has(self, names: Sequence[str]) -> bool:
        return all(name in self.fields for name in names)


class TransferQueue:
    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 prompt groups, got {capacity}")
        self.capacity = capacity
        self._groups: dict[int, Group] = {}
        self._sealed: dict[int, dict[str, Any]] = {}
        self._ids = itertools.count()
        self._changed = threading.Condition()
        self._closed = False
        self._counts = defaultdict(int)
        self._wait_s: dict[str, float] = defaultdict(float)

    # -- producers -------------------------------------------------------------------------------
    def put(self, batch: int, fields: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None, producer: str = "producer") -> int:
        """Adds a group to `batch`, blocking while the bus is full; returns the group's id."""
        rows = {len(value) for value in fields.values()}
        if len(rows) > 1:
            raise ValueError(f"fields of one group must have the same number of rows, got {sorted(rows)}")
        with self._changed:
            self._wait(lambda: len(self._groups) < self.capacity, producer)
            group = Group(next(self._ids), batch, {k: np.asarray(v) for k, v in fields.items()}, dict(meta or {}))
            self._groups[group.id] = group
            self._counts["groups_in"] += 1
            self._changed.notify_all()
            return group.id

    def fill(self, group_id: int, fields: Mapping[str, np.ndarray]) -> None:
        """A later producer (e.g. reward scoring) adds fields to a group already in the bus."""
        with self._changed:
            if group_id not in self._groups:
                raise KeyError(f"group {group_id} is not in the bus (already taken, or never put)")
            self._groups[group_id].fields.update({k: np.asarray(v) for k, v in fields.items()})
            self._changed.notify_all()

    def seal(self, batch: int, meta: Mapping[str, Any] | None = None) -> None:
        """Every group of `batch` has been put: consumers may take it. `meta` travels with the batch."""
        with self._changed:
            self._sealed[batch] = dict(meta or {})
            self._changed.notify_all()

    def discard(self, batch: int) -> int:
        """Removes the groups put into `batch`, which is not sealed (its producer failed and draws it again); returns how many."""
        with self._changed:
            if batch in self._sealed:
                raise ValueError(f"batch {batch} is sealed: a consumer may already count on it")
            dropped = [group_id for group_id, group in self._groups.items() if group.batch == batch]
            for group_id in dropped:
                del self._groups[group_id]
            self._counts["groups_discarded"] += len(dropped)
            self._changed.notify_all()
            return len(dropped)

    # -- consumers -------------------------------------------------------------------------------
    def take_batch(
        self, batch: int, needs: Sequence[str], consumer: str = "consumer", timeout: float | None = None,
    ) -> tuple[list[Group], dict[str, Any]]:
        """Removes `batch` once it is sealed and each group has `needs`; returns its groups (in put order) and meta."""
        def ready() -> bool:
            return batch in self._sealed and all(g.has(needs) for g in self._groups.values() if g.batch == batch)

        with self._changed:
            self._wait(ready, consumer, timeout)
            taken = [g for g in self._groups.values() if g.batch == batch]
            for group in taken:
                del self._groups[group.id]
            meta = self._sealed.pop(batch)
            self._counts["groups_taken"] += len(taken)
            self._changed.notify_all()
            return taken, meta

    def pending(self) -> list[Group]:
        """The groups held now (e.g. counted at a checkpoint)."""
        with self._changed:
            return list(self._groups.values())

    def snapshot(self) -> tuple[list[tuple[int, list[Group], dict[str, Any]]], int]:
        """For a checkpoint, taken at one instant: every sealed batch still held, as (batch, groups in put order, meta)
        in batch order, and how many held groups belong to batches not sealed yet."""
        with self._changed:
            sealed = [(batch, [g for g in self._groups.values() if g.batch == batch], dict(meta)) for batch, meta in sorted(self._sealed.items())]
            return sealed, sum(g.batch not in self._sealed for g in self._groups.values())

    def count(self, name: str, amount: int = 1) -> None:
        """Counts an outcome decided outside the bus (e.g. `groups_dropped_stale`)."""
        with self._changed:
            self._counts[name] += amount

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def metrics(self) -> dict[str, float]:
        """`bus/depth` (groups held), cumulative counts, and seconds each role waited on the bus."""
        with self._changed:
            metrics = {"bus/depth": float(len(self._groups))}
            metrics.update({f"bus/{name}": float(value) for name, value in self._counts.items()})
            metrics.update({f"bus/wait_s/{role}": value for role, value in self._wait_s.items()})
            return metrics

    def _wait(self, ready, role: str, timeout: float | None = None) -> None:
        """Waits (holding `_changed`) until `ready()`; raises BusClosed or TimeoutError instead of hanging."""
        began = time.perf_counter()
        try:
            while not ready():
                if self._closed:
                    raise BusClosed(f"{role}: the bus was closed while waiting")
                left = None if timeout is None else timeout - (time.perf_counter() - began)
                if left is not None and left <= 0:
                    raise TimeoutError(f"{role}: nothing ready on the bus after {timeout:.1f} s")
                self._changed.wait(left)
        finally:
            self._wait_s[role] += time.perf_counter() - began
