"""The generator role in its own process (`services.backend: process`) and as Ray actors (`ray`) against the thread role
(`local`), at `bus.max_staleness: 0`: a process run whose generator hangs inside step 1 (its heartbeat thread alive),
whose replacement is SIGKILLed mid-step 2 and whose next replacement is SIGSTOPped mid-step 2 (faults injected by
`tests/services/process_faults.py`) restarts it three times, and a ray run on a local Ray cluster of 2 CPUs whose
generator actor is SIGKILLed mid-step 2 restarts it once; both train the same rollouts with the same numbers as an
uninterrupted local run (one module, so the local run is made once). A child that keeps failing stops the run naming
the role, the step and the child's traceback."""

import contextlib
import importlib.util
import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from rlx.bus import BusClosed, StalenessGate, TransferQueue
from rlx.config import ConfigError, load_config
from rlx.errors import RunStopped, UserError
from rlx.services import generator_child, train
from rlx.services.generator_process import ProcessGeneratorRole
from rlx.services.tracking import read_metrics
from tests.conftest import tiny_overrides
from tests.services import process_faults

SAMPLES, PROMPTS, STEPS = 2, 4, 2  # tiny_overrides' rollout.n_samples and data.prompts_per_step; steps run
FIRST_CALL_OF_STEP_2 = SAMPLES * PROMPTS  # reward calls in the generator process are numbered from 0
CONTINUE_AFTER_S = 60.0  # a generator the role failed to find stopped is continued then, so the test fails instead of hanging
RAY_DAEMONS = ("raylet", "gcs_server")  # process names of a Ray cluster's daemons
HANG_TIMEOUT_S = 20.0  # longer than the tiny model's compiles here, so only the injected hang counts as one
TIMING = ("timing_s/", "perf/", "services/", "bus/wait_s/", "bus/groups_discarded", "rollout/compiles")  # differ run to run


def config(out, *extra):
    return load_config(None, [*tiny_overrides(out), f"run.steps={STEPS}", "warmup.sft_steps=0", "services.heartbeat_s=1",
                              "reward.fn=tests.services.process_faults:length_mod_3", *extra])


