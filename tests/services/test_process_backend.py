"""The generator role in its own process (`services.backend: process`) and as Ray actors (`ray`) against the thread role
(`local`), at `bus.max_staleness: 0`: a process run whose generator hangs inside step 1 (its heartbeat thread alive),
whose replacement is SIGKILLed mid-step 2 and whose next replacement is SIGSTOPped mid-step 2 (faults injected by
`tests/services/process_faults.py`) restarts it three times; a ray run under its supervisor, on a local Ray cluster,
whose generator actor hangs inside step 1, whose replacement is SIGKILLed mid-step 1 and whose learner is SIGKILLed
after step 1 restarts the actor twice and the learner once, leaving no Ray process behind; both train the same
rollouts with the same numbers as an uninterrupted local run (one module, so the local run is made once). A child that
keeps failing stops the run naming the role, the step and the child's traceback. With partial rollouts
(`rollout.token_budget`) a process run whose generator is SIGKILLed mid-run loses and repeats no prompt: its replacement
takes up the work carried after the last step sealed; a ray run does the same with `bus.interrupt`, its actor taking weights
published mid-step. With `bus.interrupt` two generator processes swap in weights published mid-step: their samples hold
tokens of two versions; their reward plug-in kills one of its workers mid-call and hangs one call past
`reward.timeout_s`, both scored `reward.on_error_reward` and counted."""

import contextlib
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import numpy as np
import pytest

from rlx.bus import BusClosed, StalenessGate, TransferQueue
from rlx.config import ConfigError, load_config
from rlx.errors import RunStopped, UserError
from rlx.services import generator_child, train
from rlx.services.feed import RolloutFeed
from rlx.services.generator_process import ProcessGeneratorRole
from rlx.services.generator_replica import StepKeeping, replica_name
from rlx.services.tracking import read_metrics
from tests.conftest import REPO, tiny_overrides
from tests.services import process_faults
from tests.services.process_faults import group_members

SAMPLES, PROMPTS, STEPS = 2, 4, 2  # tiny_overrides' rollout.n_samples and data.prompts_per_step; steps run
FIRST_CALL_OF_STEP_2 = SAMPLES * PROMPTS  # reward calls in the generator process are numbered from 0
CONTINUE_AFTER_S = 60.0  # a generator the role failed to find stopped is continued then, so the test fails instead of hanging
HANG_TIMEOUT_S = 20.0  # longer than the tiny model's compiles here, so only the injected hang counts as one
TIMING = ("timing_s/", "perf/", "services/", "bus/wait_s/", "bus/groups_discarded", "rollout/compiles")  # differ run to run


def config(out, *extra):
    return load_config(None, overrides(out, *extra))


def overrides(out, *extra) -> list[str]:
    return [*tiny_overrides(out), f"run.steps={STEPS}", "warmup.sft_steps=0", "services.heartbeat_s=1",
            "reward.fn=tests.services.process_faults:length_mod_3", *extra]


def rollouts(out) -> list[dict]:
    return [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]


def assert_each_prompt_drawn_once(out, steps: int) -> None:
    """Each (step, prompt) of `steps` steps is in `rollouts.jsonl` `SAMPLES` times: none lost or drawn twice."""
    counts = Counter((row["step"], row["prompt_id"]) for row in rollouts(out))
    assert len(counts) == steps * PROMPTS and set(counts.values()) == {SAMPLES}


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
            with messages_of("rlx.services.generator_process") as restarts:
                train(config(out, "services.backend=process", "services.max_restarts=3", f"services.hang_timeout_s={HANG_TIMEOUT_S}"))
        finally:
            resume.cancel()
    return out, signalled(faults), int((faults / "hung").read_text()), restarts


@contextlib.contextmanager
def messages_of(name: str, level: int = logging.WARNING):
    """The messages logger `name` logs at `level` and up inside the block (a module fixture cannot use `caplog`)."""
    messages, logger = [], logging.getLogger(name)
    handler, before = logging.Handler(level), logger.level
    handler.emit = lambda record: messages.append(record.getMessage())
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


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


