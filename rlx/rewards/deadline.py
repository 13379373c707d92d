"""A deadline for plug-in reward functions, which run in the calling process.

Python cannot stop a thread, so a call past its deadline is abandoned (the caller scores it as an
error) and left to finish in a daemon thread; until it does, further calls fail at once instead of
queueing behind it. Either way nothing waits longer than the deadline, and the run's reward error
guard (`reward.max_error_rate`) stops a run whose reward function keeps failing.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from rlx.rewards.isolation import CallTimeout


class WithDeadline:
    """`fn(*args)` with at most `timeout_s` seconds per call; calls are serialized (plug-ins need not be thread-safe)."""

    def __init__(self, fn: Callable[..., Any], timeout_s: float, name: str):
        self._fn, self._timeout_s, self._name = fn, timeout_s, name
        self._stuck: threading.Thread | None = None
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> Any:
        with self._lock:
            if self._stuck is not None and self._stuck.is_alive():
                raise CallTimeout(f"{self._name} is still in a call that passed its {self._timeout_s:g} s deadline (reward.timeout_s)")
            outcome: dict[str, Any] = {}

            def call() -> None:
                try:
                    outcome["value"] = self._fn(*args)
                except BaseException as err:  # handed to the caller, who counts it
                    outcome["error"] = err

            thread = threading.Thread(target=call, daemon=True, name=f"rlx-reward-{self._name}")
            thread.start()
            thread.join(self._timeout_s)
            if thread.is_alive():
                self._stuck = thread
                raise CallTimeout(f"{self._name} ran past its {self._timeout_s:g} s deadline (reward.timeout_s)")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]
