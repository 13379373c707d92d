"""Run outputs: step metrics to the configured loggers, a console progress bar, user hooks and the reward curve.

In a multi-process run every process reports its metrics, they are combined into the run's
(`combine_processes`), and process 0 alone writes them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rlx.config import RunConfig
from rlx.errors import UserError
from rlx.parallel.processes import Processes
from rlx.plugins import load_object
from rlx.services.loggers import Sink, open_sinks

log = logging.getLogger(__name__)

StepHook = Callable[[int, dict[str, float]], None]

# How the run's value of a metric follows from each process's. Processes train on equally many rows,
# so the mean of their row means is the run's mean: the default. First matching prefix wins; `*_max`
# takes the maximum. A metric a process does not report (a staleness histogram bin) counts as 0 there.
ACROSS_PROCESSES: tuple[tuple[str, Callable[[list[float]], float]], ...] = (
    ("timing_s/", max), ("bus/wait_s/", max),  # a step waits for the slowest process
    ("perf/", sum),  # throughputs add up
    ("bus/", sum), ("reward/errors", sum), ("reward/timeouts", sum), ("rollout/truncated_prompts", sum), ("rollout/carried_lost_on_resume", sum),
    ("rollout/carried_restored_on_resume", sum), ("rollout/in_flight_restored_on_resume", sum),
    ("dapo/dropped_groups", sum), ("dapo/filled_groups", sum),  # counts
    ("rollout/compiles", max), ("dapo/sampling_rounds", max),
    ("services/restarts/", sum), ("services/heartbeat_age_s/", max),
)


def combine_processes(per_process: list[dict[str, float]]) -> dict[str, float]:
    """The run's metrics from every process's (process 0's names first); equal values stay exactly as they are."""
    names = list(dict.fromkeys(name for metrics in per_process for name in metrics))
    combined = {}
    for name in names:
        values = [metrics.get(name, 0.0) for metrics in per_process]
        reduce = next((rule for prefix, rule in ACROSS_PROCESSES if name.startswith(prefix)), None)
        reduce = reduce or (max if name.endswith("_max") else lambda v: sum(v) / len(v))
        combined[name] = values[0] if all(v == values[0] for v in values) and reduce is not sum else float(reduce(values))
    return combined


class Tracker:
    """Writes each step's metrics the moment that step ends (never a step late).

    Loggers and the progress bar open at the first `log`, so a Trainer built only to evaluate
    (`rlx.eval`) writes nothing into the run. Every process calls `log` (it combines their metrics);
    only the primary one writes, draws the bar and runs the hooks.
    """

    def __init__(self, output_dir: Path, run: RunConfig, config: dict[str, Any], processes: Processes | None = None):
        self.output_dir = output_dir
        self.metrics_path = output_dir / "metrics.jsonl"
        self._run, self._config = run, config
        self._processes = processes or Processes()
        self._writes = self._processes.primary
        self._hooks: list[tuple[str, StepHook]] = [(path, load_object(path)) for path in run.hooks] if self._writes else []
        self._sinks: list[Sink] | None = None
        self._rows: list[dict[str, Any]] = []  # this process's steps, for the curve when metrics.jsonl is off
        self._progress = Progress(
            TextColumn("[bold]RL"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
            disable=not (run.progress and self._writes),
        )
        self._task = self._progress.add_task("rl", total=run.steps, status="")
        self._last_val: float | None = None

    def add_hook(self, hook: StepHook) -> None:
        self._hooks.append((getattr(hook, "__qualname__", repr(hook)), hook))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self._processes.count > 1:
            metrics = combine_processes(self._processes.allgather(metrics))
        if not self._writes:
            return
        if self._sinks is None:
            self._sinks = open_sinks(self._run.loggers, self.output_dir, self._run.wandb_project, self._config)
            self._progress.start()
        self._rows.append({"step": step, **metrics})
        for sink in self._sinks:
            sink.log(step, metrics)
        for name, hook in self._hooks:
            try:
                hook(step, dict(metrics))
            except Exception as err:  # the user's code: name it, the step's checkpoint and metrics are already written
                raise UserError(f"hook {name} (run.hooks) raised at step {step}: {type(err).__name__}: {err}; "
                                "fix it and run again to resume") from err
        self._update_progress(step, metrics)

    def _update_progress(self, step: int, metrics: dict[str, float]) -> None:
        self._last_val = metrics.get("val/accuracy", self._last_val)
        parts = [f"step {step}"]
        if "reward/mean" in metrics:
            parts.append(f"reward {metrics['reward/mean']:.3f}")
        if self._last_val is not None:
            parts.append(f"val acc {self._last_val:.3f}")
        if "perf/tokens_per_s" in metrics:
            parts.append(f"{metrics['perf/tokens_per_s']:.0f} tok/s")
        self._progress.update(self._task, completed=step, status="  ".join(parts))

    def close(self) -> Path | None:
        """Closes the loggers and draws the reward curve; None when nothing was logged."""
        if self._sinks is None:
            return None
        self._progress.stop()
        for sink in self._sinks:
            sink.close()
        rows = read_metrics(self.metrics_path) if "jsonl" in self._run.loggers else self._rows
        return plot_reward_curve(rows, self.output_dir / "reward_curve.png", self.output_dir.name)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_reward_curve(rows: list[dict[str, Any]], out_path: Path, title: str) -> Path:
    """Reward (per RL step) and validation accuracy (where measured) against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reward = [(r["step"], r["reward/mean"]) for r in rows if "reward/mean" in r]
    val = [(r["step"], r["val/accuracy"]) for r in rows if "val/accuracy" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if reward:
        ax.plot(*zip(*reward), label="reward/mean (train rollouts)", alpha=0.7)
    if val:
        ax.plot(*zip(*val), "o-", label="val/accuracy (greedy)")
    ax.set_xlabel("RL step")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if reward or val:
        ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
