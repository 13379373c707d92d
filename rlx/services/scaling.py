"""Requests to rescale a live run's generators (`python -m rlx.scale`), passed through a file in the run directory.

`request_generators` writes `<output_dir>/scale_request.json` (`{"generators": K}`, atomically); the generator role
of a process or Ray run (`rlx.services.generator_process`) looks for it at every supervising tick (a quarter second at
most), removes it and adds or removes generator replicas (processes or Ray actors). A request the run has not taken yet is replaced by a newer one.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)
REQUEST = "scale_request.json"


def request_path(run_dir: Path) -> Path:
    return Path(run_dir) / REQUEST


def request_generators(run_dir: Path, generators: int) -> Path:
    """Asks the run in `run_dir` for `generators` generator processes; returns the request's path."""
    path = request_path(run_dir)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"generators": generators}))
    os.replace(partial, path)
    return path


def take_request(run_dir: Path) -> int | None:
    """The generator count asked for since the last call (the request is removed), or None. A malformed request is
    logged and dropped."""
    path = request_path(run_dir)
    try:
        text = path.read_text()
        path.unlink()
    except FileNotFoundError:
        return None
    try:
        generators = json.loads(text)["generators"]
        if isinstance(generators, int) and not isinstance(generators, bool) and generators >= 1:
            return generators
    except (ValueError, KeyError, TypeError):
        pass
    log.error("ignored %s: %r is not {\"generators\": K} with K >= 1 (write it with python -m rlx.scale)", path, text)
    return None
