"""Rollout routing replay (R3) in whole runs of a tiny MoE model: routes recorded by the generator reach the
learner through the synchronous step and through the bus with partial, interrupted rollouts."""

import numpy as np

from rlx.config import load_config
from rlx.services import train
from rlx.services.trainer import Trainer
from rlx.services.tracking import read_metrics
from tests.conftest import tiny_overrides
from tests.services.test_async_loop import SIGNAL

MOE = ["model.num_experts=4", "model.num_experts_per_tok=2", "model.moe_intermediate_size=16"]


def test_bfloat16_generator_records_routes_for_a_float32_learner(tmp_path):
    trainer = Trainer(load_config(None, [*tiny_overrides(tmp_path / "run"), *SIGNAL, *MOE, "algorithm.routing_replay=record",
                                         "rollout.dtype=bfloat16"]))
    try:
        trainer.resume_or_warm_start()
        batch, _ = trainer.produce(1)
        rollout = batch.rollout
        rows, width = rollout.generation.tokens.shape[0], rollout.prompt_tokens.shape[1] + rollout.generation.tokens.shape[1]
        assert rollout.routes.shape == (rows, width, 1, 2)
        recorded = (rollout.routes >= 0).all(axis=(2, 3))
        prompt_real = np.arange(rollout.prompt_tokens.shape[1])[None, :] >= rollout.start[:, None]
        np.testing.assert_array_equal(recorded, np.concatenate([prompt_real, rollout.generation.mask > 0], axis=1))
        metrics = trainer.learn(1, batch)
        assert 0.5 < metrics["moe/route_agreement"] <= 1.0
        assert metrics["training/rollout_probs_diff_mean"] > 1e-6  # bf16 sampling, f32 scoring: they differ
        assert trainer.learner.params["embed"][...].dtype == np.float32 and trainer.rollout.params["embed"][...].dtype.name == "bfloat16"
    finally:
        trainer.close()


def test_async_partial_interrupted_run_replays_routes_through_the_bus(tmp_path):
    out = tmp_path / "r3"
    train(load_config(None, [*tiny_overrides(out), *SIGNAL, *MOE, "algorithm.routing_replay=replay", "run.steps=3", "bus.max_staleness=1",
                             "bus.interrupt=recompute_cache", "rollout.token_budget=6", "rollout.max_concurrent_decodes=8"]))
    rows = read_metrics(out / "metrics.jsonl")[1:]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert sum(r["rollout/carried_over_samples"] for r in rows) > 0
    assert all(0.5 < r["moe/route_agreement"] <= 1.0 and np.isfinite(r["actor/pg_loss"]) for r in rows)
