"""Where step metrics go (`run.loggers`): metrics.jsonl, TensorBoard, Weights & Biases."""

from __future__ import annotations

import json
import math
import netrc
import os
import uuid
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse


class Sink(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def json_line(row: dict[str, Any]) -> str:
    """`row` as one line of strict JSON: a non-finite number becomes null (JSON has no NaN or Infinity)."""
    def finite(value: Any) -> Any:
        return None if isinstance(value, float) and not math.isfinite(value) else value
    return json.dumps({key: finite(value) for key, value in row.items()}, allow_nan=False) + "\n"


class JsonlSink:
    """One JSON object per step, appended (a resumed run continues the file)."""

    def __init__(self, path: Path):
        self.path = path

    def log(self, step: int, metrics: dict[str, float]) -> None:
        with self.path.open("a") as handle:
            handle.write(json_line({"step": step, **metrics}))

    def close(self) -> None:
        pass


class TensorBoardSink:
    def __init__(self, directory: Path):
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(str(directory))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbSink:
    """A W&B run under `<output_dir>/wandb`, online when an API key is set (`WANDB_API_KEY` or `wandb login`),
    offline otherwise (upload later with `wandb sync`); `WANDB_MODE` overrides both. A resumed run
    continues the same W&B run (its id is kept in `<output_dir>/wandb_run_id`)."""

    def __init__(self, output_dir: Path, project: str, config: dict[str, Any]):
        import wandb

        id_file = output_dir / "wandb_run_id"
        if not id_file.exists():
            id_file.write_text(uuid.uuid4().hex[:12])
        mode = os.environ.get("WANDB_MODE") or ("online" if _has_wandb_key() else "offline")
        self._run = wandb.init(project=project, name=output_dir.name, id=id_file.read_text().strip(), resume="allow",
                               dir=str(output_dir), config=config, mode=mode)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._run.log(metrics, step=step)

    def close(self) -> None:
        self._run.finish()


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def open_sinks(names: tuple[str, ...], output_dir: Path, wandb_project: str, config: dict[str, Any]) -> list[Sink]:
    opened: dict[str, Any] = {
        "jsonl": lambda: JsonlSink(output_dir / "metrics.jsonl"),
        "tensorboard": lambda: TensorBoardSink(output_dir / "tensorboard"),
        "wandb": lambda: WandbSink(output_dir, wandb_project, config),
    }
    return [opened[name]() for name in names]
