"""A reward plug-in that stops the generator process on cue, for the process-backend tests (stdlib only: reward workers
import this module).

Reward workers are forked from a fork server that the process owning the pool started, so a worker's grandparent is the
process that generates. Calls made for a generator process (not for the test's own process, `RLX_TEST_PID`) are
numbered across restarts with files in `RLX_TEST_FAULT_DIR`; `RLX_TEST_FAULTS="8:SIGKILL,17:SIGSTOP"` sends those
signals to the generator process at those calls, each once.
"""

import os
import signal


def length_mod_3(response, record):
    _signal_on_cue()
    return float(len(response) % 3)


def _signal_on_cue() -> None:
    directory, generator = os.environ.get("RLX_TEST_FAULT_DIR"), _parent_of(os.getppid())
    if directory is None or generator == int(os.environ["RLX_TEST_PID"]):
        return
    call = _next_call(directory)
    cues = dict(item.split(":") for item in os.environ["RLX_TEST_FAULTS"].split(","))
    if str(call) in cues:
        with open(os.path.join(directory, "signalled"), "a") as handle:
            handle.write(f"{call} {cues[str(call)]} {generator}\n")
        os.kill(generator, getattr(signal, cues[str(call)]))


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])


def _next_call(directory: str) -> int:
    call = 0
    while True:
        try:
            os.close(os.open(os.path.join(directory, f"call-{call}"), os.O_CREAT | os.O_EXCL))
            return call
        except FileExistsError:
            call += 1
