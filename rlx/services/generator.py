"""The generator role: a thread that draws each step's scored rollouts into the TransferQueue.

Step `s`'s rollouts start only once the staleness gate admits `s`; the weights the learner
published last are picked up there (and, if the driver is interruptible, between generate calls).
With `max_staleness: 0` the generator waits for every update, which is the synchronous loop.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from flax import nnx

from rlx.bus import BusClosed, StalenessGate, TransferQueue
from rlx.services.timeline import NO_TIMELINE, Timeline
from rlx.services.transfer import ScoredBatch, to_groups

log = logging.getLogger(__name__)


class WeightMailbox:
    """The weights the learner published last, until the generator takes them (older ones are superseded)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._latest: tuple[nnx.State, int] | None = None

    def post(self, params: nnx.State, version: int) -> None:
        with self._lock:
            self._latest = (params, version)

    def take(self) -> tuple[nnx.State, int] | None:
        with self._lock:
            latest, self._latest = self._latest, None
            return latest

Produce = Callable[[int], tuple[ScoredBatch, dict[str, Any]]]  # step -> (batch, batch-level metadata)


class GeneratorRole:
    def __init__(self, produce: Produce, bus: TransferQueue, gate: StalenessGate, first: int, last: int, timeline: Timeline = NO_TIMELINE):
        self.produce = produce
        self.timeline = timeline
        self.bus, self.gate = bus, gate
        self.steps = range(first, last + 1)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rlx-generator", daemon=True)

    def start(self) -> "GeneratorRole":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for step in self.steps:
                began = time.perf_counter()
                with self.timeline.span("generator", "wait_admission", step):
                    self.gate.wait_until_admitted(step)
                admitted = time.perf_counter()
                batch, meta = self.produce(step)
                meta["metrics"]["timing_s/gen_wait_admission"] = admitted - began
                with self.timeline.span("generator", "bus_put", step):
                    for fields, group_meta in to_groups(batch):
                        self.bus.put(step, fields, group_meta, producer="generator")
                    self.bus.seal(step, meta)
        except BusClosed:
            return  # shut down while waiting
        except BaseException as err:  # handed to the learner's thread, which re-raises it
            log.exception("generator role failed")
            self.error = err
            self.bus.close()

    def stop(self, timeout: float = 60.0) -> None:
        """Wakes the thread wherever it waits and joins it; raises if it does not end in `timeout` s."""
        self.gate.close()
        self.bus.close()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"generator thread still running {timeout} s after shutdown")
