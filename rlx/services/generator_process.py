"""The generator role in its own OS process (`services.backend: process`), supervised from the learner's process.

The child (`rlx.services.generator_child`, started with `multiprocessing`'s spawn) builds its own `Generation` and
draws steps as the thread role does. Group arrays come back through shared memory (`rlx.services.shared_arrays`),
their records and responses and each step's metadata over a pipe; a thread here puts them into the run's
`TransferQueue` and seals the steps, so the learner's side of the bus (`RolloutFeed`) is the same for both backends.
Each `advance` sends the published weights (a host copy in one shared-memory block, kept until newer weights replace
it) and the admitted version.

Health: the child writes a heartbeat time into shared memory every `heartbeat_s / 2`. A child that exits (killed,
crashed, or reporting a failed step with its traceback) or stops beating for `2 * heartbeat_s` is killed and
replaced: the groups of its unsealed step are dropped from the bus (`bus.discard`) and a fresh child draws from that
step on, from the prompt-stream position after the last sealed step, with the latest published weights. Past
`services.max_restarts` the run stops (`RunStopped`) naming the step and the last error. A child that has not beaten
yet (importing and building, before its heartbeat starts) is allowed `STARTUP_S` before it counts as hung.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from typing import Any, Callable

import jax
from flax import nnx

from rlx.bus import BusClosed, StalenessGate, TransferQueue
from rlx.config import Config
from rlx.errors import RunStopped, UserError
from rlx.services import generator_child
from rlx.services.generation import host_weights
from rlx.services.shared_arrays import SharedArrays, read, share, unlink, unlink_leftovers

log = logging.getLogger(__name__)
STARTUP_S = 300.0  # seconds a new child may take to import and start beating (JAX import, engine build)
Published = Callable[[], tuple[nnx.State, int] | None]  # the weight mailbox's `take`


class ProcessGeneratorRole:
    """Draws steps `first..last` in a child process; the same interface as the thread role (`GeneratorRole`)."""

    def __init__(self, config: Config, bus: TransferQueue, gate: StalenessGate, first: int, last: int, published: Published,
                 data_state: dict[str, Any], max_restarts: int, heartbeat_s: float):
        self.config, self.bus, self.gate = config, bus, gate
        self.first, self.last = first, last
        self.published, self.max_restarts, self.heartbeat_s = published, max_restarts, heartbeat_s
        self.error: BaseException | None = None
        self.restarts = 0
        self._next_step, self._data_state = first, data_state  # the first unsealed step, and the stream position before it
        self._context = multiprocessing.get_context("spawn")
        self._beat = self._context.Value("d", 0.0, lock=False)  # the child's last heartbeat (time.time()); 0 before its first
        self._status = self._context.Array("c", 32, lock=False)
        self._lock = threading.Lock()  # the pipe's sending end and the weights block, shared by the learner's and this thread
        self._weights: tuple[SharedArrays, int] | None = None
        self._children = 0
        self._process: Any = None
        self._conn: Any = None
        self._spawned_at = 0.0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="rlx-generator-supervisor", daemon=True)
        self._post_weights()

    # -- the role's interface ------------------------------------------------------------------
    def start(self) -> "ProcessGeneratorRole":
        with self._lock:
            self._spawn()
        self._thread.start()
        return self

    def advance(self, version: int) -> None:
        """The learner published `version`: send its weights, then admit it."""
        self.gate.publish(version)
        with self._lock:
            if self._post_weights():
                self._send(("weights", self._weights[1], self._weights[0]))
            self._send(("admit", version))

    def health(self) -> dict[str, dict]:
        process = self._process
        beat = self._beat.value or self._spawned_at
        return {"generator": {"pid": process.pid if process is not None else os.getpid(), "status": self._status.value.decode(),
                              "restarts": self.restarts, "last_heartbeat": beat}}

    def stop(self, timeout: float = 60.0) -> None:
        """Stops the child (asked first, killed after a few seconds) and the supervising thread; removes the shared memory."""
        self._stopping.set()
        self.gate.close()
        self.bus.close()
        if self._conn is not None:
            with self._lock:
                self._send(("stop",))
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"generator supervisor still running {timeout} s after shutdown")
        self._end_child(grace_s=5.0)
        if self._weights is not None:
            unlink(self._weights[0].name)

    # -- weights ---------------------------------------------------------------------------------
    def _post_weights(self) -> bool:
        """Takes newly published weights into a fresh shared-memory block (the previous one is removed); False if none."""
        taken = self.published()
        if taken is None:
            return False
        weights, version = taken
        previous = self._weights
        arrays = host_weights(jax.block_until_ready(weights))
        self._weights = share(arrays, f"{self._prefix()}w{version}-{time.monotonic_ns()}"), version
        if previous is not None:
            unlink(previous[0].name)  # a child reading it finds it gone and takes the newer block sent after
        return True

    def _prefix(self) -> str:
        return f"rlx-{os.getpid()}-{id(self)}-"

    # -- the child -------------------------------------------------------------------------------
    def _spawn(self) -> None:
        """A fresh child drawing from the first unsealed step; it gets the latest weights, then the published version."""
        if self._weights is None:
            raise RuntimeError("no published weights to start the generator process from (the trainer posts its first ones)")
        self._children += 1
        parent_end, child_end = self._context.Pipe()
        cpu = jax.default_backend() == "cpu"
        start = generator_child.ChildStart(self.config, self._next_step, self.last, self._data_state, self.gate.published,
                                           jax.device_count() if cpu else 0, os.getpid(), f"{self._prefix()}c{self._children}-")
        self._beat.value, self._status.value = 0.0, b"starting"
        process = self._context.Process(target=generator_child.run, args=(start, child_end, self._beat, self._status),
                                        name=f"rlx-generator-{self._children}")
        process.start()
        child_end.close()  # the child holds it: its death closes the pipe
        self._process, self._conn, self._spawned_at = process, parent_end, time.time()
        self._send(("weights", self._weights[1], self._weights[0]))
        self._send(("admit", self.gate.published))

    def _send(self, message: tuple) -> None:
        try:
            self._conn.send(message)
        except (OSError, ValueError):
            pass  # the child is gone; the supervisor replaces it and sends the latest state again

    def _supervise(self) -> None:
        try:
            while True:
                outcome = self._watch()
                if outcome is None:
                    return  # stopped
                if outcome == "done":
                    self._end_child(grace_s=10.0)
                    return
                if not self._replace(outcome):
                    return  # it had sealed every step before it died
        except BusClosed:
            pass  # shut down while putting
        except BaseException as err:  # handed to the learner's thread, which re-raises it
            log.error("generator role failed: %s", err)
            self.error = err
            self._status.value = b"failed"
            self.bus.close()

    def _watch(self) -> str | None:
        """Handles the child's messages until it finishes (`done`), fails (the reason) or the role stops (None)."""
        tick = min(self.heartbeat_s / 4, 0.25)
        while not self._stopping.is_set():
            try:
                while self._conn.poll(tick):
                    outcome = self._handle(self._conn.recv())
                    if outcome is not None:
                        return outcome
            except (EOFError, OSError):
                self._process.join(self.heartbeat_s)  # the child closed its end: it is exiting
            if self._process.exitcode is not None:
                return self._last_words() or f"the generator process exited with {_exit_reason(self._process.exitcode)}"
            silent = time.time() - (self._beat.value or self._spawned_at)
            if silent > (2 * self.heartbeat_s if self._beat.value else STARTUP_S):
                return f"no heartbeat from the generator process for {silent:.1f} s (services.heartbeat_s={self.heartbeat_s})"
        return None

    def _last_words(self) -> str | None:
        """What an exited child sent after the last poll (its `done`, or the traceback of its failure)."""
        try:
            while self._conn.poll(0):
                outcome = self._handle(self._conn.recv())
                if outcome is not None:
                    return outcome
        except (EOFError, OSError):
            pass
        return None

    def _handle(self, message: tuple) -> str | None:
        kind = message[0]
        if kind == "group":
            _, step, shared, meta = message
            self.bus.put(step, read(shared, unlink=True), meta, producer="generator")
        elif kind == "seal":
            _, step, meta = message
            self.bus.seal(step, meta)
            self._next_step, self._data_state = step + 1, meta["data_state"]
        elif kind == "failed":
            _, step, what, text = message
            if what == "user":
                raise UserError(f"generator process, step {step}: {text}")
            return f"step {step} failed in the generator process:\n{text}"
        elif kind == "done":
            return "done"
        return None

    def _replace(self, reason: str) -> bool:
        """Kills the failed child, drops its unsealed groups, and starts a fresh one from the first unsealed step (False:
        nothing left to draw)."""
        self._end_child(grace_s=0.0)
        if self._next_step > self.last:
            return False
        step = self._next_step
        dropped = self.bus.discard(step)
        if self.restarts >= self.max_restarts:
            raise RunStopped(f"the generator role failed at step {step} after {self.restarts} restarts (services.max_restarts="
                             f"{self.max_restarts}); its last error: {reason}")
        self.restarts += 1
        log.warning("generator process failed at step %d (%s); restart %d of %d draws from step %d again (%d groups it had put dropped)",
                    step, reason, self.restarts, self.max_restarts, step, dropped)
        self._status.value = b"restarting"
        with self._lock:
            self._spawn()
        return True

    def _end_child(self, grace_s: float) -> None:
        """Waits `grace_s` for the child to exit, kills it (SIGKILL also ends a stopped one), removes what it left in shared memory."""
        process = self._process
        if process is None:
            return
        process.join(grace_s)
        if process.exitcode is None:
            process.kill()
            process.join()
        self._conn.close()
        unlink_leftovers(f"{self._prefix()}c{self._children}-")


def _exit_reason(exitcode: int) -> str:
    if exitcode < 0:
        return f"signal {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"
