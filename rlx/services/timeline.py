"""`run.trace: true`: each role's phases per step (generate, reward, learn, publish, waits) as a timeline.

Written at the end of a run as `trace.json` in the Chrome trace event format (open it in
https://ui.perfetto.dev or chrome://tracing: one row per role, one box per phase, the step in
its arguments) and drawn as `timeline.png`; `plot_timeline(trace, png, steps=(20, 24))` draws a window of steps.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any, Iterator

ROLES = ("learner", "generator")
PHASE_COLOURS = {"generate": "tab:blue", "reward": "tab:cyan", "bus_put": "tab:purple", "wait_admission": "lightgrey",
                 "wait_batch": "lightgrey", "learn": "tab:orange", "publish": "tab:red", "evaluate": "tab:green", "save": "tab:brown"}


class Timeline:
    """Collects spans from any thread; a Timeline without a path records nothing."""

    def __init__(self, path: Path | None):
        self.path = path
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._origin = time.perf_counter()

    @contextlib.contextmanager
    def span(self, role: str, phase: str, step: int) -> Iterator[None]:
        if self.path is None:
            yield
            return
        began = time.perf_counter()
        try:
            yield
        finally:
            ended = time.perf_counter()
            event = {"name": phase, "cat": role, "ph": "X", "pid": 1, "tid": ROLES.index(role) + 1,
                     "ts": (began - self._origin) * 1e6, "dur": (ended - began) * 1e6, "args": {"step": step}}
            with self._lock:
                self._events.append(event)

    def close(self) -> Path | None:
        """Writes `trace.json` and `timeline.png` beside it; returns the trace's path (None when nothing was recorded)."""
        if self.path is None or not self._events:
            return None  # nothing ran (e.g. a Trainer built to evaluate): an earlier trace stays
        names = [{"ph": "M", "name": "thread_name", "pid": 1, "tid": i + 1, "args": {"name": role}} for i, role in enumerate(ROLES)]
        with self._lock:
            events = sorted(self._events, key=lambda e: e["ts"])
        self.path.write_text(json.dumps({"traceEvents": names + events, "displayTimeUnit": "ms"}))
        plot_timeline(self.path, self.path.with_name("timeline.png"))
        return self.path


NO_TIMELINE = Timeline(None)


def read_spans(trace_path: Path, steps: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """The trace's phase events, of steps `first..last` (inclusive) when given."""
    events = [e for e in json.loads(trace_path.read_text())["traceEvents"] if e["ph"] == "X"]
    if steps is not None:
        events = [e for e in events if steps[0] <= e["args"]["step"] <= steps[1]]
    return events


def plot_timeline(trace_path: Path, out_path: Path, steps: tuple[int, int] | None = None) -> Path:
    """One row per role, one bar per phase, step numbers on generate and learn bars; with `steps`, the time
    span of those steps (seconds since it began)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = read_spans(trace_path, steps)
    start = min((e["ts"] for e in chosen), default=0.0)
    end = max((e["ts"] + e["dur"] for e in chosen), default=0.0)
    # Everything that ran in the chosen steps' time span, whichever step it belongs to, cut at its edges.
    events = [e for e in read_spans(trace_path) if e["ts"] < end and e["ts"] + e["dur"] > start]
    fig, ax = plt.subplots(figsize=(11, 2.6))
    for event in events:
        row = ROLES.index(event["cat"])
        left = (max(event["ts"], start) - start) / 1e6
        width = (min(event["ts"] + event["dur"], end) - max(event["ts"], start)) / 1e6
        ax.barh(row, width, left=left, height=0.6, color=PHASE_COLOURS.get(event["name"], "black"), edgecolor="white", linewidth=0.3)
        if steps is not None and event["name"] in ("generate", "learn") and width > (end - start) / 1e6 / 60:
            ax.text(left + width / 2, row, str(event["args"]["step"]), ha="center", va="center", fontsize=7, color="white")
    shown = [phase for phase in PHASE_COLOURS if any(e["name"] == phase for e in events)]
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=PHASE_COLOURS[p]) for p in shown], labels=shown,
              loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=len(shown) or 1, fontsize=8, frameon=False)
    ax.set_yticks(range(len(ROLES)), ROLES)
    ax.set_xlabel("seconds")
    ax.set_title(f"{trace_path.parent.name}" + (f": steps {steps[0]}-{steps[1]}" if steps else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
