"""The generator role as Ray actors (`services.backend: ray`): `ProcessGeneratorRole`'s logic (steps handed out whole,
restart from the first unsealed step, heartbeats, scaling) with `RayTransport` for its replicas.

Each replica (`generator`, `generator-1`, ...) is a `GeneratorActor` with `services.ray_generator_cpus` /
`ray_generator_gpus`, running the process backend's role code (`generator_child.Child`) on method calls: the learner's
messages arrive numbered (`deliver`: a threaded actor may run calls out of order; they run while `run` generates, so
weights published mid-step reach the child's mailbox there, for `bus.interrupt`), the child's leave through `receive`,
which the learner keeps one call of in flight per replica (it answers within `heartbeat_s / 2`). Group arrays come
back as numpy arrays in `receive`'s return value (Ray's object store, no per-token pickling); each published version
of the weights is put into the object store once (`ray.put`), and every replica reads that one host copy (checked
against its model's shapes and dtypes as with the process backend). Health: the learner hears from a live actor at
least every `heartbeat_s / 2`, and each answer carries the actor's progress count; one whose call fails (its process
killed, `ray.kill`) has exited, one silent for `2 * heartbeat_s` is dead, one whose count stands still inside a step
for `services.hang_timeout_s` is hung (`generator_replica.Liveness`).

`ray.init()` starts a local cluster (all of this machine's CPUs), or joins `services.ray_address`; a process that
already called `ray.init` (e.g. with `num_cpus`) is used as it is. The actors get this process's `JAX_*`, `XLA_*` and
`RLX_*` environment variables and its `PYTHONPATH` with rlx's own directory (on another host rlx must sit there too).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import types
import warnings
from collections import deque
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import ray
from ray.exceptions import RayError

from rlx.config import Config
from rlx.errors import UserError
from rlx.services.generator_child import ArrayLink, Child, cpu_devices, use_cpu_devices
from rlx.services.generator_replica import Liveness, StepKeeping, replica_name

FORWARDED_ENV = ("JAX_", "XLA_", "RLX_")  # prefixes of the environment variables the actors get


class GeneratorActor:
    """`Child` behind method calls; it is its own `Channel`."""

    def __init__(self, config: Config, published: int, cpu_device_count: int):
        use_cpu_devices(cpu_device_count)
        self._status, self._progress = types.SimpleNamespace(value=b"starting"), types.SimpleNamespace(value=0)
        self._child = Child(config, published, self, self._status, self._progress, ArrayLink(put=dict, get=ray.get))
        self._outbox: queue.Queue = queue.Queue()
        self._arrived = threading.Condition()
        self._numbered: dict[int, tuple] = {}  # delivered messages by number
        self._next = 0  # the number `recv` hands out next

    def run(self) -> bytes:
        """Draws what it is assigned until told to stop; its final status."""
        self._child.run()
        return self._status.value

    def deliver(self, number: int, message: tuple) -> None:
        with self._arrived:
            self._numbered[number] = message
            self._arrived.notify_all()

    def receive(self, wait_s: float) -> tuple[int, bytes, int, list[tuple]]:
        """The child's messages so far (waiting up to `wait_s` for a first one), with its pid, status and progress count."""
        messages = []
        try:
            messages.append(self._outbox.get(timeout=wait_s))
            while True:
                messages.append(self._outbox.get_nowait())
        except queue.Empty:
            pass
        return os.getpid(), self._status.value, self._progress.value, messages

    # -- the child's channel ----------------------------------------------------------------------
    def send(self, message: tuple) -> None:
        self._outbox.put(message)

    def recv(self) -> tuple:
        with self._arrived:
            self._arrived.wait_for(lambda: self._next in self._numbered)
            self._next += 1
            return self._numbered.pop(self._next - 1)


