"""A step's batch split into bus groups and joined back loses, reorders and invents nothing."""

import numpy as np
import pytest

from rlx.bus import TransferQueue
from rlx.data import PromptRecord
from rlx.rollout import Generation, GroupRollout
from rlx.services.transfer import TRAIN_FIELDS, ScoredBatch, from_groups, to_groups


def make_batch(groups: int = 3, n: int = 2, width: int = 4, with_media: bool = False, with_routes: bool = False) -> ScoredBatch:
    rows = groups * n
    rng = np.random.default_rng(0)
    rollout = GroupRollout(
        records=[PromptRecord(id=f"p{r // n}", prompt=f"q{r // n}", answer="a") for r in range(rows)],
        prompt_tokens=rng.integers(1, 9, (rows, 5)).astype(np.int32),
        start=np.arange(rows, dtype=np.int32) % 3,
        group_ids=np.arange(rows, dtype=np.int32) // n,
        generation=Generation(rng.integers(1, 9, (rows, width)).astype(np.int32), rng.normal(size=(rows, width)).astype(np.float32),
                              np.ones((rows, width), np.float32), np.full(rows, width, np.int32)),
        policy_version=rng.integers(0, 3, (rows, width)).astype(np.int32),
        media={"image": rng.normal(size=(rows, 2, 3)).astype(np.float32), "audio": rng.normal(size=(rows, 4)).astype(np.float32)} if with_media else None,
        routes=rng.integers(-1, 8, (rows, 5 + width, 3, 2)).astype(np.int32) if with_routes else None,  # [rows, P + R, moe_layers, k]
    )
    return ScoredBatch(rollout, [f"r{r}" for r in range(rows)], rng.random(rows).astype(np.float32), rng.random(rows).astype(np.float32))


@pytest.mark.parametrize("with_media, with_routes", [(False, False), (True, False), (False, True)])
def test_round_trip_through_the_bus(with_media, with_routes):
    batch = make_batch(with_media=with_media, with_routes=with_routes)
    bus = TransferQueue(capacity=3)
    for fields, meta in to_groups(batch):
        bus.put(7, fields, meta)
    bus.seal(7)
    groups, _ = bus.take_batch(7, TRAIN_FIELDS, timeout=1)
    back = from_groups(groups)
    original, joined = batch.rollout, back.rollout
    for name in ("prompt_tokens", "start", "group_ids", "policy_version"):
        np.testing.assert_array_equal(getattr(joined, name), getattr(original, name))
    for name in ("tokens", "log_probs", "mask", "lengths"):
        np.testing.assert_array_equal(getattr(joined.generation, name), getattr(original.generation, name))
    np.testing.assert_array_equal(back.rewards, batch.rewards)
    np.testing.assert_array_equal(back.task_scores, batch.task_scores)
    assert back.responses == batch.responses and [r.id for r in joined.records] == [r.id for r in original.records]
    if with_media:
        assert joined.media.keys() == original.media.keys()
        for name in original.media:
            np.testing.assert_array_equal(joined.media[name], original.media[name])
    else:
        assert joined.media is None
    if with_routes:  # MoE routes (R3) ride along as one more per-row field
        assert joined.routes.dtype == np.int32
        np.testing.assert_array_equal(joined.routes, original.routes)
    else:
        assert joined.routes is None
