"""One generator process as the learner's process sees it: `generator`, `generator-1`, ... (`services.generators`).

A `Replica` keeps its name, restart count and the step it draws across the child processes it starts
(`rlx.services.generator_child`, with `multiprocessing`'s spawn): a fresh child gets the latest weights and the
published version before anything else. The child's heartbeat, status and progress count live in shared values that
outlast it: a child is dead or stopped when its heartbeat is `2 * heartbeat_s` old, hung when it works (starting, or
inside a step) and its progress count has not moved for `services.hang_timeout_s` (`Liveness`).
`ProcessTransport` makes them and moves the arrays (shared memory) for `ProcessGeneratorRole`.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from multiprocessing.connection import wait
from typing import Any, Sequence

import numpy as np

from rlx.config import Config
from rlx.services import generator_child
from rlx.services.shared_arrays import SharedArrays, read, share, unlink, unlink_leftovers
from rlx.services.supervisor import describe_exit

STARTUP_S = 300.0  # seconds a new child may take to import and start beating (JAX import, engine build)
WORKING = ("starting", "generating", "putting")  # statuses in which a child advances its progress count as it works


def replica_name(index: int) -> str:
    return "generator" if index == 0 else f"generator-{index}"


class Liveness:
    """Tells a dead or hung replica from a busy one: dead or stopped when its heartbeat is `2 * heartbeat_s` old
    (`STARTUP_S` before its first), hung when it works (`WORKING`) and its progress count has not moved for
    `hang_timeout_s` (`STARTUP_S` at least while starting). `who` names the replica's process in the verdict."""

    def __init__(self, who: str):
        self.who = who
        self._seen = (0, time.monotonic())  # the count last seen to move, and when

    def verdict(self, heard: float, spawned_at: float, heartbeat_s: float, count: int, status: str, step: int | None,
                hang_timeout_s: float) -> str | None:
        """Why the replica counts as dead or hung, or None (`heard`: its last heartbeat, 0 before its first)."""
        silent = time.time() - (heard or spawned_at)
        if silent > (2 * heartbeat_s if heard else STARTUP_S):
            return f"no heartbeat from {self.who} for {silent:.1f} s (services.heartbeat_s={heartbeat_s})"
        now = time.monotonic()
        if count != self._seen[0] or status not in WORKING:
            self._seen = (count, now)
            return None
        still = now - self._seen[1]
        if still > (max(hang_timeout_s, STARTUP_S) if status == "starting" else hang_timeout_s):
            where = "starting" if status == "starting" else f"{status} step {step}"
            return f"{self.who} is hung: no progress for {still:.1f} s while {where}, its heartbeat alive (services.hang_timeout_s={hang_timeout_s})"
        return None


class StepKeeping:
    """The step bookkeeping both kinds of replica share (they provide `send`)."""

    step: int | None
    drawn: int

    def assign(self, step: int, data_state: dict[str, Any], skip: int, carried: Any = None) -> None:
        """`carried`: the partial rollouts' work a fresh child takes up before the step (None: none, or its own)."""
        self.step = step
        self.send(("draw", step, data_state, skip, carried))

    def sealed(self) -> None:
        self.step = None
        self.drawn += 1


