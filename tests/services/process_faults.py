"""A reward plug-in that stops the generator process or its own reward worker on cue, for the process-backend tests
(stdlib only: reward workers import this module).

Reward workers are forked from a fork server that the process owning the pool started, so a worker's grandparent is the
process that generates. Calls made for a generator (not for a learner: the test's own process, `RLX_TEST_PID`, or one
run by a supervisor, `RLX_SUPERVISOR_PID`) are numbered across restarts with files in `RLX_TEST_FAULT_DIR`.
`RLX_TEST_FAULTS="8:SIGKILL,9:SIGSTOP"` sends those signals to the generator in turn, each once: fault `i` at the first
call numbered at least its number made for a generator that no generator fault has hit yet (so the second one hits the
replacement, not a process already dying). `HANG` instead of a signal's name makes that call return only once its
generator is gone (with `reward.timeout_s` longer than `services.hang_timeout_s`, the generator's step stands still, its
heartbeat alive). `worker:` before a signal's name (`2:worker:SIGKILL`) sends it to the reward worker making the call,
mid-call; `worker:HANG` makes the call sleep until the pool kills its worker past `reward.timeout_s`. A worker fault
scores `reward.on_error_reward` and does not count as hitting its generator, which a later fault can still hit. Each
fault goes to `signalled`: `<call> <fault> <pid of the process it hit>`.

`kill_learner_after_step_1`, a `run.hooks` entry, SIGKILLs the learner once, after step 1.

`hanging_generator`, patched in for `rlx.services.generator_child.run`, hangs the first generator process that draws step
`RLX_TEST_HANG_STEP` inside that step, its heartbeat thread alive; its pid goes to `hung`. `swapping_generator` (and
`ray_swap.SwappingActor`) hold a step's second generate call until newer weights arrive (`hand_over_weights_mid_step`).
"""

import json
import os
import signal
import time

WORKER = "worker:"  # a fault aimed at the reward worker making the call, not at its generator


def length_mod_3(response, record):
    _signal_on_cue()
    return float(len(response) % 3)


def _signal_on_cue() -> None:
    directory, generator = os.environ.get("RLX_TEST_FAULT_DIR"), _parent_of(os.getppid())
    if directory is None or _is_learner(generator):
        return
    call = _next_call(directory)
    record = os.path.join(directory, "signalled")
    signalled = [line.split() for line in open(record).read().splitlines()] if os.path.exists(record) else []
    if str(generator) in {pid for _, _, pid in signalled}:
        return
    cues = [item.split(":", 1) for item in os.environ["RLX_TEST_FAULTS"].split(",")]
    if len(signalled) == len(cues) or call < int(cues[len(signalled)][0]) or not _claim(directory, f"cue-{len(signalled)}"):
        return
    name = cues[len(signalled)][1]
    target = os.getpid() if name.startswith(WORKER) else generator
    with open(record, "a") as handle:
        handle.write(f"{call} {name} {target}\n")
    if name == "HANG":
        while os.path.exists(f"/proc/{generator}"):  # then this worker, its call answered, sees its pool gone and exits
            time.sleep(0.2)
    elif name == WORKER + "HANG":
        time.sleep(3600)  # the pool kills this worker at its deadline
    else:
        os.kill(target, getattr(signal, name.removeprefix(WORKER)))


def _is_learner(pid: int) -> bool:
    return pid == int(os.environ["RLX_TEST_PID"]) or str(_parent_of(pid)) == os.environ.get("RLX_SUPERVISOR_PID")


def kill_learner_after_step_1(step: int, metrics: dict) -> None:
    """The first time step 1 is logged, once its checkpoint is written (saves finish in the background), writes to
    `learner_killed` the learner's pid, its generator's (from `<RLX_TEST_OUTPUT_DIR>/services.json`) and the names of the
    processes in its process group; then SIGKILLs it."""
    directory, output_dir = os.environ["RLX_TEST_FAULT_DIR"], os.environ["RLX_TEST_OUTPUT_DIR"]
    if step != 1 or not _claim(directory, "learner-killed"):
        return
    while not os.path.isdir(os.path.join(output_dir, "checkpoints", "1")):  # orbax's name once the save is complete
        time.sleep(0.1)
    learner = os.getpid()
    generator = _live_generator(output_dir, directory, learner)
    with open(os.path.join(directory, "learner_killed"), "w") as handle:
        json.dump({"learner": learner, "generator": generator, "group": sorted(group_members(learner).values())}, handle)
    os.kill(learner, signal.SIGKILL)


def _live_generator(output_dir: str, directory: str, learner: int, within_s: float = 30.0) -> int:
    """The generator's pid in `services.json` once it names the live one: rewritten every heartbeat, the file may still
    name a replaced generator, or the learner's pid for one that has not answered yet."""
    record, ended_by = os.path.join(directory, "signalled"), time.monotonic() + within_s
    while True:
        signalled = {line.split()[2] for line in open(record).read().splitlines()} if os.path.exists(record) else set()
        with open(os.path.join(output_dir, "services.json")) as handle:
            generator = json.load(handle)["generator"]["pid"]
        if (generator != learner and str(generator) not in signalled) or time.monotonic() > ended_by:
            return generator
        time.sleep(0.2)


def group_members(pgid: int) -> dict[int, str]:
    """The processes of process group `pgid`: {pid: name}."""
    members = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                name, fields = handle.read().split(" (", 1)[1].rsplit(") ", 1)
        except (OSError, IndexError):
            continue  # not a process, or ended meanwhile
        if int(fields.split()[2]) == pgid:
            members[int(entry)] = name
    return members


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


def swapping_generator(*args) -> None:
    """`generator_child.run(*args)` with `hand_over_weights_mid_step` installed."""
    from rlx.services import generator_child

    hand_over_weights_mid_step()
    generator_child.run(*args)


def hand_over_weights_mid_step() -> None:
    """Makes the first step `s` a generator process draws with weights older than `s - 1` wait, before its second generate
    call, until the learner's version `s - 1` (published once step `s - 1` is trained) is in its mailbox, and hands it to
    the rollout driver there (`bus.interrupt`): a weight swap mid-step, whatever the timing. Each process that swapped
    adds a line `<step> <version before> <version after> <pid>` to `swapped` in `RLX_TEST_SWAP_DIR`."""
    from rlx.services.generation import Generation

    if getattr(Generation, "test_swapping", False):
        return  # installed in this process already
    init, produce, directory = Generation.__init__, Generation.produce, os.environ["RLX_TEST_SWAP_DIR"]

    def drawing(self, step: int):
        self.test_step, self.test_calls = step, 0
        return produce(self, step)

    def built(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        take, driver = self.rollout.weight_source, self.rollout

        def source():
            self.test_calls += 1
            wanted = self.test_step - 1
            if self.test_calls != 2 or driver.version >= wanted or Generation.test_swapped:
                return take()
            Generation.test_swapped = True
            before, published, deadline = driver.version, take(), time.monotonic() + 120
            while (published is None or published[1] < wanted) and time.monotonic() < deadline:
                time.sleep(0.02)
                published = take() or published
            with open(os.path.join(directory, "swapped"), "a") as handle:
                handle.write(f"{self.test_step} {before} {published[1] if published else -1} {os.getpid()}\n")
            return published

        self.rollout.weight_source = source

    Generation.__init__, Generation.produce, Generation.test_swapping, Generation.test_swapped = built, drawing, True, False


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