def rollouts(out) -> list[dict]:
    return [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "run"
    train(config(out))
    return out


@pytest.fixture(scope="module")
def faulted(tmp_path_factory):
    """A process run whose generator hangs at step 1, its replacement is killed (SIGKILL) at step 2's first reward, and the next
    replacement stopped (SIGSTOP) at its first."""
    out, faults = tmp_path_factory.mktemp("process") / "run", tmp_path_factory.mktemp("faults")
    with pytest.MonkeyPatch.context() as patch:
        inject_faults(patch, faults, f"{FIRST_CALL_OF_STEP_2}:SIGKILL,{FIRST_CALL_OF_STEP_2 + 1}:SIGSTOP")
        patch.setenv("RLX_TEST_HANG_STEP", "1")
        patch.setattr(generator_child, "run", process_faults.hanging_generator)  # the spawned children run it
        resume = threading.Timer(CONTINUE_AFTER_S, continue_stopped, (faults,))  # a hang the role misses ends as a failed test
        resume.start()
        try:
            with warnings_of("rlx.services.generator_process") as restarts:
                train(config(out, "services.backend=process", "services.max_restarts=3", f"services.hang_timeout_s={HANG_TIMEOUT_S}"))
        finally:
            resume.cancel()
    return out, signalled(faults), int((faults / "hung").read_text()), restarts


@contextlib.contextmanager
def warnings_of(logger: str):
    """The messages of the warnings `logger` logs inside the block."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger(logger).addHandler(handler)
    try:
        yield messages
    finally:
        logging.getLogger(logger).removeHandler(handler)


def inject_faults(patch: pytest.MonkeyPatch, faults, cues: str) -> None:
    """Sets what the plug-in in the generator's reward workers reads (`tests/services/process_faults.py`)."""
    patch.setenv("RLX_TEST_PID", str(os.getpid()))
    patch.setenv("RLX_TEST_FAULT_DIR", str(faults))
    patch.setenv("RLX_TEST_FAULTS", cues)


def signalled(faults) -> list[list[str]]:
    return [line.split() for line in (faults / "signalled").read_text().splitlines()]


def continue_stopped(faults) -> None:
    for _, name, pid in signalled(faults):
        if name == "SIGSTOP":
            try:
                os.kill(int(pid), signal.SIGCONT)
            except ProcessLookupError:
                pass  # replaced, as it should be


def assert_trains_like(local, out) -> None:
    """The run in `out` trained the same rollouts with the same numbers as the `local` run."""
    assert rollouts(out) == rollouts(local)  # same prompts, responses and rewards at the same steps
    counts = Counter((row["step"], row["prompt_id"]) for row in rollouts(out))
    assert len(counts) == STEPS * PROMPTS and set(counts.values()) == {SAMPLES}  # each prompt n_samples times: none lost or repeated
    expected, got = read_metrics(local / "metrics.jsonl"), read_metrics(out / "metrics.jsonl")
    assert [row["step"] for row in got] == list(range(STEPS + 1))
    for want, have in zip(expected, got):
        numbers = {name: value for name, value in want.items() if not name.startswith(TIMING)}
        assert {name: have[name] for name in numbers} == pytest.approx(numbers, rel=1e-5, abs=1e-6)


def test_a_process_generator_trains_what_the_thread_does(local, faulted):
    assert_trains_like(local, faulted[0])


def test_a_hung_killed_or_stopped_generator_process_is_replaced(faulted):
    out, signals, hung, restarts = faulted
    assert [(call, name) for call, name, _ in signals][:1] == [(str(FIRST_CALL_OF_STEP_2), "SIGKILL")]  # mid-step 2
    assert [name for _, name, _ in signals] == ["SIGKILL", "SIGSTOP"]  # the second at the replacement's first reward
    killed, stopped = (int(pid) for _, _, pid in signals)
    assert len(restarts) == 3 and "generator's process is hung: no progress for 2" in restarts[0]  # 20.x s, HANG_TIMEOUT_S
    assert "while generating step 1, its heartbeat alive (services.hang_timeout_s=20.0)); restart 1 of 3" in restarts[0]
    assert "no heartbeat from generator's process" in restarts[2]  # the stopped one
    rows = read_metrics(out / "metrics.jsonl")
    assert [row["services/restarts/generator"] for row in rows[1:]] == [1, 3]  # the hang at step 1, the kill and stop at 2
    roles = json.loads((out / "services.json").read_text())
    generator = roles["generator"]
    assert (generator["status"], generator["restarts"]) == ("done", 3)
    assert len({generator["pid"], os.getpid(), hung, killed, stopped}) == 5  # the fourth child's own process
    for pid in (hung, killed, stopped):  # replaced children are gone, not left hung, stopped or orphaned
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_generator_process_failing_past_max_restarts_stops_the_run(tmp_path):
    """Weights of another model make the child fail at its start; with `max_restarts=0` the role stops the run, naming it
    and the child's traceback."""
    assert_stops_on_wrong_weights(config(tmp_path / "run"))


def assert_stops_on_wrong_weights(run_config, transport=None) -> None:
    bus, gate = TransferQueue(8), StalenessGate(0)
    wrong = ({"not_the_model": np.zeros(3, np.float32)}, 0)
    role = ProcessGeneratorRole(run_config, bus, gate, 1, STEPS, lambda: wrong, data_state={}, max_restarts=0, heartbeat_s=1.0,
                                transport=transport)
    role.start()
    began = time.monotonic()
    try:
        with pytest.raises(BusClosed):
            bus.take_batch(1, ("tokens",), timeout=120)
    finally:
        role.stop()
    assert isinstance(role.error, RunStopped) and time.monotonic() - began < 120
    message = str(role.error)
    assert "generator role failed while starting after 0 restarts" in message
    assert "published weights do not fit the generator's model" in message and "not_the_model" in message  # the child's traceback


def test_what_the_process_backend_does_not_do_yet_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="services.backend=process does not support rollout.token_budget"):
        config(tmp_path, "services.backend=process", "rollout.token_budget=40")
    with pytest.raises(ConfigError, match=r"generator_cpus \[0, 0\]: name distinct cores in 0\.\."):
        config(tmp_path, "services.backend=process", "services.generator_cpus=[0, 0]")


