"""A tiny omni run end to end: media through warm-up, rollout (encoders in prefill), learner and validation."""

from collections import Counter

import jax
import numpy as np
import pytest
from flax import nnx

from rlx.bus import TransferQueue
from rlx.config import load_config
from rlx.data.placeholders import record_modality
from rlx.services.trainer import Trainer
from rlx.services.transfer import TRAIN_FIELDS, ScoredBatch, from_groups, to_groups
from tests.conftest import tiny_overrides

OMNI = [
    "data.source=omni", "data.train_size=48", "data.val_size=6", "data.max_prompt_len=24", "model.max_seq_len=32",
    "rollout.max_new_tokens=4", "data.omni.warmup_flaw_rate=0.5", "optimizer.warmup_steps=0",
    "model.vision.enabled=true", "model.vision.width=16", "model.vision.heads=2", "model.vision.mlp=32",
    "model.audio.enabled=true", "model.audio.width=16", "model.audio.heads=2", "model.audio.mlp=32", "model.audio.trainable=false",
]


def encoder_weights(trainer, name):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(trainer.learner.model(), nnx.Param)[name])]


def moved(before, after):
    return any(not np.array_equal(a, b) for a, b in zip(before, after))


def through_the_bus(batch: ScoredBatch) -> ScoredBatch:
    bus = TransferQueue(capacity=len(batch.rollout.records))
    for fields, meta in to_groups(batch):
        bus.put(1, fields, meta)
    bus.seal(1)
    return from_groups(bus.take_batch(1, TRAIN_FIELDS, timeout=1)[0])


def test_media_flow_through_warmup_rollout_bus_learner_and_validation(tmp_path):
    trainer = Trainer(load_config(None, tiny_overrides(tmp_path / "run") + OMNI))
    try:
        initial = {name: encoder_weights(trainer, name) for name in ("vision", "audio")}
        trainer.resume_or_warm_start()
        first_row = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0]
        assert all(f'"val/accuracy/{name}"' in first_row for name in ("image", "audio", "video"))
        # Supervised warm-up reaches the encoders through the merge point; the frozen one stays put.
        warmed = {name: encoder_weights(trainer, name) for name in ("vision", "audio")}
        assert moved(initial["vision"], warmed["vision"]) and not moved(initial["audio"], warmed["audio"])

        rollout = trainer.produce(1)[0].rollout  # the generator role: picks up the warmed-up weights first
        assert set(rollout.media) == {"image", "audio", "video"} and len(rollout.media["image"]) == len(rollout.records)
        rewards = (np.arange(len(rollout.records)) % 2).astype(np.float32)  # varied within each group: non-zero advantages
        trained = through_the_bus(ScoredBatch(rollout, [""] * len(rewards), rewards, rewards))
        np.testing.assert_array_equal(trained.rollout.media["video"], rollout.media["video"])
        metrics = trainer.learner.update(trainer._train_batch(1, trained.rollout, trained.rewards))
        assert np.isfinite(metrics["actor/pg_loss"])
        # The learner re-encodes the rollout's media, so the RL update reaches the trainable encoder too.
        assert moved(warmed["vision"], encoder_weights(trainer, "vision"))
        assert not moved(warmed["audio"], encoder_weights(trainer, "audio"))
        # Sampler and learner agree on the behaviour log-probs: the engine's prefill saw the same media.
        assert metrics["training/rollout_probs_diff_max"] < 1e-3
        # Sampled evaluation (rlx.eval) reports pass@1 per modality; weighted by prompt counts they make pass@1.
        sampled = trainer.sampled_evaluation(trainer.task.val, 2)
        counts = Counter(record_modality(r) for r in trainer.task.val)
        assert set(counts) == {"image", "audio", "video"}
        weighted = sum(sampled[f"pass@1/{name}"] * n for name, n in counts.items()) / sum(counts.values())
        assert weighted == pytest.approx(sampled["pass@1"])
    finally:
        trainer.close()
