"""A generator process (`services.backend: process`; `Child` also runs in the Ray backend's actors,
`rlx.services.generator_ray`): spawned by `ProcessGeneratorRole`, it builds what generation needs
from the config alone (`Generation`: task, prompt stream, rollout engine, reward; no learner, no optimizer state), says
it is ready, and draws the steps its parent assigns, one at a time, each admitted by its own staleness gate.

Messages, parent -> child: `("weights", version, SharedArrays)` (the published weights, host copy in shared memory),
`("admit", version)` (the learner published `version`), `("draw", step, data_state, skip, carried)` (draw `step`: its
prompts begin `skip` batches after the prompt-stream position `data_state`; with partial rollouts, a fresh child first takes
up `carried`, the work they carried after the step before, from that step's `seal`), `("stop",)`, `("done",)` (every step
is sealed).
Child -> parent: `("ready",)` once built, `("group", step, SharedArrays, meta)` per prompt group, `("seal", step, meta)`,
`("failed", step, kind, text)` (`kind`: `user` for bad input, else `error`, with the traceback; `step` None before a
step). A heartbeat thread writes the time into a shared value every `heartbeat_s / 2` and exits the process at once
when the parent is gone, so a killed run leaves no generator behind: it says the process lives. That it works is told by
a second shared value, a progress count the main thread advances at each status change, each finished sample and each
group sent, so the parent can tell a child stuck inside a step (its heartbeat thread still beating) from a busy one. When the parent closes the pipe (a replica removed
mid-step) the child ends after the step in progress without sending it.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import queue
import threading
import time
import traceback
from typing import Any, Callable, Protocol

import jax
import numpy as np

from rlx.bus import BusClosed, StalenessGate
from rlx.config import Config
from rlx.errors import UserError
from rlx.services.generation import Generation, standalone_generation
from rlx.services.shared_arrays import read, share
from rlx.services.transfer import to_groups


@dataclasses.dataclass(frozen=True)
class ChildStart:
    config: Config
    published: int  # the version the learner had published when this child started
    cpu_devices: int  # the parent's CPU device count (0: the parent does not run on CPU devices)
    parent_pid: int
    block_prefix: str  # shared-memory blocks this child writes are named `<block_prefix><n>`


class Channel(Protocol):
    """The child's end of its link to the learner's process: a `multiprocessing` pipe, or a Ray actor's queues."""

    def send(self, message: tuple) -> None: ...
    def recv(self) -> tuple: ...  # blocks; EOFError once the learner's side is gone


@dataclasses.dataclass(frozen=True)
class ArrayLink:
    """How group arrays leave a child (`put`: what its `group` message carries) and published weights reach it
    (`get`: the host arrays a `weights` message names; FileNotFoundError when they were superseded meanwhile)."""

    put: Callable[[dict[str, np.ndarray]], Any]
    get: Callable[[Any], dict[str, np.ndarray]]


def shared_memory_link(block_prefix: str) -> ArrayLink:
    blocks = itertools.count()
    return ArrayLink(put=lambda fields: share(fields, f"{block_prefix}{next(blocks)}"), get=lambda shared: read(shared, unlink=False))


def cpu_devices() -> int:
    """This process's CPU device count, for a child to use the same (0: it does not run on CPU devices)."""
    return jax.device_count() if jax.default_backend() == "cpu" else 0


def use_cpu_devices(count: int) -> None:
    """Before JAX starts: the parent's CPU devices (`cpu_devices`), so the generator mesh is the same."""
    if count:
        jax.config.update("jax_num_cpu_devices", count)


def run(start: ChildStart, conn: Channel, beat: Any, status: Any, progress: Any) -> None:
    """The child's entry point (`multiprocessing` spawn target)."""
    threading.Thread(target=_beat_while_parent_lives, args=(start, beat), name="rlx-generator-beat", daemon=True).start()
    use_cpu_devices(start.cpu_devices)
    Child(start.config, start.published, conn, status, progress, shared_memory_link(start.block_prefix)).run()


def _beat_while_parent_lives(start: ChildStart, beat: Any) -> None:
    while True:
        if os.getppid() != start.parent_pid:
            os._exit(1)  # the run is gone: nothing to generate for
        beat.value = time.time()
        time.sleep(start.config.services.heartbeat_s / 2)


