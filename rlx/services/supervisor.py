"""The learner as a supervised process (`services.backend: process` or `ray`).

`rlx.launch` stays in a small supervising process and runs the run itself (the learner and the roles it
starts) in a child process. A child that dies without saying why (killed by a signal, out of memory, an
internal error: any exit but 0, 2 bad input, 3 run stopped, 130 interrupted) is started again; being the same
run in the same `run.output_dir`, it resumes from the latest intact checkpoint, which also drops the metric and
rollout rows it had written past that checkpoint (`rlx.services.resume.drop_rows_after`). After
`services.max_restarts` restarts the run stops (exit 3) naming the learner and how it last ended. The child
learns how often it was restarted from `RLX_LEARNER_RESTARTS`, for `services/restarts/learner`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from typing import Sequence

from rlx.errors import EXIT_INTERRUPTED, EXIT_RUN_STOPPED, EXIT_USER_ERROR, RunStopped

log = logging.getLogger(__name__)
ENV_SUPERVISED = "RLX_SUPERVISED"
ENV_LEARNER_RESTARTS = "RLX_LEARNER_RESTARTS"
ENV_SUPERVISOR_PID = "RLX_SUPERVISOR_PID"
# The child said why it ended (done, bad input, run stopped, interrupted): starting it again would not help.
FINAL_EXITS = (0, EXIT_USER_ERROR, EXIT_RUN_STOPPED, EXIT_INTERRUPTED)
_PR_SET_PDEATHSIG = 1


def supervised() -> bool:
    """Whether this process is the run started by a supervisor (it must not supervise again)."""
    return os.environ.get(ENV_SUPERVISED) == "1"


def learner_restarts() -> int:
    """How often the supervisor restarted this run's learner before this process (0 unsupervised)."""
    return int(os.environ.get(ENV_LEARNER_RESTARTS, "0"))


def supervise(command: Sequence[str], max_restarts: int) -> int:
    """Runs `command` (the run, as a child process) until it ends with a final exit code; returns that code.
    Raises `RunStopped` when it died more than `max_restarts` times."""
    restarts = 0
    while True:
        code = _run_child(command, restarts)
        if code in FINAL_EXITS:
            return code
        ending = describe_exit(code)
        if restarts >= max_restarts:
            raise RunStopped(f"the learner process {ending} after {restarts} restarts (services.max_restarts={max_restarts}); "
                             "its output above shows its last error")
        restarts += 1
        log.warning("the learner process %s; restart %d of %d resumes from the latest checkpoint", ending, restarts, max_restarts)


def _run_child(command: Sequence[str], restarts: int) -> int:
    environment = {**os.environ, ENV_SUPERVISED: "1", ENV_LEARNER_RESTARTS: str(restarts), ENV_SUPERVISOR_PID: str(os.getpid())}
    # Its own process group, so a terminal's Ctrl-C reaches it once (forwarded from here), not twice.
    child = subprocess.Popen(list(command), env=environment, process_group=0)
    forwarded: list[int] = []

    def forward(signum: int, frame) -> None:
        forwarded.append(signum)
        child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return EXIT_INTERRUPTED if forwarded and code not in FINAL_EXITS else code  # stopped on purpose: never restarted


def die_with_supervisor() -> None:
    """Called first in a supervised run: a supervisor killed outright takes its run with it (Linux), leaving no orphan."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(os.environ[ENV_SUPERVISOR_PID]):
        sys.exit("the supervisor of this run has already exited")  # it died before the line above took effect


def describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def child_command(config_path: str, overrides: Sequence[str], debug: bool) -> list[str]:
    """The command that runs this launch's run in a child process."""
    return [sys.executable, "-m", "rlx.launch", "--config", config_path, *overrides, *(["--debug"] if debug else [])]
