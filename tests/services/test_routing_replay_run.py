"""Rollout routing replay (R3) in a whole run of a tiny MoE model: routes recorded by a bfloat16 generator reach the
float32 learner through the bus with partial, interrupted rollouts, and are replayed there."""

import numpy as np

from rlx.config import load_config
from rlx.services import train
from rlx.services.tracking import read_metrics
from tests.conftest import tiny_overrides
from tests.services.test_async_loop import SIGNAL

MOE = ["model.num_experts=4", "model.num_experts_per_tok=2", "model.moe_intermediate_size=16"]


def test_async_partial_interrupted_run_replays_bfloat16_routes_through_the_bus(tmp_path):
    out = tmp_path / "r3"
    train(load_config(None, [*tiny_overrides(out), *SIGNAL, *MOE, "algorithm.routing_replay=replay", "rollout.dtype=bfloat16",
                             "run.steps=3", "bus.max_staleness=1", "bus.interrupt=recompute_cache", "rollout.token_budget=6",
                             "rollout.max_concurrent_decodes=8"]))
    rows = read_metrics(out / "metrics.jsonl")[1:]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert sum(r["rollout/carried_over_samples"] for r in rows) > 0
    assert all(0.5 < r["moe/route_agreement"] <= 1.0 and np.isfinite(r["actor/pg_loss"]) for r in rows)
    assert all(r["training/rollout_probs_diff_mean"] > 1e-6 for r in rows)  # bf16 sampling, f32 scoring: they differ
