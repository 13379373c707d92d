"""Health of a run's roles: each role's process, status, restarts and last heartbeat, in one place.

Roles report through sources (callables returning `{role: {"pid", "status", "restarts", "last_heartbeat"}}`):
the generator role (`GeneratorRole.health`), the reward worker pool (`WorkerPool.health`, one entry per
worker: `reward-0`, `reward-1`, ...) and the learner (`Health.clock`, beaten by the loop once per step). A thread rewrites
`<output_dir>/services.json` every `services.heartbeat_s` while the run is live (atomically: a reader never
sees half a file), and once more at the end; the loop adds `services/restarts/<role>` and
`services/heartbeat_age_s/<role>` to every step's metrics. Heartbeats are wall-clock times (`time.time()`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Callable

RoleStates = dict[str, dict]  # role -> {"pid": int, "status": str, "restarts": int, "last_heartbeat": float}
Source = Callable[[], RoleStates]


class RoleClock:
    """A role in this process that beats as it works (the learner once per step, the generator at each phase)."""

    def __init__(self, name: str, status: str = "starting"):
        self.name, self.status, self.last_heartbeat = name, status, time.time()
        self.restarts = 0

    def beat(self, status: str) -> None:
        self.status, self.last_heartbeat = status, time.time()

    def health(self) -> RoleStates:
        return {self.name: {"pid": os.getpid(), "status": self.status, "restarts": self.restarts, "last_heartbeat": self.last_heartbeat}}


class Health:
    """Collects the roles' states from their sources; writes them to `path` (None: no file) every `interval_s`
    while entered, and once more on exit (after the roles entered inside it have stopped)."""

    def __init__(self, path: Path | None, interval_s: float):
        self.path, self.interval_s = path, interval_s
        self.sources: list[Source] = []
        self._clocks: list[RoleClock] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write_every_interval, name="rlx-health", daemon=True)

    def watch(self, source: Source) -> None:
        self.sources.append(source)

    def clock(self, name: str, status: str) -> RoleClock:
        """A role of this thread that beats by hand; on exit it reads `done`, or `failed` when an error ended the run."""
        clock = RoleClock(name, status)
        self._clocks.append(clock)
        self.watch(clock.health)
        return clock

    def states(self) -> RoleStates:
        return {role: state for source in self.sources for role, state in source().items()}

    def metrics(self) -> dict[str, float]:
        now = time.time()
        metrics = {}
        for role, state in self.states().items():
            metrics[f"services/restarts/{role}"] = float(state["restarts"])
            metrics[f"services/heartbeat_age_s/{role}"] = max(now - state["last_heartbeat"], 0.0)
        return metrics

    def __enter__(self) -> "Health":
        self._write()
        self._thread.start()
        return self

    def __exit__(self, error_type, *exc) -> None:
        for clock in self._clocks:
            clock.beat("failed" if error_type is not None else "done")
        self._stop.set()
        self._thread.join(self.interval_s + 10.0)
        self._write()  # the roles' final states

    def _write_every_interval(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.states(), indent=1, sort_keys=True))
        os.replace(partial, self.path)