class RayReplica(StepKeeping):
    """One generator replica as the learner's process sees it, with `generator_replica.Replica`'s interface: its name,
    restart count and step outlast the actors it starts."""

    def __init__(self, index: int, actor_class: Any, heartbeat_s: float):
        self.index, self.name = index, replica_name(index)
        self.restarts = 0
        self.step: int | None = None
        self.ready = False
        self.drawn = 0
        self.version = -1
        self._actor_class, self._wait_s = actor_class, heartbeat_s / 2
        self._actor: Any = None
        self._run: Any = None  # the actor's `run` call
        self._reply: Any = None  # the `receive` call in flight
        self._inbox: deque = deque()
        self._gone: str | None = None  # why the actor cannot be reached
        self._listening = False
        self._sent = 0
        self._pid, self._status, self._reported = 0, "starting", b""
        self._heard = self._spawned_at = 0.0
        self._progress, self._liveness = 0, Liveness(f"{self.name}'s Ray actor")

    def spawn(self, config: Config, weights: tuple[Any, int], published: int) -> None:
        """Starts a fresh actor; it gets `weights` (the latest) and the `published` version first."""
        self.step, self.ready, self.drawn = None, False, 0
        self._actor = self._actor_class.remote(config, published, cpu_devices())
        self._run = self._actor.run.remote()
        self._reply = self._actor.receive.remote(self._wait_s)
        self._inbox.clear()
        self._gone, self._listening, self._sent = None, True, 0
        self._pid, self._status, self._reported = 0, "starting", b""
        self._heard, self._spawned_at = 0.0, time.time()
        self._progress, self._liveness = 0, Liveness(f"{self.name}'s Ray actor")
        self.send_weights(weights)
        self.send(("admit", published))

    def send(self, message: tuple) -> None:
        self._actor.deliver.remote(self._sent, message)  # to a dead actor: fails unseen; the replica is replaced
        self._sent += 1

    def send_weights(self, weights: tuple[Any, int]) -> None:
        self.send(("weights", weights[1], weights[0]))
        self.version = weights[1]

    def pending(self) -> bool:
        """A message waits, or the actor is gone (`poll` says which)."""
        return bool(self._inbox) or self._gone is not None

    def poll(self) -> bool:
        """Whether a message waits (EOFError once the actor is gone and its messages are read). After the actor's run
        ended, waits for its last answer (at most `heartbeat_s / 2`), which holds its last words."""
        if not self._inbox and self._gone is None and self._listening and (_done(self._reply) or _done(self._run)):
            self._take_reply()
        if not self._inbox and self._gone is not None:
            raise EOFError(self._gone)
        return bool(self._inbox)

    def _take_reply(self) -> None:
        try:
            self._pid, status, self._progress, messages = ray.get(self._reply)
        except RayError as err:
            self._gone = f"{self.name}'s Ray actor died: {str(err).strip().splitlines()[0]}"
            return
        self._heard = time.time()
        if status != self._reported:  # the actor's own status changes win over the role's (`set_status`)
            self._status, self._reported = status.decode(), status
        self._inbox.extend(messages)
        self._reply = self._actor.receive.remote(self._wait_s)

    def recv(self) -> tuple:
        return self._inbox.popleft()

    def reply(self) -> Any:
        """The `receive` call in flight, for `RayTransport.wait`."""
        return self._reply

    def listening(self) -> bool:
        return self._listening

    def exited(self) -> bool:
        return self._gone is not None or _done(self._run)

    def join(self, timeout: float) -> None:
        ray.wait([self._run], timeout=timeout)

    def up(self) -> bool:
        return self.ready and not self.exited() and self._listening

    def silence(self, heartbeat_s: float, hang_timeout_s: float) -> str | None:
        """Why the actor counts as dead or hung (`Liveness`; its answers are its heartbeat and carry its progress count)."""
        return self._liveness.verdict(self._heard, self._spawned_at, heartbeat_s, self._progress, self._status, self.step, hang_timeout_s)

    def exit_reason(self) -> str | None:
        if self._gone is not None:
            return self._gone
        return f"{self.name}'s Ray actor stopped" if _done(self._run) else None

    def set_status(self, text: str) -> None:
        self._status = text

    def health(self) -> dict[str, dict]:
        return {self.name: {"pid": self._pid or os.getpid(), "status": self._status, "restarts": self.restarts,
                            "last_heartbeat": self._heard or self._spawned_at}}

    def close_pipe(self) -> None:
        """Stops listening: the actor ends after the step in progress."""
        self.send(("stop",))
        self._listening = False

    def end(self, grace_s: float) -> None:
        """Waits `grace_s` for the actor's run to end (its final status kept), then kills the actor."""
        if self._actor is None:
            return
        ready, _ = ray.wait([self._run], timeout=grace_s)
        if ready and self._gone is None:
            try:
                self._status = ray.get(self._run).decode()
            except RayError:
                pass  # died meanwhile
        ray.kill(self._actor)
        self._listening = False


