"""A reward plug-in that stops the generator process on cue, for the process-backend tests (stdlib only: reward workers
import this module).

Reward workers are forked from a fork server that the process owning the pool started, so a worker's grandparent is the
process that generates. Calls made for a generator process (not for the test's own process, `RLX_TEST_PID`) are
numbered across restarts with files in `RLX_TEST_FAULT_DIR`. `RLX_TEST_FAULTS="8:SIGKILL,9:SIGSTOP"` sends those signals
in turn, each once: signal `i` at the first call numbered at least its number made for a generator process that no
signal has hit yet (so the second one hits the replacement, not a process already dying). Each goes to `signalled`.

`hanging_generator`, patched in for `rlx.services.generator_child.run`, hangs the first generator process that draws step
`RLX_TEST_HANG_STEP` inside that step, its heartbeat thread alive; its pid goes to `hung`.
"""

import os
import signal
import time


def length_mod_3(response, record):
    _signal_on_cue()
    return float(len(response) % 3)


def _signal_on_cue() -> None:
    directory, generator = os.environ.get("RLX_TEST_FAULT_DIR"), _parent_of(os.getppid())
    if directory is None or generator == int(os.environ["RLX_TEST_PID"]):
        return
    call = _next_call(directory)
    record = os.path.join(directory, "signalled")
    signalled = [line.split() for line in open(record).read().splitlines()] if os.path.exists(record) else []
    if str(generator) in {pid for _, _, pid in signalled}:
        return
    cues = [item.split(":") for item in os.environ["RLX_TEST_FAULTS"].split(",")]
    if len(signalled) == len(cues) or call < int(cues[len(signalled)][0]) or not _claim(directory, f"cue-{len(signalled)}"):
        return
    name = cues[len(signalled)][1]
    with open(record, "a") as handle:
        handle.write(f"{call} {name} {generator}\n")
    os.kill(generator, getattr(signal, name))


def hanging_generator(*args) -> None:
    """`generator_child.run(*args)`, except that the first child to draw step `RLX_TEST_HANG_STEP` sleeps inside it for ever."""
    from rlx.services import generator_child
    from rlx.services.generation import Generation

    produce, directory = Generation.produce, os.environ["RLX_TEST_FAULT_DIR"]

    def stuck(self, step: int):
        if step == int(os.environ["RLX_TEST_HANG_STEP"]) and _claim(directory, "hung"):
            with open(os.path.join(directory, "hung"), "w") as handle:
                handle.write(str(os.getpid()))
            while True:
                time.sleep(3600)
        return produce(self, step)

    Generation.produce = stuck
    generator_child.run(*args)


def _claim(directory: str, name: str) -> bool:
    try:
        os.close(os.open(os.path.join(directory, name), os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])


def _next_call(directory: str) -> int:
    call = 0
    while not _claim(directory, f"call-{call}"):
        call += 1
    return call
