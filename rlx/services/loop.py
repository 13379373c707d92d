"""The RL loop: a generator role fills the bus up to `bus.max_staleness` steps ahead; the learner
takes each step's batch -> learns -> publishes weights -> (validates) -> checks it went well (`RunGuard`) ->
(saves) -> logs, with the roles' health (`services.json`, `services/*` metrics); at the end, with
`run.export_hf`, the final policy is written as a Hugging Face checkpoint."""

from __future__ import annotations

from pathlib import Path

from flax import nnx

from rlx.config import Config
from rlx.services.feed import RolloutFeed
from rlx.parallel.processes import local_copy
from rlx.services.guards import RunGuard
from rlx.services.health import Health
from rlx.services.hf_export import export_policy
from rlx.services.supervisor import learner_restarts
from rlx.services.trainer import Trainer


def train(config: Config) -> Path:
    """Runs (or resumes) `config` to `run.steps` RL steps; returns the reward-curve path."""
    trainer = Trainer(config)
    run, guard = config.run, RunGuard(config)
    try:
        step = trainer.resume_or_warm_start()
        roles = health(trainer)
        learner = roles.clock("learner", "training")
        learner.restarts = learner_restarts()  # by the supervisor of `services.backend: process`
        with roles, RolloutFeed(trainer, first=step + 1, last=run.steps) as feed:
            roles.watch(feed.generator.health)
            while step < run.steps:
                step += 1
                learner.beat("waiting")  # each phase beats: the supervisor restarts a learner stuck in one (`services.hang_timeout_s`)
                with trainer.timeline.span("learner", "wait_batch", step):
                    batch, metrics = feed.take(step)
                learner.beat("training")
                metrics.update(trainer.learn(step, batch))
                learner.beat("training")
                feed.advance(step)
                metrics.update(roles.metrics())
                if step % run.eval_every == 0 or step == run.steps:
                    learner.beat("evaluating")
                    with trainer.timeline.span("learner", "evaluate", step):
                        metrics.update(trainer.evaluate())
                guard.check(step, metrics)  # a run gone bad stops before it checkpoints the damage
                if step % run.checkpoint_every == 0 or step == run.steps:
                    learner.beat("saving")
                    with trainer.timeline.span("learner", "save", step):
                        trainer.save(step, **feed.checkpoint_state())
                trainer.tracker.log(step, metrics)  # after the checkpoint decision: a rerun never logs a step twice
        if run.export_hf:
            policy = nnx.merge(trainer.learner.graphdef, local_copy(trainer.learner.params))  # whole on every process
            if trainer.processes.primary:
                export_policy(config, policy, Path(run.output_dir) / "hf")
    finally:
        curve = trainer.close()
    return curve


def health(trainer: Trainer) -> Health:
    """The roles' health (`rlx.services.health`), the reward workers' among them; process 0 writes `<output_dir>/services.json`."""
    roles = Health(trainer.output_dir / "services.json" if trainer.processes.primary else None, trainer.config.services.heartbeat_s)
    pool = trainer.generation.reward_pool
    if pool is not None:
        roles.watch(pool.health)
    return roles