class RayTransport:
    """Replicas as Ray actors, arrays through Ray's object store; starts (and at `close` stops) a local cluster unless
    this process is already connected to one."""

    def __init__(self, config: Config):
        services = config.services
        self._started = not ray.is_initialized()
        if self._started:
            start_ray(address=services.ray_address)
        try:
            _check_resources(services.ray_generator_cpus, services.ray_generator_gpus)
        except UserError:
            self.close()
            raise
        options = {"num_cpus": services.ray_generator_cpus, "num_gpus": services.ray_generator_gpus, "max_concurrency": 4,
                   "runtime_env": {"env_vars": actor_env()}}
        self._actor_class = ray.remote(GeneratorActor).options(**options)
        self._heartbeat_s = services.heartbeat_s

    def replica(self, index: int) -> RayReplica:
        return RayReplica(index, self._actor_class, self._heartbeat_s)

    def share_weights(self, arrays: dict[str, np.ndarray], version: int) -> Any:
        return ray.put(arrays)

    def drop_weights(self, handle: Any) -> None:
        pass  # Ray frees an object once no reference to it is left

    def read_group(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return arrays

    def wait(self, replicas: Sequence[RayReplica], timeout: float) -> list[RayReplica]:
        """The replicas with a message (or an answer, or a failed call) within `timeout` s."""
        waiting = [replica for replica in replicas if replica.pending()]
        if waiting:
            return waiting
        by_reply = {replica.reply(): replica for replica in replicas}
        answered, _ = ray.wait(list(by_reply), num_returns=1, timeout=timeout)
        return [by_reply[reply] for reply in answered]

    def close(self) -> None:
        if self._started:
            ray.shutdown()


def start_ray(**init_args: Any) -> None:
    """`ray.init(**init_args)` without the dashboard and Ray's info lines. Ray starts its daemons with fork + exec, which
    is safe beside JAX's threads: the warning Python gives for it is dropped."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
        ray.init(include_dashboard=False, logging_level=logging.WARNING, **init_args)


def _check_resources(cpus: float, gpus: float) -> None:
    """A generator actor's resources exist in the cluster (else it would wait unscheduled until its start times out)."""
    cluster = ray.cluster_resources()
    for name, setting, wanted in (("CPU", "ray_generator_cpus", cpus), ("GPU", "ray_generator_gpus", gpus)):
        if wanted > cluster.get(name, 0):
            raise UserError(f"services.{setting}={wanted} asks more {name}s per generator actor than the Ray cluster has "
                            f"({cluster.get(name, 0):g}); lower it or add nodes")


def actor_env() -> dict[str, str]:
    """The environment variables the actors get: JAX's and rlx's settings, and a `PYTHONPATH` that finds rlx."""
    env = {name: value for name, value in os.environ.items() if name.startswith(FORWARDED_ENV)}
    rlx_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(path for path in (rlx_root, os.environ.get("PYTHONPATH")) if path)
    return env


def _done(ref: Any) -> bool:
    return bool(ray.wait([ref], timeout=0)[0])
