"""Calls a function in a child process with a deadline per call, from any thread.

Signal-based timeouts (`signal.alarm`, which math-verify uses) work only in a process's main
thread, and rewards are scored in the generator role's thread. Here the child runs the call and
the caller waits on a pipe; a call past its deadline kills the child (SymPy can be stuck in a
C-level loop no exception reaches) and the next call starts a fresh one.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Callable

# A child needs this long to start (spawn: a fresh interpreter importing rlx and the function's
# module); it is waited for separately, so a call's deadline counts only the call.
START_TIMEOUT_S = 120.0


class CallTimeout(RuntimeError):
    """The call ran past its deadline; its worker process was killed."""


class WorkerError(RuntimeError):
    """The function raised in the worker, or the worker died; the message carries the cause."""


def _serve(conn: Connection, fn: Callable[..., Any]) -> None:
    conn.send(("ready", None))
    while True:
        try:
            args = conn.recv()
        except EOFError:
            return  # the parent closed the pipe
        try:
            conn.send(("ok", fn(*args)))
        except Exception as err:  # reported to the caller, who counts it
            conn.send(("error", f"{type(err).__name__}: {err}"))


class TimedWorker:
    """One child process calling `fn` (a module-level, importable function); calls are serialized.

    The child is started by `start()` (non-blocking, so it boots while the caller works) or by the
    first call. Spawned, never forked: the parent runs JAX's threads, which a fork would copy mid-flight.
    """

    def __init__(self, fn: Callable[..., Any]):
        self._fn = fn
        self._lock = threading.Lock()
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._ready = False

    def start(self) -> None:
        with self._lock:
            self._spawn_if_needed()

    def call(self, timeout_s: float, *args: Any) -> Any:
        with self._lock:
            self._spawn_if_needed()
            self._wait_ready()
            try:
                self._conn.send(args)
                finished = self._conn.poll(timeout_s)
            except (BrokenPipeError, EOFError, OSError) as err:
                self._kill()
                raise WorkerError(f"worker process died ({err!r}); a new one starts on the next call") from None
            if not finished:
                self._kill()
                raise CallTimeout(f"{self._fn.__name__} ran past its {timeout_s:g} s deadline; its worker was killed")
            try:
                status, value = self._conn.recv()
            except EOFError:
                self._kill()
                raise WorkerError("worker process died during the call; a new one starts on the next call") from None
        if status == "error":
            raise WorkerError(value)
        return value

    def close(self) -> None:
        with self._lock:
            self._kill()

    def _spawn_if_needed(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        if self._process is not None:
            self._kill()
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, self._fn), daemon=True, name=f"rlx-{self._fn.__name__}")
        self._process.start()
        child.close()
        self._conn, self._ready = parent, False

    def _wait_ready(self) -> None:
        if self._ready:
            return
        began = time.perf_counter()
        try:
            ready = self._conn.poll(START_TIMEOUT_S) and self._conn.recv() == ("ready", None)
        except EOFError:  # it died importing (its traceback is on stderr)
            ready = False
        if not ready:
            self._kill()
            raise WorkerError(f"worker process for {self._fn.__name__} did not start ({time.perf_counter() - began:.0f} s); see its error above")
        self._ready = True

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join()
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn, self._ready = None, None, False
