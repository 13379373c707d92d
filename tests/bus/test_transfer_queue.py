"""The TransferQueue and staleness admission under real threads: bounds, no loss, no hang."""

import random
import threading
import time

import numpy as np
import pytest

from rlx.bus import BusClosed, StalenessGate, TransferQueue, stale_rows, staleness_metrics, token_staleness


def group_fields(version: int, rows: int = 2, width: int = 3) -> dict[str, np.ndarray]:
    versions = np.full((rows, width), version, np.int32)
    versions[:, -1] = -1  # padding
    return {"tokens": np.zeros((rows, width), np.int32), "versions": versions}


def run_producer_consumer(seed: int, max_staleness: int, steps: int, groups_per_step: int, capacity: int):
    """A generator thread that samples with the latest published version, and a learner that
    takes whole steps; both sleep random times. Returns (ids put, per-step taken groups, trace)."""
    rng = random.Random(seed)
    delays = [(rng.random() * 2e-3, rng.random() * 2e-3) for _ in range(steps)]
    bus, gate = TransferQueue(capacity), StalenessGate(max_staleness)
    put_ids, ahead = [], []

    def generator():
        for step in range(1, steps + 1):
            gate.wait_until_admitted(step, timeout=10)
            version = gate.published
            ahead.append(step - 1 - version)
            for _ in range(groups_per_step):
                time.sleep(delays[step - 1][0] / groups_per_step)
                put_ids.append(bus.put(step, group_fields(version), producer="generator"))
            bus.seal(step, {"version": version})

    thread = threading.Thread(target=generator, daemon=True)
    thread.start()
    taken = []
    for step in range(1, steps + 1):
        groups, meta = bus.take_batch(step, ["tokens", "versions"], consumer="learner", timeout=10)
        taken.append((step, groups, meta))
        time.sleep(delays[step - 1][1])
        gate.publish(step)
    thread.join(10)
    assert not thread.is_alive()
    return bus, put_ids, taken, ahead


@pytest.mark.parametrize("seed", range(6))
def test_staleness_bound_holds_under_random_timings(seed):
    max_staleness = seed % 4
    bus, put_ids, taken, ahead = run_producer_consumer(seed, max_staleness, steps=12, groups_per_step=3, capacity=3 * (max_staleness + 1))
    for step, groups, _ in taken:
        assert len(groups) == 3 and all(g.batch == step for g in groups)
        for group in groups:
            staleness = token_staleness(group.fields["versions"], step)
            assert staleness.size and staleness.min() >= 0 and staleness.max() <= max_staleness
            assert not stale_rows(group.fields["versions"], step, max_staleness).any()
    assert max(ahead) <= max_staleness
    if max_staleness:
        assert max(ahead) > 0, "with slack the generator should have run ahead at least once"
    taken_ids = [g.id for _, groups, _ in taken for g in groups]
    assert sorted(taken_ids) == sorted(put_ids) and len(set(taken_ids)) == len(taken_ids)
    metrics = bus.metrics()
    assert metrics["bus/groups_in"] == metrics["bus/groups_taken"] == 36 and metrics["bus/depth"] == 0


def test_put_blocks_at_capacity_until_a_batch_is_taken():
    bus = TransferQueue(capacity=2)
    bus.put(1, group_fields(0))
    bus.put(1, group_fields(0))
    bus.seal(1)
    finished = threading.Event()
    thread = threading.Thread(target=lambda: (bus.put(2, group_fields(0)), finished.set()), daemon=True)
    thread.start()
    assert not finished.wait(0.2)  # back-pressure
    groups, _ = bus.take_batch(1, ["tokens"], timeout=5)
    assert len(groups) == 2 and finished.wait(5)
    assert bus.metrics()["bus/wait_s/producer"] >= 0.2


def test_consumer_waits_for_fields_filled_by_a_later_producer():
    bus = TransferQueue(capacity=4)
    ids = [bus.put(1, {"tokens": np.zeros((2, 3))}) for _ in range(2)]
    bus.seal(1)
    with pytest.raises(TimeoutError):
        bus.take_batch(1, ["tokens", "rewards"], timeout=0.05)
    bus.fill(ids[0], {"rewards": np.ones(2)})
    with pytest.raises(TimeoutError):
        bus.take_batch(1, ["tokens", "rewards"], timeout=0.05)  # a whole step, or nothing
    bus.fill(ids[1], {"rewards": np.zeros(2)})
    groups, _ = bus.take_batch(1, ["tokens", "rewards"], timeout=1)
    assert [g.id for g in groups] == ids
    with pytest.raises(KeyError, match="not in the bus"):
        bus.fill(ids[0], {"rewards": np.ones(2)})


def test_group_fields_must_agree_on_rows():
    with pytest.raises(ValueError, match="same number of rows"):
        TransferQueue(2).put(1, {"tokens": np.zeros((2, 3)), "rewards": np.zeros(3)})


def test_close_wakes_every_waiter():
    bus, gate = TransferQueue(capacity=1), StalenessGate(0)
    bus.put(1, group_fields(0))
    errors = []

    def wait(fn):
        try:
            fn()
        except BusClosed as err:
            errors.append(err)

    threads = [threading.Thread(target=wait, args=(fn,), daemon=True) for fn in (
        lambda: bus.put(2, group_fields(0)), lambda: bus.take_batch(3, ["tokens"]), lambda: gate.wait_until_admitted(5))]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    bus.close()
    gate.close()
    for thread in threads:
        thread.join(5)
    assert not any(t.is_alive() for t in threads) and len(errors) == 3


def test_stale_rows_and_metrics():
    versions = np.array([[3, 3, -1], [1, 2, 3], [-1, -1, -1]])
    np.testing.assert_array_equal(stale_rows(versions, train_step=5, max_staleness=1), [False, True, False])
    staleness = token_staleness(versions, train_step=5)
    np.testing.assert_array_equal(np.sort(staleness), [1, 1, 1, 2, 3])
    metrics = staleness_metrics(staleness)
    assert metrics["training/off_policy/staleness_mean"] == pytest.approx(1.6)
    assert metrics["training/off_policy/staleness_max"] == 3
    assert metrics["training/off_policy/staleness_hist/1"] == pytest.approx(0.6)


def test_gate_admission_rule():
    gate = StalenessGate(max_staleness=2, published=3)
    assert [gate.admits(step) for step in (4, 5, 6, 7)] == [True, True, True, False]
    gate.publish(4)
    assert gate.admits(7)
    with pytest.raises(TimeoutError):
        gate.wait_until_admitted(9, timeout=0.01)