class Child:
    """Draws the steps the learner's process assigns (the role code of both backends' generators); `status.value` is
    what it does, as bytes; `progress.value` counts what it has done (status changes, finished samples, groups sent)."""

    def __init__(self, config: Config, published: int, conn: Channel, status: Any, progress: Any, arrays: ArrayLink):
        self.config, self.conn, self.status, self.progress, self.arrays = config, conn, status, progress, arrays
        self.step: int | None = None
        self.published = published  # the latest version admitted before the gate exists
        self._assigned: queue.Queue = queue.Queue()  # (step, data_state, skip, carried) from the parent; None: stop
        self._receive_error: str | None = None  # a traceback from the receiving thread, which ends the process's work
        self._ending = "stopped"  # the status it ends with: `done` once told every step is sealed

    def _set_status(self, text: str) -> None:
        self.status.value = text.encode()[:31]
        self._advance()

    def _advance(self) -> None:
        self.progress.value += 1  # only this thread writes it

    def run(self) -> None:
        generation = None
        try:
            self._set_status("starting")
            _pin(self.config.services.generator_cpus)
            generation, gate = self._build()
            self._set_status("ready")  # the parent makes it `idle` once it has taken the message
            self.conn.send(("ready",))
            while (assignment := self._assigned.get()) is not None:
                self.step, data_state, skip, carried = assignment
                _position(generation, data_state, skip)
                if carried is not None:
                    generation.partial.resume(carried)
                self._draw(generation, gate, self.step)
                self.step = None
                self._set_status("idle")
            if self._receive_error is not None:
                raise BusClosed("the receiving thread failed")
            self._set_status(self._ending)
        except BusClosed:
            if self._receive_error is None:
                self._set_status("stopped")
            else:
                self._send_failure("error", self._receive_error)
        except UserError as err:
            self._send_failure("user", f"{type(err).__name__}: {err}")
        except BaseException:
            self._send_failure("error", traceback.format_exc())
        finally:
            if generation is not None:
                generation.close()

    def _send_failure(self, kind: str, text: str) -> None:
        self._set_status("failed")
        try:
            self.conn.send(("failed", self.step, kind, text))
        except OSError:
            pass  # the parent is gone, or no longer listens to this replica

    def _build(self):
        config = self.config
        generation, load = standalone_generation(config, self._first_weights, on_progress=self._advance)
        gate = StalenessGate(config.bus.max_staleness, published=self.published)
        threading.Thread(target=self._receive, args=(generation, gate, load), name="rlx-generator-receive", daemon=True).start()
        return generation, gate

    def _first_weights(self) -> tuple[dict, int]:
        """The first weights the parent sends (before anything else) that are still there, as host arrays."""
        while True:
            message = self.conn.recv()
            if message[0] == "admit":
                self.published = max(self.published, message[1])
            elif message[0] == "weights":
                try:
                    return self.arrays.get(message[2]), message[1]
                except FileNotFoundError:
                    continue  # superseded: newer weights follow

    def _receive(self, generation: Generation, gate: StalenessGate, load) -> None:
        """Publishes, admissions and assignments from the parent, in order: the weights of version `v` are in the mailbox
        before `v` is admitted. A failure here (e.g. weights that do not fit) closes the gate, and the main thread reports it."""
        try:
            while self._apply(self.conn.recv(), generation, gate, load):
                pass
        except (EOFError, OSError):
            pass  # the parent closed the pipe: stop after the step in progress
        except BaseException:
            self._receive_error = traceback.format_exc()
        gate.close()
        self._assigned.put(None)

    def _apply(self, message: tuple, generation: Generation, gate: StalenessGate, load) -> bool:
        """Applies one message from the parent; False after `stop`."""
        if message[0] == "weights":
            _, version, shared = message
            try:
                generation.mailbox.post(load(self.arrays.get(shared)), version)
            except FileNotFoundError:
                pass  # superseded: the parent removed it after sending newer weights, which follow
        elif message[0] == "admit":
            gate.publish(message[1])
        elif message[0] == "draw":
            self._assigned.put(message[1:])
        elif message[0] == "done":
            self._ending = "done"
        return message[0] not in ("stop", "done")

    def _draw(self, generation: Generation, gate: StalenessGate, step: int) -> None:
        began = time.perf_counter()
        self._set_status("waiting")
        gate.wait_until_admitted(step)
        admitted = time.perf_counter()
        self._set_status("generating")
        batch, meta = generation.produce(step)
        meta["metrics"]["timing_s/gen_wait_admission"] = admitted - began
        self._set_status("putting")
        for fields, group_meta in to_groups(batch):
            self.conn.send(("group", step, self.arrays.put(fields), group_meta))
            self._advance()
        self.conn.send(("seal", step, meta))


def _pin(cpus: tuple[int, ...]) -> None:
    """Runs this process's threads started from now on (XLA's among them) on `cpus` (`services.generator_cpus`; empty: as it is)."""
    if not cpus:
        return
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as err:
        raise UserError(f"services.generator_cpus={list(cpus)}: cannot run on these cores here ({err}); "
                        f"this process may use {sorted(os.sched_getaffinity(0))}") from None


def _position(generation: Generation, data_state: dict[str, Any], skip: int) -> None:
    """Puts the prompt stream where the assigned step begins: `skip` batches after `data_state` (a replica that drew the
    step before stays where it is)."""
    if skip == 0 and generation.prompts.get_state() == data_state:
        return
    generation.prompts.set_state(data_state)
    for _ in range(skip):
        next(generation.prompts)

