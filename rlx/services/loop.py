"""The synchronous RL loop: rollout -> reward -> learn -> (validate) -> (save)."""

from __future__ import annotations

from pathlib import Path

from rlx.config import Config
from rlx.services.trainer import Trainer


def train(config: Config) -> Path:
    """Runs (or resumes) `config` to `run.steps` RL steps; returns the reward-curve path."""
    trainer = Trainer(config)
    run = config.run
    try:
        step = trainer.resume_or_warm_start()
        while step < run.steps:
            step += 1
            metrics = trainer.rl_step(step)
            if step % run.eval_every == 0 or step == run.steps:
                metrics.update(trainer.evaluate())
            trainer.tracker.log(step, metrics)
            if step % run.checkpoint_every == 0 or step == run.steps:
                trainer.save(step)
    finally:
        curve = trainer.close()
    return curve
