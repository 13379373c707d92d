"""The learner's side of the bus: a generator role running ahead, whole steps taken from the TransferQueue.

`max_staleness: 0` makes the generator wait for each update (the synchronous loop, same
numbers); `k` lets it draw up to `k` steps ahead. A group holding a token staler than the
bound is dropped and counted (`bus/groups_dropped_stale`), never trained on silently.
A resumed run puts the batches its checkpoint drew ahead (`Trainer.drawn_ahead`) back on the
bus, sealed, and the generator continues after them. With partial rollouts each sealed batch's meta holds the work
they carried after it (`carried`): a checkpoint saves that of the last batch sealed (or, with none, of the last taken).
`services.backend: process` draws in child processes (`services.generators`, `rlx.services.generator_process`)
instead of a thread, into the same bus; `ray` in Ray actors.
"""

from __future__ import annotations

import time
from typing import Any

from rlx.bus import BusClosed, StalenessGate, TransferQueue, stale_rows, staleness_metrics, token_staleness
from rlx.config import Config
from rlx.services.bus_checkpoint import DrawnBatch
from rlx.services.generator import GeneratorRole
from rlx.services.generator_process import ProcessGeneratorRole, Transport
from rlx.services.trainer import Trainer
from rlx.services.transfer import TRAIN_FIELDS, ScoredBatch, from_groups


class RolloutFeed:
    def __init__(self, trainer: Trainer, first: int, last: int, take_timeout_s: float | None = None):
        config = trainer.config
        self.max_staleness = config.bus.max_staleness
        self.bus = TransferQueue(config.bus.groups_held(config.data.prompts_per_step))
        self.gate = StalenessGate(self.max_staleness, published=trainer.published_version)
        restored = [batch for batch in trainer.drawn_ahead if batch.step <= last]
        self._carried = trainer.carried  # after the last batch restored, or the step the checkpoint trained last
        for batch in restored:
            for fields, group_meta in batch.groups:
                self.bus.put(batch.step, fields, group_meta, producer="checkpoint")
            self.bus.seal(batch.step, {**batch.meta, "carried": self._carried} if batch is restored[-1] else batch.meta)
        # Partial rollouts keep samples in the driver across steps: a thread's failed step cannot be drawn again from where it
        # began; a generator process's replacement takes up the work carried after the last step sealed instead.
        thread_carries = config.rollout.token_budget is not None and config.services.backend == "local"
        restarts = 0 if thread_carries else config.services.max_restarts
        first += len(restored)
        if config.services.backend != "local":
            self.generator = ProcessGeneratorRole(config, self.bus, self.gate, first, last, trainer.mailbox.take, trainer.prompts.get_state(),
                                                  max_restarts=restarts, heartbeat_s=config.services.heartbeat_s,
                                                  transport=_ray_transport(config) if config.services.backend == "ray" else None,
                                                  carried=self._carried)
        else:
            self.generator = GeneratorRole(trainer.produce, self.bus, self.gate, first, last, trainer.timeline, max_restarts=restarts,
                                           heartbeat_s=config.services.heartbeat_s)
        self.take_timeout_s = take_timeout_s
        self._data_state: dict[str, Any] | None = None

    def __enter__(self) -> "RolloutFeed":
        self.generator.start()
        return self

    def __exit__(self, *exc) -> None:
        self.generator.stop()

    def take(self, step: int) -> tuple[ScoredBatch, dict[str, float]]:
        """Step `step`'s batch once the generator sealed it, minus groups staler than the bound; and its metrics."""
        began = time.perf_counter()
        try:
            groups, meta = self.bus.take_batch(step, TRAIN_FIELDS, consumer="learner", timeout=self.take_timeout_s)
        except BusClosed:
            if self.generator.error is not None:
                raise self.generator.error from None  # the generator closed the bus when it failed
            raise
        waited = time.perf_counter() - began
        fresh = [g for g in groups if not stale_rows(g.fields["versions"], step, self.max_staleness).any()]
        if len(fresh) < len(groups):
            self.bus.count("groups_dropped_stale", len(groups) - len(fresh))
        if not fresh:
            raise RuntimeError(f"every group of step {step} is staler than bus.max_staleness={self.max_staleness}; admission should prevent this")
        self._data_state, self._carried = meta["data_state"], meta.get("carried")
        batch = from_groups(fresh)
        metrics = dict(meta["metrics"])
        metrics.update(staleness_metrics(token_staleness(batch.rollout.policy_version, step)))
        metrics.update(self.bus.metrics())
        metrics["timing_s/learner_wait"] = waited
        return batch, metrics

    def advance(self, version: int) -> None:
        """The learner published `version`: admit the steps it allows (a generator process also gets the weights)."""
        self.generator.advance(version)

    def checkpoint_state(self) -> dict[str, Any]:
        """What `Trainer.save` needs: the batches sealed ahead of the learner (saved with the checkpoint), the prompt
        stream's position after the step trained last, how many groups of a step still being drawn a resumed run
        draws again, and the partial rollouts' work carried after the last batch sealed (a step being drawn changes
        the generator's, not this one)."""
        sealed, unsealed = self.bus.snapshot()  # each meta a copy
        carried = sealed[-1][2].get("carried") if sealed else self._carried
        drawn = [DrawnBatch(step, [(dict(g.fields), dict(g.meta)) for g in groups], {k: v for k, v in meta.items() if k != "carried"})
                 for step, groups, meta in sealed]
        return {"data_state": self._data_state, "bus_groups": unsealed, "carried": carried, "drawn_ahead": drawn}


def _ray_transport(config: Config) -> Transport:
    from rlx.services.generator_ray import RayTransport  # Ray is optional: imported for its backend only

    return RayTransport(config)
