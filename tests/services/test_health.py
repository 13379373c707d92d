"""Roles' health without a model: the generator role restarts a failed step in place and stops the run past
`services.max_restarts`; services.json is written while roles run; the bus discards a failed step's groups; drawn-ahead
batches survive a checkpoint file and only what the bus as configured admits is restored."""

import json
import time

import numpy as np
import pytest

from rlx.bus import StalenessGate, TransferQueue
from rlx.errors import RunStopped, UserError
from rlx.services.bus_checkpoint import DrawnBatch, admissible, load_drawn_ahead, save_drawn_ahead
from rlx.services.generator import GeneratorRole
from rlx.services.health import Health
from rlx.services.transfer import TRAIN_FIELDS, to_groups
from tests.services.test_transfer import make_batch


class FlakyProduce:
    """Step `failing` raises the first `failures` times it is drawn."""

    def __init__(self, failing: int, failures: int, error: type[Exception] = RuntimeError):
        self.failing, self.failures, self.error, self.calls = failing, failures, error, []

    def __call__(self, step):
        self.calls.append(step)
        if step == self.failing and self.calls.count(step) <= self.failures:
            raise self.error(f"injected at step {step}")
        return make_batch(groups=2), {"metrics": {}, "data_state": {"step": step}}


def run_role(produce, max_restarts, steps=3):
    bus, gate = TransferQueue(capacity=100), StalenessGate(max_staleness=steps)
    role = GeneratorRole(produce, bus, gate, 1, steps, max_restarts=max_restarts, heartbeat_s=0.05)
    role.start()
    taken = []
    try:
        for step in range(1, steps + 1):
            groups, meta = bus.take_batch(step, TRAIN_FIELDS, timeout=10)
            taken.append((step, len(groups), meta["data_state"]))
    except Exception:
        pass
    role._thread.join(10)
    return role, bus, taken


def test_a_failed_step_is_drawn_again_in_place_and_nothing_twice():
    produce = FlakyProduce(failing=2, failures=2)
    role, bus, taken = run_role(produce, max_restarts=2)
    assert role.error is None and produce.calls == [1, 2, 2, 2, 3]
    assert taken == [(1, 2, {"step": 1}), (2, 2, {"step": 2}), (3, 2, {"step": 3})]
    assert role.health()["generator"]["restarts"] == 2 and role.health()["generator"]["status"] == "done"


def test_past_max_restarts_the_run_stops_naming_the_role_and_its_last_error():
    role, bus, taken = run_role(FlakyProduce(failing=2, failures=5), max_restarts=1)
    assert taken == [(1, 2, {"step": 1})]  # the learner's take of step 2 found the bus closed
    assert isinstance(role.error, RunStopped)
    assert str(role.error) == ("the generator role failed at step 2 after 1 restarts (services.max_restarts=1); "
                               "its last error: RuntimeError: injected at step 2")
    assert role.health()["generator"]["status"] == "failed"


def test_bad_input_is_not_retried():
    produce = FlakyProduce(failing=1, failures=1, error=UserError)
    role, _, _ = run_role(produce, max_restarts=3)
    assert isinstance(role.error, UserError) and produce.calls == [1]


def test_the_bus_discards_an_unsealed_step_only():
    bus = TransferQueue(capacity=10)
    for fields, meta in to_groups(make_batch(groups=2)):
        bus.put(1, fields, meta)
        bus.put(2, fields, meta)
    bus.seal(1, {"data_state": 1})
    assert bus.discard(2) == 2 and bus.metrics()["bus/groups_discarded"] == 2
    with pytest.raises(ValueError, match="batch 1 is sealed"):
        bus.discard(1)
    sealed, unsealed = bus.snapshot()
    assert [(step, len(groups), meta) for step, groups, meta in sealed] == [(1, 2, {"data_state": 1})] and unsealed == 0


def test_services_json_is_rewritten_while_the_roles_run(tmp_path):
    path = tmp_path / "services.json"
    with Health(path, interval_s=0.05) as roles:
        learner = roles.clock("learner", "training")
        beat = time.time() - 3.0
        roles.watch(lambda: {"generator": {"pid": 1, "status": "generating", "restarts": 2, "last_heartbeat": beat}})
        time.sleep(0.3)
        live = json.loads(path.read_text())
        metrics = roles.metrics()
    assert live["learner"]["status"] == "training" and live["generator"]["restarts"] == 2
    assert set(live["learner"]) == {"pid", "status", "restarts", "last_heartbeat"}
    assert metrics["services/restarts/generator"] == 2.0 and metrics["services/heartbeat_age_s/generator"] >= 3.0
    assert metrics["services/heartbeat_age_s/learner"] < 1.0
    assert json.loads(path.read_text())["learner"]["status"] == "done" and learner.status == "done"


def drawn(step, version, groups=2):
    batch = make_batch(groups=groups)
    fields_and_meta = to_groups(batch)
    for fields, _ in fields_and_meta:
        fields["versions"] = np.full_like(fields["versions"], version)
    return DrawnBatch(step, fields_and_meta, {"metrics": {"reward/mean": 0.5}, "data_state": {"after": step}})


def test_drawn_ahead_batches_round_trip_and_old_files_go(tmp_path):
    batches = [drawn(3, version=1), drawn(4, version=2)]
    records = {record.id: record for fields, meta in batches[0].groups for record in meta["records"]}
    save_drawn_ahead(tmp_path, 1, [], keep=set())
    save_drawn_ahead(tmp_path, 2, batches, keep={2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2.npz"]  # step 1's went: no checkpoint keeps it
    back = load_drawn_ahead(tmp_path, 2, records)
    assert [(b.step, b.meta) for b in back] == [(b.step, b.meta) for b in batches]
    for restored, original in zip(back, batches):
        for (fields, meta), (fields0, meta0) in zip(restored.groups, original.groups):
            assert fields.keys() == fields0.keys() and all(np.array_equal(fields[k], fields0[k]) and fields[k].dtype == fields0[k].dtype for k in fields)
            assert meta == meta0
    assert load_drawn_ahead(tmp_path, 2, {}) is None and load_drawn_ahead(tmp_path, 5, records) is None


def test_only_what_the_bus_admits_now_is_restored():
    batches = [drawn(3, version=1), drawn(4, version=2)]
    assert [b.step for b in admissible(batches, trained=2, max_staleness=1, capacity=4)] == [3, 4]
    assert [b.step for b in admissible(batches, trained=2, max_staleness=1, capacity=3)] == [3]  # a smaller bus
    assert [b.step for b in admissible(batches, trained=2, max_staleness=0, capacity=4)] == []  # step 3 trained on version 1 is 1 stale
    assert admissible(batches[1:], trained=2, max_staleness=1, capacity=4) == []  # not right after the trained step
