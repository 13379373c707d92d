"""`python -m rlx.scale --run runs/NAME --generators K`: a live run (`services.backend: process` or `ray`) draws with K
generators (processes or Ray actors) from now on, without stopping the learner.

The request goes through a file in the run directory (`rlx.services.scaling`); the run takes it within a quarter
second and starts or removes generator replicas (`rlx.services.generator_process`). This command waits until the
run has taken it. Refused (exit 2): a directory with no live run, a run with `services.backend: local`, K < 1, or a
K the run's config does not allow (e.g. K > 1 with `algorithm.dynamic_sampling`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from rlx.config import Config, ConfigError, from_dict, read_yaml
from rlx.errors import MissingInputError, UserError, add_debug_flag, run_guarded
from rlx.services.scaling import request_generators

FINISHED = ("done", "failed")  # a learner in services.json with these statuses has ended


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlx.scale", description="Add or remove generators of a live run.")
    parser.add_argument("--run", required=True, help="the live run's output_dir (holds config.yaml and services.json)")
    parser.add_argument("--generators", type=int, required=True, help="how many generators (processes or Ray actors) the run keeps from now on")
    parser.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the run to take the request (default 10)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    return run_guarded(lambda: scale(Path(args.run), args.generators, args.wait), args.debug)


def scale(run: Path, generators: int, wait_s: float = 10.0) -> int:
    """Asks the live run in `run` for `generators` generator processes and waits until it took the request."""
    if generators < 1:
        raise UserError(f"--generators {generators}: a run needs at least 1 generator process")
    _check_config(run, generators)
    _check_live(run)
    path = request_generators(run, generators)
    began = time.monotonic()
    while path.exists():
        if time.monotonic() - began > wait_s:
            path.unlink(missing_ok=True)
            raise UserError(f"the run in {run} did not take the request within {wait_s:g} s (is it still alive? see {run / 'services.json'})")
        time.sleep(0.05)
    print(f"{run}: {generators} generator process(es) requested; taken in {time.monotonic() - began:.2f} s")
    return 0


def _check_config(run: Path, generators: int) -> None:
    raw = read_yaml(run / "config.yaml") if (run / "config.yaml").is_file() else None
    if raw is None:
        raise MissingInputError(f"{run} holds no config.yaml: not a run directory (pass the run's run.output_dir)")
    services = {**raw.get("services", {}), "generators": generators}
    try:
        config = from_dict(Config, {**raw, "services": services})
    except ConfigError as err:
        raise ConfigError(f"{run}: {err}") from None
    if config.services.backend == "local":
        raise UserError(f"the run in {run} uses services.backend: local; only a process or ray run's generators can be "
                        "rescaled (start it with services.backend: process or ray)")


def _check_live(run: Path) -> None:
    path = run / "services.json"
    try:
        learner = json.loads(path.read_text())["learner"]
    except (FileNotFoundError, ValueError, KeyError):
        raise UserError(f"no live run in {run}: {path} names no learner (a run writes it once it trains)") from None
    if learner["status"] in FINISHED or not _alive(learner["pid"]):
        raise UserError(f"no live run in {run}: its learner (pid {learner['pid']}) has ended ({learner['status']})")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


if __name__ == "__main__":
    sys.exit(main())