def assert_trains_like(local, out, counted_per_process: tuple[str, ...] = ()) -> None:
    """The run in `out` trained the same rollouts with the same numbers as the `local` run, but for the metrics
    `counted_per_process` (a restarted learner counts them from 0)."""
    assert rollouts(out) == rollouts(local)  # same prompts, responses and rewards at the same steps
    assert_each_prompt_drawn_once(out, STEPS)
    expected, got = read_metrics(local / "metrics.jsonl"), read_metrics(out / "metrics.jsonl")
    assert [row["step"] for row in got] == list(range(STEPS + 1))
    for want, have in zip(expected, got):
        numbers = {name: value for name, value in want.items() if not name.startswith(TIMING) and name not in counted_per_process}
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


BUDGET_STEPS, STALENESS = 3, 2
KILL_AT_CALL = 20  # a step's reward calls are at most 16 (8 groups held, 2 samples each): past step 1, before step 3's end


def record_assignments(patch: pytest.MonkeyPatch) -> list:
    """Each step assignment's (step, carried work handed with it), as the run makes them."""
    assigned, assign = [], StepKeeping.assign

    def recorded(replica, step, data_state, skip, carried=None):
        assigned.append((step, carried))
        assign(replica, step, data_state, skip, carried)

    patch.setattr(StepKeeping, "assign", recorded)
    return assigned


@pytest.fixture(scope="module")
def budget_killed(tmp_path_factory):
    """A process run with partial rollouts (`rollout.token_budget`) whose generator is killed (SIGKILL) at its reward call
    `KILL_AT_CALL`, mid-run; returns its directory, the faults and each assignment's (step, carried work handed with it)."""
    out, faults = tmp_path_factory.mktemp("budget") / "run", tmp_path_factory.mktemp("faults")
    with pytest.MonkeyPatch.context() as patch:
        inject_faults(patch, faults, f"{KILL_AT_CALL}:SIGKILL")
        assigned = record_assignments(patch)
        train(config(out, f"run.steps={BUDGET_STEPS}", "services.backend=process", "services.max_restarts=1", "rollout.token_budget=6",
                     "rollout.max_concurrent_decodes=8", f"bus.max_staleness={STALENESS}"))
    return out, signalled(faults), assigned


def test_a_killed_generator_process_with_partial_rollouts_loses_and_repeats_nothing(budget_killed):
    assert_carried_past_the_kill(*budget_killed)


def assert_carried_past_the_kill(out, signals, assigned) -> None:
    """A run with partial rollouts whose generator was killed once mid-run trained every prompt exactly `SAMPLES` times,
    the work carried past the kill after it, no token staler than `STALENESS`."""
    assert [name for _, name, _ in signals] == ["SIGKILL"]
    resumed = [(step, carried) for step, carried in assigned if carried is not None]
    assert len(resumed) == 1  # the replacement's first step, after the steps its predecessor sealed
    restart_step, carried = resumed[0]
    assert 1 < restart_step <= BUDGET_STEPS and carried.groups
    assert [step for step, _ in assigned] == [*range(1, restart_step + 1), *range(restart_step, BUDGET_STEPS + 1)]  # the killed step again
    rows = rollouts(out)
    assert [row["step"] for row in rows] == [step for step in range(1, BUDGET_STEPS + 1) for _ in range(PROMPTS * SAMPLES)]
    counts = Counter(row["prompt_id"] for row in rows)
    assert len(counts) == BUDGET_STEPS * PROMPTS and set(counts.values()) == {SAMPLES}  # none lost, none trained twice
    after = {row["prompt_id"] for row in rows if row["step"] >= restart_step}
    assert {held.record.id for held in carried.groups} <= after  # the work carried past the kill is trained after it
    metrics = read_metrics(out / "metrics.jsonl")[1:]
    assert metrics[-1]["services/restarts/generator"] == 1
    assert sum(row["rollout/carried_over_samples"] for row in metrics) > 0
    assert all(row["training/off_policy/staleness_max"] <= STALENESS and row.get("bus/groups_dropped_stale", 0) == 0 for row in metrics)


REWARD_FAULTS = "2:worker:SIGKILL,5:worker:HANG"  # at the generators' reward calls 2 and 5 (`process_faults`)
ON_ERROR = -1.0  # reward.on_error_reward where rewards fail: length_mod_3 never scores it
REWARD_FAULT_SETTINGS = ("reward.timeout_s=2", f"reward.on_error_reward={ON_ERROR}")  # a hang costs 2 s


