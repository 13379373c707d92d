"""From the run's settings to the learner's compiled programs: the one place both `Learner` and `--dry-run` build them."""

from __future__ import annotations

import dataclasses
import logging

import optax
from flax import nnx

from rlx.algorithms import AlgorithmConfig
from rlx.learner.config import CriticConfig, DistillConfig, LearnerConfig, OptimizerConfig
from rlx.learner.critic import CriticPrograms
from rlx.learner.memory import GIB, ProgramMemory, Programs, largest_fitting, micro_batch_candidates
from rlx.learner.objective import Objective, TrainBatch
from rlx.learner.optimizer import freeze_encoders, make_optimizer, separate_heads
from rlx.learner.programs import LearnerPrograms, ProgramBuilder, Schedule, ScoreSettings, Weights
from rlx.models import ModelConfig
from rlx.parallel.layout import Layout

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LearnerSpec:
    """Everything from the config that shapes the learner's programs."""

    model: ModelConfig
    algorithm: AlgorithmConfig
    optimizer: OptimizerConfig
    temperature: float  # of the sampler; greedy (0) scores at 1
    learner: LearnerConfig = LearnerConfig()
    critic: CriticConfig = CriticConfig()
    distill: DistillConfig = DistillConfig()

    def tx(self) -> optax.GradientTransformation:
        return freeze_encoders(separate_heads(lambda: make_optimizer(self.optimizer), self.model), self.model)

    def settings(self) -> ScoreSettings:
        return ScoreSettings(self.temperature if self.temperature > 0 else 1.0, self.learner.logprob_impl, self.learner.remat,
                             self.algorithm.routing_replay)


def build_programs(spec: LearnerSpec, graphdef: nnx.GraphDef, params: Weights, layout: Layout, micro_batch_rows: int | None,
                   teacher: tuple[nnx.GraphDef, Weights] | None = None) -> tuple[LearnerPrograms, CriticPrograms | None]:
    """The policy's (and teacher's) programs, and the critic's when `spec.critic.enabled`; `params` may be abstract."""
    algorithm = spec.algorithm
    builder = ProgramBuilder(layout, Schedule(algorithm.epochs, algorithm.minibatches, micro_batch_rows))
    objective = Objective(algorithm, spec.distill, spec.learner.proximal)
    policy = LearnerPrograms(graphdef, params, spec.tx(), objective, spec.settings(), builder, teacher)
    if not spec.critic.enabled:
        return policy, None
    critic = CriticPrograms(spec.model, spec.critic, spec.optimizer.grad_clip, builder, policy.param_shardings, spec.learner.remat)
    return policy, critic


def every_program(programs: tuple[LearnerPrograms, CriticPrograms | None], batch: TrainBatch) -> Programs:
    """Each program an update on `batch` (abstract) runs, with abstract arguments."""
    policy, critic = programs
    return {**policy.programs(batch), **(critic.programs(batch) if critic is not None else {})}


def fitting_micro_batch_rows(spec: LearnerSpec, graphdef: nnx.GraphDef, params: Weights, layout: Layout, batch: TrainBatch,
                             limit_bytes: float, teacher: tuple[nnx.GraphDef, Weights] | None = None) -> tuple[int, dict[str, ProgramMemory]]:
    """`learner.micro_batch_rows: auto`: the largest micro-batch whose every program fits `limit_bytes` per device
    (the smallest that splits over the devices if none does), with the memory of its programs."""
    rows, minibatches = batch.mask.shape[0], spec.algorithm.minibatches
    if rows % minibatches:
        raise ValueError(f"{rows} rollouts do not split into algorithm.minibatches={minibatches}")
    candidates = micro_batch_candidates(rows // minibatches, layout.row_ways)
    if not candidates:
        raise ValueError(f"a minibatch of {rows // minibatches} rows does not split over the learner's {layout.row_ways} "
                         "data-parallel devices; raise data.prompts_per_step or lower algorithm.minibatches")
    programs_for = lambda micro: every_program(build_programs(spec, graphdef, params, layout, micro, teacher), batch)
    chosen, memory = largest_fitting(candidates, programs_for, limit_bytes)
    log.info("learner.micro_batch_rows: auto -> %d rows (peak %.2f GiB per device, limit %.2f GiB)", chosen,
             max(m.peak for m in memory.values()) / GIB, limit_bytes / GIB)
    return chosen, memory
