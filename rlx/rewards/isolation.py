"""A pool of worker processes that call functions with a deadline per call, from any thread.

Reward functions are untrusted: SymPy (math-verify) can be stuck in a C-level loop no exception
reaches, a plug-in can sleep forever, segfault or `os._exit`. Each call here runs in a worker
process; the caller gets a `Pending` at once and its result later, so a batch is scored across the
pool concurrently and the calling thread (the generator role) never blocks on one call. A call past
`timeout_s` kills its worker (`CallTimeout`); a worker that dies mid-call fails it (`WorkerError`);
either way a fresh worker replaces it. A process killed outright takes its workers with it, even
mid-call (Linux). Workers are forked from Python's fork server (a clean process that never ran
JAX's threads, with rlx's record types imported once), so a replacement starts in milliseconds
instead of the seconds a spawned interpreter needs.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import multiprocessing
import multiprocessing.util
import os
import queue
import sys
import threading
import time
import weakref
from multiprocessing.connection import Connection
from typing import Any, Callable, Sequence

from rlx.lifetime import die_with_parent

log = logging.getLogger(__name__)

# A worker needs this long at most to start (import the functions' modules, then `setup`); waited for
# separately, so a call's deadline counts only the call.
START_TIMEOUT_S = 120.0
# How often an idle worker is checked (a dead one is replaced before a call needs it).
HEALTH_CHECK_S = 1.0
# How often the fork server checks that the pool's process is alive.
ORPHAN_CHECK_S = 0.5
# Imported once by the fork server, so workers forked from it start without importing them.
PRELOAD = ["rlx.rewards.isolation", "rlx.data.records"]


def _in_fork_server() -> bool:
    return any(arg.startswith("from multiprocessing.forkserver import main") for arg in sys.orig_argv)


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(ORPHAN_CHECK_S)
    os._exit(0)


if _in_fork_server():
    # Each worker holds the fork server open (multiprocessing's liveness pipe): it would outlive the pool's process
    # while a worker is stuck in a call. Exiting with that process, it takes its workers with it (`_serve`). Watched
    # from a thread: a parent-death signal would come when the *thread* that started the fork server ends.
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True, name="orphan-check").start()


def _main_module() -> list[str]:
    """The program's main module (`python -m rlx.launch`): each worker runs it again as `__mp_main__`
    (multiprocessing's rule), which is cheap once the fork server has imported what it imports."""
    name = getattr(sys.modules["__main__"].__spec__, "name", None)
    return [name] if name is not None and not name.endswith("__main__") else []

Setup = Callable[[], dict[str, Callable[..., Any]]]  # run once in each worker: the functions it serves, by name


class CallTimeout(RuntimeError):
    """The call ran past its deadline; its worker process was killed."""


class WorkerError(RuntimeError):
    """The function raised in the worker, or the worker died; the message carries the cause."""


def _serve(conn: Connection, setup: Setup) -> None:
    die_with_parent()  # its parent is the fork server's one thread, which exits with the pool's process
    try:
        functions = setup()
    except Exception as err:  # reported to the pool, which fails the calls waiting for this worker
        conn.send(("failed", f"{type(err).__name__}: {err}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            name, args = conn.recv()
        except (EOFError, ConnectionResetError):
            return  # the pool closed the pipe, or its process was killed
        try:
            conn.send(("ok", functions[name](*args)))
        except Exception as err:  # reported to the caller, who counts it
            conn.send(("error", f"{type(err).__name__}: {err}"))


Pending = concurrent.futures.Future  # `.result()`: the value, or raises CallTimeout / WorkerError

_open_pools: "weakref.WeakSet[WorkerPool]" = weakref.WeakSet()


@atexit.register  # after `multiprocessing.util`'s own hook (imported above), so it runs first: at exit that hook
def _close_open_pools() -> None:  # terminates the workers and the fork server, which idle checks would "replace"
    for pool in list(_open_pools):
        pool.close()


class WorkerPool:
    """`workers` processes serving the functions `setup` builds; `submit` queues a call for the first free one.

    `preload`: more modules for the fork server to import once (e.g. a plug-in's), when this pool starts it.
    """

    def __init__(self, setup: Setup, workers: int, timeout_s: float, name: str = "reward", preload: Sequence[str] = ()):
        if workers < 1:
            raise ValueError(f"a worker pool needs >= 1 worker, got {workers}")
        self.timeout_s, self.name = timeout_s, name
        self._calls: queue.Queue[tuple[str, tuple, Pending] | None] = queue.Queue()
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([*PRELOAD, *_main_module(), *preload])  # no effect once the fork server runs (one per parent process)
        self._workers = [_Worker(context, setup, f"{name}-{index}") for index in range(workers)]
        self._threads = [threading.Thread(target=self._serve_calls, args=(worker,), name=worker.name, daemon=True) for worker in self._workers]
        self._closed = False
        _open_pools.add(self)
        for thread in self._threads:
            thread.start()  # each starts its worker: they boot (the fork server first) while the caller goes on

    def submit(self, function: str, *args: Any) -> Pending:
        if self._closed:
            raise RuntimeError(f"{self.name} pool is closed")
        pending = Pending()
        self._calls.put((function, args, pending))
        return pending

    def call(self, function: str, *args: Any) -> Any:
        return self.submit(function, *args).result()

    def worker_pids(self) -> list[int | None]:
        return [worker.pid for worker in self._workers]

    def restarts(self) -> int:
        """Workers replaced so far (after a timeout or a crash)."""
        return sum(worker.restarts for worker in self._workers)

    def health(self) -> dict[str, dict]:
        """Each worker's {"pid", "status", "restarts", "last_heartbeat"}, by name (`rlx.services.health`)."""
        return {worker.name: {"pid": worker.pid, "status": worker.status, "restarts": worker.restarts,
                              "last_heartbeat": worker.last_heartbeat} for worker in self._workers}

    def close(self) -> None:
        """Fails calls still queued, stops every worker and joins the threads."""
        if self._closed:
            return
        self._closed = True
        _open_pools.discard(self)
        for _ in self._threads:
            self._calls.put(None)
        for worker in self._workers:
            worker.closed = True
            if worker.process is not None:
                worker.process.kill()  # a thread waiting on a call sees its worker die
        for thread in self._threads:
            thread.join(10.0)
        for worker in self._workers:
            worker.kill()
        while not self._calls.empty():
            item = self._calls.get_nowait()
            if item is not None:
                item[2].set_exception(WorkerError(f"{self.name} pool closed before the call ran"))

    def _serve_calls(self, worker: "_Worker") -> None:
        try:
            worker.start()
        except Exception:  # the fork server failed; the next call tries again and fails with the cause
            log.exception("reward worker %s did not start", worker.name)
        while True:
            try:
                item = self._calls.get(timeout=HEALTH_CHECK_S)
            except queue.Empty:
                worker.check()  # idle: is it still there?
                continue
            if item is None:
                return
            function, args, pending = item
            if not pending.set_running_or_notify_cancel():
                continue
            try:
                pending.set_result(worker.call(function, args, self.timeout_s))
            except (CallTimeout, WorkerError) as err:
                pending.set_exception(err)
            except Exception as err:  # starting a worker failed: the caller counts it, the thread serves on
                pending.set_exception(WorkerError(f"{function}: no worker process ({type(err).__name__}: {err})"))
            if self._closed:
                return


class _Worker:
    """One worker process and its pipe; used by one pool thread only."""

    def __init__(self, context: Any, setup: Setup, name: str):
        self.context, self.setup, self.name = context, setup, name
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.ready = False
        self.restarts = 0
        self.closed = False  # the pool is closing: start no more processes
        self.status, self.last_heartbeat = "starting", time.time()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        if self.closed:
            return
        self._beat("starting")
        parent, child = self.context.Pipe()
        process = self.context.Process(target=_serve, args=(child, self.setup), daemon=True, name=self.name)
        process.start()
        child.close()
        self.process, self.conn, self.ready = process, parent, False  # only a started process is seen (`close` kills it)

    def call(self, function: str, args: tuple, timeout_s: float) -> Any:
        if self.process is None:  # it did not start, or did not answer its handshake
            if self.closed:
                raise WorkerError(f"{function}: the pool is closed")
            self.start()
            self.restarts += 1
        self._wait_ready()
        self._beat("busy")
        try:
            self.conn.send((function, args))
            finished = self.conn.poll(timeout_s)
            outcome = self.conn.recv() if finished else None
        except (EOFError, OSError) as err:  # it died mid-call: a crash, os._exit, a signal
            reason = self._exit_reason(err)
            self._replace()
            raise WorkerError(f"{function}: its worker process died during the call ({reason}); a fresh one replaces it") from None
        if outcome is None:
            self._replace()
            raise CallTimeout(f"{function} ran past its {timeout_s:g} s deadline (reward.timeout_s); its worker was killed and replaced")
        self._beat("idle")
        status, value = outcome
        if status == "error":
            raise WorkerError(value)
        return value

    def check(self) -> None:
        """Between calls: a worker that died idle (killed from outside) is replaced; a live one beats."""
        if self.process is None or self.closed:
            return
        if not self.process.is_alive():
            if not self.closed:  # (`close` kills it too)
                log.warning("reward worker %s (pid %s) died while idle (%s); starting a fresh one", self.name, self.pid, self._exit_reason(None))
                self._replace()
            return
        if not self.ready and self.conn.poll(0):
            try:
                self._wait_ready()  # it answered: take its handshake now, so it reports "idle"
            except WorkerError as err:
                log.warning("%s", err)
                return
        self._beat(self.status)

    def _beat(self, status: str) -> None:
        self.status, self.last_heartbeat = status, time.time()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.join()
        if self.conn is not None:
            self.conn.close()
        self.process, self.conn, self.ready = None, None, False
        self.status = "stopped"

    def _replace(self) -> None:
        self.kill()
        if not self.closed:
            self.start()
            self.restarts += 1

    def _exit_reason(self, err: BaseException | None) -> str:
        self.process.join(1.0)
        code = self.process.exitcode
        if code is None:
            return repr(err)
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def _wait_ready(self) -> None:
        if self.ready:
            return
        began = time.perf_counter()
        try:
            status, message = self.conn.recv() if self.conn.poll(START_TIMEOUT_S) else ("failed", "no answer")
        except (EOFError, OSError):  # it died importing (its traceback is on stderr)
            status, message = "failed", "it exited while starting"
        if status != "ready":
            self.kill()  # the next call starts another
            raise WorkerError(f"worker process {self.name} did not start ({message}, {time.perf_counter() - began:.1f} s)")
        self.ready = True
        self._beat("idle")