def assert_reward_faults_counted(out, signals) -> None:
    """A run that draws no step twice, whose plug-in SIGKILLed its reward worker mid-call once and hung one call past
    `reward.timeout_s` (`REWARD_FAULTS`), trained both samples with `reward.on_error_reward`, counted in `reward/errors`
    (the hang in `reward/timeouts` too); every other call scored, so the killed worker was replaced."""
    assert [name for _, name, _ in signals] == ["worker:SIGKILL", "worker:HANG"]
    metrics = read_metrics(out / "metrics.jsonl")[1:]
    assert sum(row["reward/errors"] for row in metrics) == 2 and sum(row["reward/timeouts"] for row in metrics) == 1
    rewards = [row["reward"] for row in rollouts(out)]
    assert rewards.count(ON_ERROR) == 2 and set(rewards) - {ON_ERROR} <= {0.0, 1.0, 2.0}


def test_process_generators_swap_in_weights_published_mid_step(tmp_path):
    """`bus.interrupt` with two generator processes at `bus.max_staleness: 1`: steps 1 and 2 are both admitted with version
    0 (usually drawn at once, one per generator); the learner's version 1 (step 1 trained) reaches step 2's child mid-step
    (held for it there by `process_faults.hand_over_weights_mid_step`), whose samples then hold tokens of both versions,
    none staler than the bound. Their reward plug-in kills one of its workers mid-call and hangs one call
    (`REWARD_FAULTS`): both score `reward.on_error_reward`, counted, and the run completes."""
    out, swaps, taken = tmp_path / "run", tmp_path / "swaps", {}
    swaps.mkdir()
    take = RolloutFeed.take

    def recorded(feed, step):
        batch, metrics = take(feed, step)
        mask = batch.rollout.generation.mask > 0
        taken[step] = [set(versions[held].tolist()) for versions, held in zip(batch.rollout.policy_version, mask)]
        return batch, metrics

    with pytest.MonkeyPatch.context() as patch:
        inject_faults(patch, swaps, REWARD_FAULTS)
        patch.setenv("RLX_TEST_SWAP_DIR", str(swaps))
        patch.setattr(generator_child, "run", process_faults.swapping_generator)
        patch.setattr(RolloutFeed, "take", recorded)
        train(config(out, "services.backend=process", "services.generators=2", "bus.max_staleness=1", "bus.interrupt=keep_cache",
                     *REWARD_FAULT_SETTINGS))
    assert [line.split()[:3] for line in (swaps / "swapped").read_text().splitlines()] == [["2", "0", "1"]]
    assert taken[1] == [{0}] * PROMPTS * SAMPLES
    assert {0, 1} in taken[2] and all(versions <= {0, 1} for versions in taken[2])  # multi-version samples, staleness <= 1
    assert_each_prompt_drawn_once(out, STEPS)
    assert {"generator", "generator-1"} <= set(json.loads((out / "services.json").read_text()))
    assert_reward_faults_counted(out, signalled(swaps))


@pytest.fixture(scope="module")
def ray_budget_killed(tmp_path_factory):
    """A ray run with partial rollouts and `bus.interrupt` on a local Ray cluster its learner starts (this process): its
    generator actor takes weights published mid-step (held for them by `process_faults.hand_over_weights_mid_step`) and is
    killed (SIGKILL) at its reward call `KILL_AT_CALL`. Returns `budget_killed`'s values, the swaps and the Ray daemons
    the learner started still running after the run."""
    pytest.importorskip("ray")
    from rlx.services import generator_ray
    from tests.services.ray_swap import SwappingActor

    out, faults = tmp_path_factory.mktemp("ray-budget") / "run", tmp_path_factory.mktemp("faults")
    with pytest.MonkeyPatch.context() as patch:
        inject_faults(patch, faults, f"{KILL_AT_CALL}:SIGKILL")
        patch.setenv("RLX_TEST_SWAP_DIR", str(faults))
        assigned = record_assignments(patch)
        patch.setattr(generator_ray, "GeneratorActor", SwappingActor)
        train(config(out, f"run.steps={BUDGET_STEPS}", "services.backend=ray", "services.max_restarts=1", "services.heartbeat_s=5",
                     "rollout.token_budget=6", "rollout.max_concurrent_decodes=8", f"bus.max_staleness={STALENESS}",
                     "bus.interrupt=recompute_cache"))
    swaps = [[int(field) for field in line.split()] for line in (faults / "swapped").read_text().splitlines()]
    return (out, signalled(faults), assigned), swaps, left_in_groups({os.getpgrp()}, names=("gcs_server", "raylet"))


