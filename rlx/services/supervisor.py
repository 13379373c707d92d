"""The learner as a supervised process (`services.backend: process` or `ray`).

`rlx.launch` stays in a small supervising process and runs the run itself (the learner and the roles it
starts) in a child process. A child that dies without saying why (killed by a signal, out of memory, an
internal error: any exit but 0, 2 bad input, 3 run stopped, 130 interrupted) is started again; being the same
run in the same `run.output_dir`, it resumes from the latest intact checkpoint, which also drops the metric and
rollout rows it had written past that checkpoint (`rlx.services.resume.drop_rows_after`). After
`services.max_restarts` restarts the run stops (exit 3) naming the learner and how it last ended. The child
learns how often it was restarted from `RLX_LEARNER_RESTARTS`, for `services/restarts/learner`. Before the restart, what
the dead learner started is killed with its process group (`end_group`): the local Ray cluster it started with
`ray.init` (`services.backend: ray`; its Ray workers, the generator actors among them, exit when their raylet is gone),
its generator processes and reward workers; the restarted learner's `ray.init` then starts a fresh cluster.

A learner that hangs is restarted the same way: the supervisor reads the `<output_dir>/services.json` the child
rewrites every `services.heartbeat_s` (`rlx.services.health`) and kills the child's process group (the learner, its
generator processes, its reward workers) when, for `services.hang_timeout_s`, the file was not rewritten (the process
is wedged) or the learner did not beat while training, evaluating or saving (its main thread is stuck). A learner
waiting for rollouts is not hung: the generator role's own health covers the generator.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from rlx.errors import EXIT_INTERRUPTED, EXIT_RUN_STOPPED, EXIT_USER_ERROR, RunStopped
from rlx.lifetime import die_with_parent
from rlx.services.shared_arrays import unlink_leftovers

log = logging.getLogger(__name__)
ENV_SUPERVISED = "RLX_SUPERVISED"
ENV_LEARNER_RESTARTS = "RLX_LEARNER_RESTARTS"
ENV_SUPERVISOR_PID = "RLX_SUPERVISOR_PID"
# The child said why it ended (done, bad input, run stopped, interrupted): starting it again would not help.
FINAL_EXITS = (0, EXIT_USER_ERROR, EXIT_RUN_STOPPED, EXIT_INTERRUPTED)
LEARNER_WORKING = ("training", "evaluating", "saving")  # the learner beats between these phases; "waiting" for rollouts is not
POLL_S = 0.5  # how often the supervisor reads the learner's health


@dataclasses.dataclass(frozen=True)
class HangWatch:
    """Where the supervised run writes its roles' health, and how long its learner may go without progress."""

    services_json: Path
    hang_timeout_s: float

    def learner_hang(self, pid: int) -> str | None:
        """Why the learner process `pid` counts as hung, or None (also before it first wrote its health)."""
        try:
            written = self.services_json.stat().st_mtime
            learner = json.loads(self.services_json.read_text())["learner"]
        except (OSError, ValueError, KeyError):
            return None  # not written yet, or being replaced
        if learner["pid"] != pid or learner["status"] in ("done", "failed"):
            return None  # an earlier run's file, or a run that is ending
        now, bound = time.time(), f"services.hang_timeout_s={self.hang_timeout_s:g}"
        if now - written > self.hang_timeout_s:
            return f"hung: {self.services_json.name} not rewritten for {now - written:.1f} s ({bound})"
        if learner["status"] in LEARNER_WORKING and now - learner["last_heartbeat"] > self.hang_timeout_s:
            return f"hung: no learner heartbeat for {now - learner['last_heartbeat']:.1f} s while {learner['status']} ({bound})"
        return None


def supervised() -> bool:
    """Whether this process is the run started by a supervisor (it must not supervise again)."""
    return os.environ.get(ENV_SUPERVISED) == "1"


def learner_restarts() -> int:
    """How often the supervisor restarted this run's learner before this process (0 unsupervised)."""
    return int(os.environ.get(ENV_LEARNER_RESTARTS, "0"))


def supervise(command: Sequence[str], max_restarts: int, watch: HangWatch | None = None) -> int:
    """Runs `command` (the run, as a child process) until it ends with a final exit code; returns that code.
    With `watch`, a child whose learner hangs is killed and restarted too.
    Raises `RunStopped` when it died (or hung) more than `max_restarts` times."""
    restarts = 0
    while True:
        code, hang = _run_child(command, restarts, watch)
        if code in FINAL_EXITS:
            return code
        ending = hang or describe_exit(code)
        if restarts >= max_restarts:
            raise RunStopped(f"the learner process {ending} after {restarts} restarts (services.max_restarts={max_restarts}); "
                             "its output above shows its last error")
        restarts += 1
        log.warning("the learner process %s; restart %d of %d resumes from the latest checkpoint", ending, restarts, max_restarts)


def _run_child(command: Sequence[str], restarts: int, watch: HangWatch | None) -> tuple[int, str | None]:
    """The child's exit code, and why it was killed when it hung."""
    environment = {**os.environ, ENV_SUPERVISED: "1", ENV_LEARNER_RESTARTS: str(restarts), ENV_SUPERVISOR_PID: str(os.getpid())}
    # Its own process group, so a terminal's Ctrl-C reaches it once (forwarded from here), not twice.
    child = subprocess.Popen(list(command), env=environment, process_group=0)
    forwarded: list[int] = []

    def forward(signum: int, frame) -> None:
        forwarded.append(signum)
        child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        code, hang = _wait(child, watch)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if code not in FINAL_EXITS:
        end_group(child.pid)
        unlink_leftovers(f"rlx-{child.pid}-")  # shared memory its generator role had not removed
    if forwarded and code not in FINAL_EXITS:
        return EXIT_INTERRUPTED, None  # stopped on purpose: never restarted
    return code, hang


def _wait(child: subprocess.Popen, watch: HangWatch | None) -> tuple[int, str | None]:
    """Waits for the child to exit; kills its process group when its learner hangs."""
    while True:
        try:
            return child.wait(POLL_S if watch is not None else None), None
        except subprocess.TimeoutExpired:
            hang = watch.learner_hang(child.pid)
        if hang is not None:
            end_group(child.pid)
            return child.wait(), hang


def end_group(pgid: int) -> None:
    """Kills the learner's process group: the learner and what it started and left behind when it died (the agents of the
    local Ray cluster it started outlive their raylet by minutes; generator processes and reward workers by a heartbeat)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # none left


def die_with_supervisor() -> None:
    """Called first in a supervised run: a supervisor killed outright takes its run with it (Linux), leaving no orphan."""
    die_with_parent(signal.SIGTERM)
    if os.getppid() != int(os.environ[ENV_SUPERVISOR_PID]):
        sys.exit("the supervisor of this run has already exited")  # it died before the line above took effect


def describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def child_command(config_path: str, overrides: Sequence[str], debug: bool) -> list[str]:
    """The command that runs this launch's run in a child process."""
    return [sys.executable, "-m", "rlx.launch", "--config", config_path, *overrides, *(["--debug"] if debug else [])]
