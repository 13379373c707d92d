"""The generator role: a thread that draws each step's scored rollouts into the TransferQueue, restarting a failed step.

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
from rlx.errors import RunStopped, UserError
from rlx.services.health import RoleClock
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
    """Draws steps `first..last` in a thread. An exception in a step (not bad input, `UserError`) restarts the role
    in place up to `max_restarts` times: the groups it put for that step are dropped from the bus and the step is
    drawn again (`produce` must leave its prompt stream where the step began when it raises); steps sealed before are
    kept, so nothing is trained twice. Past `max_restarts` the run stops naming the role and its last error.
    It beats (`health`) at each phase and every `heartbeat_s` while it waits for admission."""

    def __init__(self, produce: Produce, bus: TransferQueue, gate: StalenessGate, first: int, last: int, timeline: Timeline = NO_TIMELINE,
                 max_restarts: int = 0, heartbeat_s: float = 5.0):
        self.produce = produce
        self.timeline = timeline
        self.bus, self.gate = bus, gate
        self.steps = range(first, last + 1)
        self.max_restarts, self.heartbeat_s = max_restarts, heartbeat_s
        self.error: BaseException | None = None
        self.clock = RoleClock("generator")
        self.health, self._beat = self.clock.health, self.clock.beat
        self._thread = threading.Thread(target=self._run, name="rlx-generator", daemon=True)

    def start(self) -> "GeneratorRole":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            step = self.steps.start
            while step < self.steps.stop:
                try:
                    self._draw(step)
                    step += 1
                except (BusClosed, UserError):
                    raise
                except Exception as err:  # a fault in this step: draw it again, or stop the run
                    self._restart(step, err)
            self._beat("done")
        except BusClosed:
            self._beat("stopped")  # shut down while waiting
        except BaseException as err:  # handed to the learner's thread, which re-raises it
            log.exception("generator role failed")
            self.error = err
            self._beat("failed")
            self.bus.close()

    def advance(self, version: int) -> None:
        """The learner published `version` (its weights are in the trainer's mailbox): admit the steps it allows."""
        self.gate.publish(version)

    def _draw(self, step: int) -> None:
        began = time.perf_counter()
        with self.timeline.span("generator", "wait_admission", step):
            self._beat("waiting")
            while not self._admitted(step):
                self._beat("waiting")
        admitted = time.perf_counter()
        self._beat("generating")
        batch, meta = self.produce(step)
        meta["metrics"]["timing_s/gen_wait_admission"] = admitted - began
        with self.timeline.span("generator", "bus_put", step):
            self._beat("putting")
            for fields, group_meta in to_groups(batch):
                self.bus.put(step, fields, group_meta, producer="generator")
            self.bus.seal(step, meta)

    def _admitted(self, step: int) -> bool:
        try:
            self.gate.wait_until_admitted(step, timeout=self.heartbeat_s)
            return True
        except TimeoutError:
            return False

    def _restart(self, step: int, err: Exception) -> None:
        dropped = self.bus.discard(step)
        if self.clock.restarts >= self.max_restarts:
            raise RunStopped(f"the generator role failed at step {step} after {self.clock.restarts} restarts (services.max_restarts="
                             f"{self.max_restarts}); its last error: {type(err).__name__}: {err}") from err
        self.clock.restarts += 1
        log.warning("generator role failed at step %d (%s: %s); restart %d of %d draws the step again (%d groups it had put dropped)",
                    step, type(err).__name__, err, self.clock.restarts, self.max_restarts, dropped, exc_info=err)
        self._beat("restarting")

    def stop(self, timeout: float = 60.0) -> None:
        """Wakes the thread wherever it waits and joins it; raises if it does not end in `timeout` s."""
        self.gate.close()
        self.bus.close()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"generator thread still running {timeout} s after shutdown")
