"""The generator role in OS processes of its own (`services.backend: process`), supervised from the learner's process.

`services.generators` replicas (`rlx.services.generator_replica`: `generator`, `generator-1`, ...) each build their own
`Generation` (`rlx.services.generator_child`). The role hands out whole steps: an admitted step goes to the replica idle
longest, with the prompt-stream position where the step begins (known once the step before it is sealed; else the
last known position and how many batches to skip), and each step samples with its own key (from `run.seed` and the
step). So which replica draws a step does not change what it draws: the run trains the same (step, prompt) rows for
any number of replicas, and the same rollouts where the weights' versions match (`bus.max_staleness: 0`).
With partial rollouts (`rollout.token_budget`, one replica) a step's prompt-stream position and the work the rollouts
carry into it (`rlx.rollout.partial.Carried`) both come with the step before's seal: a replica's own child keeps its
carried work from step to step, and a fresh child (a replacement) takes up the last sealed step's before drawing the next.

Where replicas run and how arrays move is a `Transport`: with `ProcessTransport` (the default) each replica is a spawned
child process and group arrays come back through shared memory (`rlx.services.shared_arrays`), their records and
responses and each step's metadata over a pipe (`services.backend: ray`: `rlx.services.generator_ray`, Ray actors);
a thread here puts them into the run's `TransferQueue` and seals the steps, so the learner's side of the bus
(`RolloutFeed`) is the same for every backend. Each `advance` takes the published weights into one block of the
transport (shared memory, Ray's object store; kept until newer weights replace it) and sends it and the admitted version to the
replicas that are up; a replica that is down then gets the latest weights when its fresh child starts.

Health: a child that exits (killed, crashed, or reporting a failed step with its traceback), stops beating for
`2 * heartbeat_s` or makes no progress inside a step for `services.hang_timeout_s` (hung) is killed and replaced: the groups of its unsealed step are dropped from the bus (`bus.discard`)
and the step goes back to be drawn by the next idle replica. Past `services.max_restarts` restarts of one replica the
run stops (`RunStopped`) naming it, the step and the last error.

Scaling: at every tick (a quarter second at most) the role takes a request written by `python -m rlx.scale`
(`rlx.services.scaling`) and starts or removes replicas (the highest-numbered first). A removed replica's pipe is
closed at once: its unsealed step, if any, is discarded and drawn again by another replica, and its child ends after
the step in progress (killed after `LEAVE_GRACE_S`).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import jax
import numpy as np
from flax import nnx

from rlx.bus import BusClosed, StalenessGate, TransferQueue
from rlx.config import Config
from rlx.errors import RunStopped, UserError
from rlx.rollout.partial import Carried
from rlx.services.generation import host_weights
from rlx.services.generator_replica import ProcessTransport, Replica
from rlx.services.scaling import take_request

log = logging.getLogger(__name__)
LEAVE_GRACE_S = 30.0  # a removed replica's child may finish its step this long before it is killed
Published = Callable[[], tuple[nnx.State, int] | None]  # the weight mailbox's `take`


class Transport(Protocol):
    """Where the replicas run and how arrays reach them: child processes and shared memory (`ProcessTransport`), or
    Ray actors and Ray's object store (`rlx.services.generator_ray.RayTransport`). Its replicas have `Replica`'s methods."""

    def replica(self, index: int) -> Replica: ...  # not started yet: `spawn` starts it
    def share_weights(self, arrays: dict[str, np.ndarray], version: int) -> Any: ...  # what a `weights` message carries
    def drop_weights(self, handle: Any) -> None: ...  # superseded weights no starting replica still reads
    def read_group(self, handle: Any) -> dict[str, np.ndarray]: ...  # the arrays a `group` message carries
    def wait(self, replicas: Sequence[Replica], timeout: float) -> list[Replica]: ...  # those with a message within timeout s
    def close(self) -> None: ...


class ProcessGeneratorRole:
    """Draws steps `first..last` in `config.services.generators` child processes; the thread role's interface (`GeneratorRole`)."""

    def __init__(self, config: Config, bus: TransferQueue, gate: StalenessGate, first: int, last: int, published: Published,
                 data_state: dict[str, Any], max_restarts: int, heartbeat_s: float, transport: Transport | None = None,
                 carried: Carried | None = None):
        self.config, self.bus, self.gate = config, bus, gate
        self.last = last
        self.published, self.max_restarts, self.heartbeat_s = published, max_restarts, heartbeat_s
        self.error: BaseException | None = None
        self.replicas: dict[int, Replica] = {}  # by index; changed by the supervising thread only
        self._undrawn = set(range(first, last + 1))  # steps not sealed and not assigned to a replica
        self._sealed: set[int] = set()  # sealed steps past `_frontier`
        self._frontier = first  # the first step not sealed
        self._positions = {first: data_state}  # the prompt stream's position where a step begins, where known
        self._carried = {first: carried}  # the partial rollouts' work carried into a step, where known
        self._run_dir = Path(config.run.output_dir)
        self._transport = transport or ProcessTransport()
        self._lock = threading.Lock()  # the pipes' sending ends, the weights block, assignments; shared with the learner's thread
        self._weights: tuple[Any, int] | None = None  # the latest weights as the transport shares them, and their version
        self._retired: list[tuple[Any, int]] = []  # superseded weights that a starting child may still read
        self._failures: dict[int, str] = {}  # replica index -> why it failed, found while reading its messages
        self._leaving: list[threading.Thread] = []  # removed replicas' children ending
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="rlx-generator-supervisor", daemon=True)
        self._post_weights()

    # -- the role's interface ------------------------------------------------------------------
    def start(self) -> "ProcessGeneratorRole":
        with self._lock:
            for index in range(self.config.services.generators):
                self._add(index)
        self._thread.start()
        return self

    def advance(self, version: int) -> None:
        """The learner published `version`: its weights and admission go to the replicas that are up."""
        with self._lock:
            posted = self._post_weights()
            self.gate.publish(version)
            for replica in self.replicas.values():
                if replica.up():  # one that is down or starting is caught up when it is ready
                    if posted:
                        replica.send_weights(self._weights)
                    replica.send(("admit", version))
            self._dispatch()

    def health(self) -> dict[str, dict]:
        return {name: state for replica in list(self.replicas.values()) for name, state in replica.health().items()}

    def stop(self, timeout: float = 60.0) -> None:
        """Stops the children (asked first, killed after a few seconds) and the supervising thread; removes the shared memory."""
        self._stopping.set()
        self.gate.close()
        self.bus.close()
        with self._lock:
            for replica in self.replicas.values():
                replica.send(("stop",))
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"generator supervisor still running {timeout} s after shutdown")
        for replica in self.replicas.values():
            replica.end(grace_s=5.0)
        for leaving in self._leaving:
            leaving.join()
        for shared, _ in self._retired + ([self._weights] if self._weights is not None else []):
            self._transport.drop_weights(shared)
        self._transport.close()

    # -- weights ---------------------------------------------------------------------------------
    def _post_weights(self) -> bool:
        """Takes newly published weights into a fresh shared-memory block; False if none. The previous block is removed
        once no starting child still has to read it (`_drop_retired`)."""
        taken = self.published()
        if taken is None:
            return False
        weights, version = taken
        if self._weights is not None:
            self._retired.append(self._weights)
        arrays = host_weights(jax.block_until_ready(weights))
        self._weights = self._transport.share_weights(arrays, version), version
        self._drop_retired()
        return True

    def _drop_retired(self) -> None:
        """Removes superseded weights no starting child was given first (a running child reading one finds it gone and
        takes the newer block sent after)."""
        starting = {replica.version for replica in self.replicas.values() if not replica.ready}
        for shared, version in self._retired:
            if version not in starting:
                self._transport.drop_weights(shared)
        self._retired = [(shared, version) for shared, version in self._retired if version in starting]

    # -- replicas and steps (under the lock) -----------------------------------------------------
    def _add(self, index: int) -> None:
        replica = self._transport.replica(index)
        replica.spawn(self.config, self._weights, self.gate.published)
        self.replicas[index] = replica

    def _dispatch(self) -> None:
        """Gives each admitted undrawn step, lowest first, to an idle replica, the one that drew fewest steps first."""
        idle = sorted((r for r in self.replicas.values() if r.step is None and r.up()), key=lambda r: (r.drawn, r.index))
        for replica in idle:
            step = min(self._undrawn, default=None)
            if step is None or not self.gate.admits(step):
                return
            self._undrawn.remove(step)
            known = max(begins for begins in self._positions if begins <= step)
            carried = self._carried.get(step) if replica.drawn == 0 else None  # a child that drew the step before has its own
            replica.assign(step, self._positions[known], step - known, carried)

    def _release(self, replica: Replica) -> int | None:
        """Takes back the replica's unsealed step (its groups dropped from the bus), to be drawn again; returns it."""
        step = replica.step
        replica.step = None
        if step is not None:
            dropped = self.bus.discard(step)
            self._undrawn.add(step)
            log.info("step %d goes back to be drawn again (%s had put %d of its groups: dropped)", step, replica.name, dropped)
        return step

    def _sealed_step(self, replica: Replica, step: int, meta: dict[str, Any]) -> None:
        replica.sealed()
        self._positions[step + 1], self._carried[step + 1] = meta["data_state"], meta.get("carried")
        self._sealed.add(step)
        while self._frontier in self._sealed:
            self._sealed.remove(self._frontier)
            self._frontier += 1
        self._positions = {begins: state for begins, state in self._positions.items() if begins >= self._frontier}
        self._carried = {begins: carried for begins, carried in self._carried.items() if begins >= self._frontier}
        self._dispatch()

    # -- the supervising thread ----------------------------------------------------------------------
    def _supervise(self) -> None:
        try:
            while not self._stopping.is_set() and self._frontier <= self.last:
                self._receive(tick=min(self.heartbeat_s / 4, 0.25))
                for replica in list(self.replicas.values()):
                    reason = self._failures.pop(replica.index, None) or self._exited_or_hung(replica)
                    if reason is not None:
                        self._replace(replica, reason)
                self._rescale(take_request(self._run_dir))
            with self._lock:
                for replica in self.replicas.values():
                    replica.send(("done",))  # every step is sealed
        except BusClosed:
            pass  # shut down while putting
        except BaseException as err:  # handed to the learner's thread, which re-raises it
            log.error("generator role failed: %s", err)
            self.error = err
            self.bus.close()

    def _receive(self, tick: float) -> None:
        """Handles the messages that arrive within `tick` seconds."""
        listening = [replica for replica in self.replicas.values() if replica.listening()]
        if not listening:
            time.sleep(tick)
            return
        for replica in self._transport.wait(listening, tick):
            self._read(replica)

    def _read(self, replica: Replica) -> None:
        """Handles what the replica's child has sent so far; a failure it reports is kept for `_replace`."""
        try:
            while replica.index not in self._failures and replica.poll():
                reason = self._handle(replica, replica.recv())
                if reason is not None:
                    self._failures[replica.index] = reason
        except (EOFError, OSError):
            replica.join(self.heartbeat_s)  # the child closed its end: it is exiting

    def _exited_or_hung(self, replica: Replica) -> str | None:
        if replica.exited():
            self._read(replica)  # its last words: the traceback of a failure, or groups sent before it was killed
            return self._failures.pop(replica.index, None) or replica.exit_reason()
        return replica.silence(self.heartbeat_s, self.config.services.hang_timeout_s)

    def _handle(self, replica: Replica, message: tuple) -> str | None:
        kind = message[0]
        if kind == "group":
            _, step, shared, meta = message
            self.bus.put(step, self._transport.read_group(shared), meta, producer=replica.name)
        elif kind == "seal":
            _, step, meta = message
            meta["metrics"]["services/generator_replica"] = float(replica.index)
            self.bus.seal(step, meta)
            with self._lock:
                self._sealed_step(replica, step, meta)
        elif kind == "ready":
            with self._lock:
                replica.ready = True
                replica.set_status("idle")
                if replica.version < self._weights[1]:  # published while it was starting: catch it up
                    replica.send_weights(self._weights)
                    replica.send(("admit", self.gate.published))
                self._drop_retired()
                self._dispatch()
        elif kind == "failed":
            _, step, what, text = message
            if what == "user":
                raise UserError(f"{replica.name} process, step {step}: {text}")
            return f"{'starting' if step is None else f'step {step}'} failed in {replica.name}'s process:\n{text}"
        return None

    def _replace(self, replica: Replica, reason: str) -> None:
        """Kills the failed child, takes back its unsealed step and starts a fresh one (none once every step is sealed)."""
        replica.end(grace_s=0.0)
        with self._lock:
            step = self._release(replica)
            if self._frontier > self.last:
                return
            where = "while starting" if step is None and not replica.ready else ("between steps" if step is None else f"at step {step}")
            if replica.restarts >= self.max_restarts:
                raise RunStopped(f"the {replica.name} role failed {where} after {replica.restarts} restarts (services.max_restarts="
                                 f"{self.max_restarts}); its last error: {reason}")
            replica.restarts += 1
            log.warning("%s failed %s (%s); restart %d of %d", replica.name, where, reason, replica.restarts, self.max_restarts)
            replica.spawn(self.config, self._weights, self.gate.published)
            replica.set_status("restarting")
            self._drop_retired()
            self._dispatch()  # its step, to a replica that is ready

    def _rescale(self, wanted: int | None) -> None:
        """Starts or removes replicas so that `wanted` run (None: no request)."""
        if wanted is None:
            return
        one = {"algorithm.dynamic_sampling": self.config.algorithm.dynamic_sampling,
               "rollout.token_budget": self.config.rollout.token_budget is not None}
        if wanted > 1 and any(one.values()):
            log.error("ignored the request for %d generators: %s runs with one", wanted, " and ".join(name for name, on in one.items() if on))
            return
        log.info("generators: %d -> %d", len(self.replicas), wanted)
        with self._lock:
            for index in range(wanted):
                if index not in self.replicas:
                    self._add(index)
            for index in sorted(self.replicas, reverse=True):
                if index >= wanted:
                    self._remove(self.replicas.pop(index))
            self._drop_retired()
            self._dispatch()

    def _remove(self, replica: Replica) -> None:
        replica.close_pipe()
        self._failures.pop(replica.index, None)
        self._release(replica)
        leaving = threading.Thread(target=replica.end, args=(LEAVE_GRACE_S,), name=f"rlx-{replica.name}-leaving", daemon=True)
        leaving.start()
        self._leaving.append(leaving)