@pytest.fixture(scope="module")
def ray_killed(tmp_path_factory):
    """A ray run whose generator actor is killed (SIGKILL) at step 2's first reward. The run starts its local Ray cluster
    (of 2 CPUs here) and stops it; returns the cluster's daemons and those still running after the run."""
    ray = pytest.importorskip("ray")
    from rlx.services import generator_ray

    out, faults = tmp_path_factory.mktemp("ray") / "run", tmp_path_factory.mktemp("faults")
    before, started, start_ray = ray_daemons(), set(), generator_ray.start_ray

    def start_on_2_cpus(**init_args):
        start_ray(num_cpus=2, **init_args)
        started.update(ray_daemons() - before)

    with pytest.MonkeyPatch.context() as patch:
        inject_faults(patch, faults, f"{FIRST_CALL_OF_STEP_2}:SIGKILL")
        patch.setattr(generator_ray, "start_ray", start_on_2_cpus)
        try:
            # A killed actor's call fails at once; heartbeats of 5 s keep a loaded machine's slow answers from counting as deaths.
            train(config(out, "services.backend=ray", "services.max_restarts=1", "services.heartbeat_s=5"))
            left = daemons_left(started)
        finally:
            ray.shutdown()  # a no-op unless the run failed before stopping its cluster
    return out, signalled(faults), started, left


def daemons_left(started: set[int], within_s: float = 10.0) -> set[int]:
    """Those of `started` still running `within_s` seconds after the cluster was stopped (they take a moment to exit)."""
    ended_by = time.monotonic() + within_s
    while ray_daemons() & started and time.monotonic() < ended_by:
        time.sleep(0.2)
    return ray_daemons() & started


def ray_daemons() -> set[int]:
    """Pids of the Ray cluster daemons running on this machine."""
    pids = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "comm").read_text().strip() in RAY_DAEMONS:
                pids.add(int(proc.name))
        except OSError:
            pass  # ended meanwhile
    return pids


def test_a_ray_generator_actor_killed_mid_step_is_replaced(local, ray_killed):
    out, signals, started, left = ray_killed
    assert_trains_like(local, out)
    assert [(call, name) for call, name, _ in signals] == [(str(FIRST_CALL_OF_STEP_2), "SIGKILL")]  # mid-step 2
    assert [row["services/restarts/generator"] for row in read_metrics(out / "metrics.jsonl")[1:]] == [0, 1]
    generator = json.loads((out / "services.json").read_text())["generator"]
    assert (generator["status"], generator["restarts"]) == ("done", 1)
    killed = int(signals[0][2])
    assert generator["pid"] not in (os.getpid(), killed)  # the second actor's own process
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)
    assert started and not left  # the run started its cluster's daemons, and stopped them at its end


def test_the_ray_backend_needs_ray(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "ray" else find_spec(name, *args))
    with pytest.raises(ConfigError, match=r"services.backend=ray needs Ray, which is not installed here: pip install 'rlx\[ray\]'"):
        config(tmp_path, "services.backend=ray")


@pytest.mark.parametrize("override, message", [
    ("services.ray_generator_gpus=-1", "ray_generator_cpus and ray_generator_gpus are a generator actor's share"),
    ("services.ray_address=auto", "they need backend: ray, not local"),
])
def test_bad_ray_settings_are_refused(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, override)


def test_a_ray_cluster_too_small_or_weights_of_another_model_stop_the_run(tmp_path):
    """On a cluster of 1 CPU: an actor asking for a GPU is refused at start; weights of another model make the actor
    fail at its start, and its traceback comes back through Ray."""
    ray = pytest.importorskip("ray")
    from rlx.services import generator_ray

    generator_ray.start_ray(num_cpus=1)  # a cluster the transport finds started: it leaves it running
    try:
        message = r"services.ray_generator_gpus=1.0 asks more GPUs per generator actor than the Ray cluster has \(0\)"
        with pytest.raises(UserError, match=message):
            generator_ray.RayTransport(config(tmp_path, "services.backend=ray", "services.ray_generator_gpus=1"))
        assert ray.is_initialized()
        run_config = config(tmp_path / "run", "services.backend=ray")
        assert_stops_on_wrong_weights(run_config, generator_ray.RayTransport(run_config))
    finally:
        ray.shutdown()
