"""A tiny omni run end to end: media through warm-up, rollout (encoders in prefill), learner and validation."""

import jax
import numpy as np
from flax import nnx

from rlx.config import load_config
from rlx.services.trainer import Trainer
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


def test_media_flow_through_warmup_rollout_learner_and_validation(tmp_path):
    trainer = Trainer(load_config(None, tiny_overrides(tmp_path / "run") + OMNI))
    try:
        initial = {name: encoder_weights(trainer, name) for name in ("vision", "audio")}
        trainer.resume_or_warm_start()
        first_row = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0]
        assert all(f'"val/accuracy/{name}"' in first_row for name in ("image", "audio", "video"))
        # Supervised warm-up reaches the encoders through the merge point; the frozen one stays put.
        warmed = {name: encoder_weights(trainer, name) for name in ("vision", "audio")}
        assert moved(initial["vision"], warmed["vision"]) and not moved(initial["audio"], warmed["audio"])

        rollout = trainer._generate(1)
        assert set(rollout.media) == {"image", "audio", "video"} and len(rollout.media["image"]) == len(rollout.records)
        rewards = (np.arange(len(rollout.records)) % 2).astype(np.float32)  # varied within each group: non-zero advantages
        metrics = trainer.learner.update(trainer._train_batch(1, rollout, rewards))
        assert np.isfinite(metrics["actor/pg_loss"])
        # The learner re-encodes the rollout's media, so the RL update reaches the trainable encoder too.
        assert moved(warmed["vision"], encoder_weights(trainer, "vision"))
        assert not moved(warmed["audio"], encoder_weights(trainer, "audio"))
        # Sampler and learner agree on the behaviour log-probs: the engine's prefill saw the same media.
        assert metrics["training/rollout_probs_diff_max"] < 1e-3
    finally:
        trainer.close()
