"""The partial rollouts' carried work round-trips through a checkpoint's bus file, arrays with their dtypes."""

import dataclasses

import numpy as np

from rlx.data import PromptRecord
from rlx.rollout.driver import Completion, Request
from rlx.rollout.partial import Carried, HeldPrompt
from rlx.services.bus_checkpoint import load_carried, load_drawn_ahead, save_drawn_ahead

RNG = np.random.default_rng(0)


def sample(tag: int, index: int, length: int, prompt: np.ndarray) -> Completion:
    """A sample of `length` tokens so far, with routes (2 MoE layers, top-2) and a policy mask."""
    return Completion(tag, index, prompt, RNG.integers(0, 50, length).astype(np.int32), RNG.normal(size=length).astype(np.float32),
                      np.arange(length, dtype=np.int32) // 2, truncated_prompt=index == 1,
                      routes=RNG.integers(0, 4, (len(prompt) + length, 2, 2)).astype(np.int32), mask=np.ones(length, np.float32))


def carried() -> Carried:
    records = [PromptRecord(f"r{i}", f"prompt {i}", "7") for i in range(3)]
    groups = []
    for tag, record in enumerate(records):
        prompt = RNG.integers(1, 50, 3 + tag).astype(np.int32)
        media = {"image": RNG.normal(size=(2, 4)).astype(np.float32)} if tag == 1 else None
        done = [sample(tag, i, 4 + i, prompt) for i in range(tag)]
        groups.append(HeldPrompt(record, Request(prompt, 8, samples=3, tag=tag + 10, media=media), done))
    in_flight = {0: sample(10, 2, 3, groups[0].request.prompt), 5: sample(12, 2, 0, groups[2].request.prompt)}
    return Carried(tuple(groups), ((11, 2), (10, 1)), in_flight, decode_step=41, drained=True)


def assert_same(a, b) -> None:
    """Equal dataclasses, arrays equal in value and dtype."""
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and np.array_equal(x, y), field.name
        elif isinstance(x, dict) and x and isinstance(next(iter(x.values())), np.ndarray):
            assert x.keys() == y.keys() and all(x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]) for k in x)
        else:
            assert x == y, field.name


def test_carried_work_round_trips_beside_the_drawn_ahead_batches(tmp_path):
    saved = carried()
    records = {held.record.id: held.record for held in saved.groups}
    save_drawn_ahead(tmp_path, 2, [], keep={2}, carried=saved)
    back = load_carried(tmp_path, 2, records)
    assert load_drawn_ahead(tmp_path, 2, records) == []
    assert (back.queue, back.decode_step, back.drained) == (saved.queue, saved.decode_step, saved.drained)
    for held, original in zip(back.groups, saved.groups, strict=True):
        assert held.record == original.record
        assert_same(held.request, original.request)
        for done, original_done in zip(held.done, original.done, strict=True):
            assert_same(done, original_done)
    assert back.in_flight.keys() == saved.in_flight.keys()
    for slot in saved.in_flight:
        assert_same(back.in_flight[slot], saved.in_flight[slot])


def test_a_file_without_carried_work_or_with_unknown_records_gives_none(tmp_path):
    save_drawn_ahead(tmp_path, 1, [], keep={1})  # as a checkpoint made before partial rollouts were saved
    assert load_carried(tmp_path, 1, {}) is None and load_carried(tmp_path, 7, {}) is None
    save_drawn_ahead(tmp_path, 2, [], keep={1, 2}, carried=carried())
    assert load_carried(tmp_path, 2, {"r0": PromptRecord("r0", "prompt 0", "7")}) is None  # the data set lost r1, r2