class Replica(StepKeeping):
    def __init__(self, index: int, context: Any, prefix: str):
        self.index, self.name = index, replica_name(index)
        self.restarts = 0
        self.step: int | None = None  # the step assigned to its child, until sealed
        self.ready = False  # the child is built and takes assignments (and the latest weights)
        self.drawn = 0  # steps its child sealed: the replica that drew fewest gets the next step
        self.version = -1  # the weights' version its child has (or gets first)
        self.process: Any = None
        self.conn: Any = None
        self._context, self._prefix = context, prefix
        self._beat = context.Value("d", 0.0, lock=False)  # the child's last heartbeat (time.time()); 0 before its first
        self._status = context.Array("c", 32, lock=False)
        self._progress = context.Value("Q", 0, lock=False)  # advanced by the child as it works
        self._liveness = Liveness(f"{self.name}'s process")
        self._children = 0
        self._spawned_at = 0.0

    def spawn(self, config: Config, weights: tuple[SharedArrays, int], published: int) -> None:
        """Starts a fresh child; it gets `weights` (the latest) and the `published` version first."""
        self._children += 1
        self.step, self.ready, self.drawn = None, False, 0
        parent_end, child_end = self._context.Pipe()
        start = generator_child.ChildStart(config, published, generator_child.cpu_devices(), os.getpid(), self._blocks())
        self._beat.value, self._status.value, self._progress.value = 0.0, b"starting", 0
        self._liveness = Liveness(f"{self.name}'s process")
        process = self._context.Process(target=generator_child.run, args=(start, child_end, self._beat, self._status, self._progress),
                                        name=f"rlx-{self.name}-{self._children}")
        process.start()
        child_end.close()  # the child holds it: its death closes the pipe
        self.process, self.conn, self._spawned_at = process, parent_end, time.time()
        self.send_weights(weights)
        self.send(("admit", published))

    def _blocks(self) -> str:
        return f"{self._prefix}c{self._children}-"

    def send(self, message: tuple) -> None:
        try:
            self.conn.send(message)
        except (OSError, ValueError):
            pass  # the child is gone; its supervisor replaces it and sends the latest state again

    def poll(self) -> bool:
        """Whether a message waits (raises EOFError or OSError once the child closed its end)."""
        return self.conn.poll(0)

    def recv(self) -> tuple:
        return self.conn.recv()

    def listening(self) -> bool:
        return not self.conn.closed

    def exited(self) -> bool:
        return self.process.exitcode is not None

    def join(self, timeout: float) -> None:
        self.process.join(timeout)

    def send_weights(self, weights: tuple[SharedArrays, int]) -> None:
        self.send(("weights", weights[1], weights[0]))
        self.version = weights[1]

    def up(self) -> bool:
        """Its child runs, is built and listens (a child that is starting gets the latest weights once ready)."""
        return self.ready and self.process.exitcode is None and not self.conn.closed

    def silence(self, heartbeat_s: float, hang_timeout_s: float) -> str | None:
        """Why the child counts as dead or hung (`Liveness`), or None."""
        return self._liveness.verdict(self._beat.value, self._spawned_at, heartbeat_s, self._progress.value, self.status(), self.step,
                                      hang_timeout_s)

    def status(self) -> str:
        return self._status.value.decode()

    def exit_reason(self) -> str | None:
        exitcode = self.process.exitcode
        return None if exitcode is None else f"{self.name}'s process {describe_exit(exitcode)}"

    def set_status(self, text: str) -> None:
        self._status.value = text.encode()[:31]

    def health(self) -> dict[str, dict]:
        pid = self.process.pid if self.process is not None else os.getpid()
        return {self.name: {"pid": pid, "status": self.status(), "restarts": self.restarts,
                            "last_heartbeat": self._beat.value or self._spawned_at}}

    def close_pipe(self) -> None:
        """Stops listening: the child ends after the step in progress, which it cannot send any more."""
        self.send(("stop",))
        self.conn.close()

    def end(self, grace_s: float) -> None:
        """Waits `grace_s` for the child to exit, kills it (SIGKILL also ends a stopped one), removes what it left in shared memory."""
        process = self.process
        if process is None:
            return
        process.join(grace_s)
        if process.exitcode is None:
            process.kill()
            process.join()
        self.conn.close()
        unlink_leftovers(self._blocks())


class ProcessTransport:
    """Replicas as spawned child processes; arrays through shared memory blocks named after this transport."""

    def __init__(self):
        self._context = multiprocessing.get_context("spawn")
        self._prefix = f"rlx-{os.getpid()}-{id(self)}-"
        self._serial = 0  # replicas made, for their shared-memory names

    def replica(self, index: int) -> Replica:
        self._serial += 1
        return Replica(index, self._context, f"{self._prefix}r{self._serial}-")

    def share_weights(self, arrays: dict[str, np.ndarray], version: int) -> SharedArrays:
        return share(arrays, f"{self._prefix}w{version}-{time.monotonic_ns()}")

    def drop_weights(self, shared: SharedArrays) -> None:
        unlink(shared.name)

    def read_group(self, shared: SharedArrays) -> dict[str, np.ndarray]:
        return read(shared, unlink=True)

    def wait(self, replicas: Sequence[Replica], timeout: float) -> list[Replica]:
        """The replicas among `replicas` (listening) with a message, or whose child closed its end, within `timeout` s."""
        by_conn = {replica.conn: replica for replica in replicas}
        return [by_conn[conn] for conn in wait(list(by_conn), timeout)]

    def close(self) -> None:
        pass  # every block is removed by the role and the replicas
