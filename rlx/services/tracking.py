"""Run outputs: metrics.jsonl, TensorBoard, a console progress bar, user hooks and the reward curve."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from tensorboardX import SummaryWriter

from rlx.plugins import load_object

log = logging.getLogger(__name__)

StepHook = Callable[[int, dict[str, float]], None]


class Tracker:
    """Writes each step's metrics the moment that step ends (never a step late)."""

    def __init__(self, output_dir: Path, total_steps: int, hooks: Sequence[str], progress: bool):
        self.output_dir = output_dir
        self.metrics_path = output_dir / "metrics.jsonl"
        self._hooks: list[StepHook] = [load_object(path) for path in hooks]
        self._writer = SummaryWriter(str(output_dir / "tensorboard"))
        self._progress = Progress(
            TextColumn("[bold]RL"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
            disable=not progress,
        )
        self._task = self._progress.add_task("rl", total=total_steps, status="")
        self._progress.start()
        self._last_val: float | None = None

    def add_hook(self, hook: StepHook) -> None:
        self._hooks.append(hook)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **metrics}
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, step)
        self._writer.flush()
        for hook in self._hooks:
            hook(step, dict(metrics))
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

    def close(self) -> Path:
        self._progress.stop()
        self._writer.close()
        return plot_reward_curve(self.metrics_path, self.output_dir / "reward_curve.png")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_reward_curve(metrics_path: Path, out_path: Path) -> Path:
    """Reward (per RL step) and validation accuracy (where measured) against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
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
    ax.set_title(metrics_path.parent.name)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