def test_a_ray_actor_takes_weights_mid_step_and_its_replacement_the_carried_work(ray_budget_killed):
    killed, swaps, left = ray_budget_killed
    assert_carried_past_the_kill(*killed)
    assert swaps and all(after == step - 1 > before for step, before, after, _ in swaps)  # applied inside a step, between generate calls
    assert not left  # the local cluster's daemons are gone with the run


class ScriptedReplica(StepKeeping):
    """A replica whose child the test plays: what the role sends it is recorded (`Replica`'s interface, no process)."""

    def __init__(self, index: int):
        self.index, self.name, self.restarts, self.version = index, replica_name(index), 0, -1
        self.step, self.ready, self.drawn = None, True, 0
        self.draws: list[tuple] = []

    def spawn(self, config, weights, published) -> None:
        self.step, self.drawn = None, 0

    def send(self, message: tuple) -> None:
        if message[0] == "draw":
            self.draws.append(message[1:])

    def send_weights(self, weights) -> None:
        self.version = weights[1]

    def up(self) -> bool:
        return True

    def set_status(self, text: str) -> None:
        pass

    def end(self, grace_s: float) -> None:
        pass


class ScriptedTransport:
    def __init__(self):
        self.made: list[ScriptedReplica] = []

    def replica(self, index: int) -> ScriptedReplica:
        self.made.append(ScriptedReplica(index))
        return self.made[-1]

    def share_weights(self, arrays, version):
        return arrays

    def drop_weights(self, handle) -> None:
        pass


def test_a_fresh_generator_takes_up_the_work_carried_into_its_first_step(tmp_path):
    """With partial rollouts: a resumed run's first child gets the checkpoint's carried work with its first step, a child
    that sealed the step before keeps its own, a replacement gets that of the last step sealed; no second generator is added."""
    run_config = config(tmp_path, "services.backend=process", "rollout.token_budget=6")
    transport, weights = ScriptedTransport(), ({"w": np.zeros(2, np.float32)}, 2)
    role = ProcessGeneratorRole(run_config, TransferQueue(8), StalenessGate(0, published=2), 3, 5, lambda: weights, data_state={"at": 3},
                                max_restarts=1, heartbeat_s=1.0, transport=transport, carried="saved after step 2")
    with role._lock:
        role._add(0)
        role._dispatch()
    replica = transport.made[0]
    role._handle(replica, ("seal", 3, {"metrics": {}, "data_state": {"at": 4}, "carried": "carried after step 3"}))
    role.advance(3)
    role._replace(replica, "killed mid-step 4")
    assert replica.draws == [(3, {"at": 3}, 0, "saved after step 2"), (4, {"at": 4}, 0, None), (4, {"at": 4}, 0, "carried after step 3")]
    role._rescale(2)  # `rlx scale`: a second generator would not know where its steps begin
    assert transport.made == [replica]


def test_what_the_process_backend_does_not_do_yet_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="services.backend=process does not support parallel.distributed.mode=auto"):
        config(tmp_path, "services.backend=process", "parallel.distributed.mode=auto")
    with pytest.raises(ConfigError, match="which rollout.token_budget .partial rollouts draw prompts ahead as slots free. does not know"):
        config(tmp_path, "services.backend=process", "services.generators=2", "rollout.token_budget=40")
    with pytest.raises(ConfigError, match=r"generator_cpus \[0, 0\]: name distinct cores in 0\.\."):
        config(tmp_path, "services.backend=process", "services.generator_cpus=[0, 0]")


@pytest.fixture(scope="module")
def ray_faulted(tmp_path_factory):
    """A ray run under its supervisor (`python -m rlx.launch`, as a user starts one) on a local Ray cluster that its learner
    starts (of this machine's CPUs: 2 in CI): its generator actor hangs at step 1's first reward (`HANG`), the replacement
    is killed (SIGKILL) at its first reward, and the learner is killed (SIGKILL) once step 1 is checkpointed and logged;
    the restarted learner resumes from that checkpoint on a fresh cluster. Returns the run's directory, its log, the
    faults, what the killed learner left (`kill_learner_after_step_1`) and the processes of both learners' process groups
    still running after the run."""
    pytest.importorskip("ray")
    out, faults = tmp_path_factory.mktemp("ray") / "run", tmp_path_factory.mktemp("faults")
    (faults / "empty.yaml").write_text("")  # every setting as an override, as `local` has them
    hooks = "run.hooks=[tests.services.process_faults:kill_learner_after_step_1]"
    # A killed actor's call fails at once; heartbeats of 5 s keep a loaded machine's slow answers from counting as deaths.
    # The hung reward call outlasts the hang bound (reward.timeout_s), so the actor's step stands still until it is replaced.
    run = overrides(out, "services.backend=ray", "services.max_restarts=2", "services.heartbeat_s=5", "run.checkpoint_every=1",
                    f"services.hang_timeout_s={HANG_TIMEOUT_S}", f"reward.timeout_s={10 * HANG_TIMEOUT_S}", hooks)
    # One fault per actor: the hung one's other calls pass, so the SIGKILL hits its replacement.
    environment = {**os.environ, "PYTHONPATH": str(REPO), "RLX_TEST_PID": str(os.getpid()), "RLX_TEST_FAULT_DIR": str(faults),
                   "RLX_TEST_FAULTS": "0:HANG,1:SIGKILL", "RLX_TEST_OUTPUT_DIR": str(out)}
    done = subprocess.run([sys.executable, "-m", "rlx.launch", "--config", str(faults / "empty.yaml"), *run], cwd=REPO,
                          env=environment, capture_output=True, text=True, timeout=600)
    (faults / "launch.log").write_text(done.stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    killed = json.loads((faults / "learner_killed").read_text())
    last = json.loads((out / "services.json").read_text())["learner"]["pid"]
    return out, done.stderr, signalled(faults), killed, left_in_groups({killed["learner"], last})


def left_in_groups(pgids: set[int], names: tuple[str, ...] | None = None, within_s: float = 10.0) -> dict[int, str]:
    """The processes of the process groups `pgids` (those named `names`, if given) still running `within_s` seconds
    after the run (they take a moment to exit)."""
    ended_by = time.monotonic() + within_s
    while ((left := {pid: name for pgid in pgids for pid, name in group_members(pgid).items() if names is None or name in names})
           and time.monotonic() < ended_by):
        time.sleep(0.2)
    return left


def test_a_ray_run_replaces_a_hung_or_killed_actor_and_restarts_a_killed_learner(local, ray_faulted):
    out, log, signals, killed, left = ray_faulted
    assert_trains_like(local, out, counted_per_process=("bus/groups_in", "bus/groups_taken"))  # step 2 by the restarted learner
    assert [(call, name) for call, name, _ in signals] == [("0", "HANG"), ("8", "SIGKILL")]  # the second at the replacement's first reward
    assert "generator failed at step 1 (generator's Ray actor is hung: no progress for 2" in log  # 20.x s, HANG_TIMEOUT_S
    assert "while generating step 1, its heartbeat alive (services.hang_timeout_s=20.0)); restart 1 of 2" in log
    assert "generator failed at step 1 (generator's Ray actor died" in log and "restart 2 of 2" in log
    assert "the learner process was killed by SIGKILL; restart 1 of 2 resumes from the latest checkpoint" in log
    rows = read_metrics(out / "metrics.jsonl")
    assert [(row["services/restarts/generator"], row["services/restarts/learner"]) for row in rows[1:]] == [(2, 0), (0, 1)]
    roles = json.loads((out / "services.json").read_text())
    assert (roles["generator"]["status"], roles["generator"]["restarts"], roles["learner"]["restarts"]) == ("done", 0, 1)
    assert {"gcs_server", "raylet"} <= set(killed["group"])  # the killed learner had started its own local cluster
    assert not left  # ... which is gone with it (its agents too), as is the restarted learner's at the end
    actors = {int(pid) for _, _, pid in signals} | {killed["generator"], roles["generator"]["pid"]}
    assert len(actors | {killed["learner"], os.getpid()}) == 6  # each actor its own process: hung, killed, killed with the learner, last
    for pid in actors:  # none left hung, or orphaned by the killed learner's cluster
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


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
