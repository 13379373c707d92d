"""The learner role's state and its RL update: policy weights, optimizer state, reference, teacher, critic.

The compiled work is in `rlx.learner.programs` (one builder, also used by `--dry-run`); this
module holds the state, feeds rows onto the learner's mesh and brings metrics back to the host.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rlx.algorithms import AlgorithmConfig
from rlx.errors import RunStopped
from pallas_kernels import resolve_fused_logprob_impl
from rlx.learner.build import LearnerSpec, build_programs, fitting_micro_batch_rows
from rlx.learner.config import CriticConfig, DistillConfig, LearnerConfig, OptimizerConfig
from rlx.learner.critic import Critic, value_metrics
from rlx.learner.memory import GIB
from rlx.learner.objective import TrainBatch
from rlx.learner.programs import Weights, abstract
from rlx.parallel import rules_for
from rlx.parallel.layout import Layout
from rlx.parallel.mesh import expand_shardings
from rlx.parallel.presets import Rules

log = logging.getLogger(__name__)


class NonFiniteLossError(RunStopped):
    """Too many consecutive updates had a non-finite loss or gradient, or an update left a parameter non-finite."""


class Learner:
    """Policy (and optional critic) updates on the learner's mesh.

    `params` may already be sharded (they are moved onto the rules' shardings otherwise); the
    optimizer state, reference copy and critic are created on their shardings. `teacher` is the
    on-policy-distillation teacher `(graphdef, params)`, needed iff `distill.coef > 0`; its
    weights are trained by the caller (`set_teacher_params`). `device_memory_gib` is what
    `learner.micro_batch_rows: auto` fits into where the device reports no limit of its own.
    """

    def __init__(
        self, graphdef: nnx.GraphDef, params: Weights, algorithm: AlgorithmConfig, optimizer: OptimizerConfig, temperature: float,
        critic: CriticConfig = CriticConfig(), distill: DistillConfig = DistillConfig(), teacher: tuple[nnx.GraphDef, Weights] | None = None,
        learner: LearnerConfig = LearnerConfig(), *, mesh: Mesh | None = None, rules: Rules | None = None,
        device_memory_gib: float | None = None,
    ):
        if (teacher is not None) != (distill.coef > 0):
            raise ValueError("pass a teacher model exactly when distill.coef > 0")
        if (algorithm.adv_estimator == "gae") != critic.enabled:
            raise ValueError("adv_estimator gae needs critic.enabled, and only gae uses a critic")
        rules = rules_for("fsdp") if rules is None else rules
        self.layout = Layout(mesh, rules) if mesh is not None else Layout.single_device(rules)
        self.graphdef, self.algorithm, self.optimizer_config, self.config = graphdef, algorithm, optimizer, learner
        self.device_memory_gib = device_memory_gib
        self.spec = LearnerSpec(nnx.merge(graphdef, params).config, algorithm, optimizer, temperature, learner, critic, distill)
        log.info("learner log-probs: fused kernel %r (learner.logprob_impl=%r)", resolve_fused_logprob_impl(learner.logprob_impl), learner.logprob_impl)
        self._shapes = (abstract(params), (teacher[0], abstract(teacher[1])) if teacher is not None else None)
        self.critic: Critic | None = None
        self.micro_batch_rows = learner.micro_batch_rows
        self._build_programs(None if self.micro_batch_rows == "auto" else self.micro_batch_rows)
        warn_if_updates_vanish(params, optimizer.learning_rate)
        self.params = self._place(params, self.programs.param_shardings)
        self.opt_state = self.programs.init_opt_state(self.params)
        self.ref_params = self.programs.copy(self.params) if algorithm.kl_coef > 0 else None
        self.teacher_params = self._place(teacher[1], self.programs.teacher_shardings) if teacher is not None else None
        self.critic = Critic(self.critic_programs, self.params) if critic.enabled else None
        self.consecutive_nonfinite = 0

    def _build_programs(self, micro_batch_rows: int | None) -> None:
        params, teacher = self._shapes
        self.programs, self.critic_programs = build_programs(self.spec, self.graphdef, params, self.layout, micro_batch_rows, teacher)
        if self.critic is not None:
            self.critic.programs = self.critic_programs

    def update(self, batch: TrainBatch) -> dict[str, float]:
        """One RL update on `batch` (this process's rows, host or device arrays); returns host-side metrics."""
        if self.config.proximal == "approximate" and batch.staleness is None:
            raise ValueError("learner.proximal=approximate needs TrainBatch.staleness (per-token policy-version lag)")
        if self.algorithm.routing_replay == "replay" and batch.routes is None:
            raise ValueError("algorithm.routing_replay=replay needs TrainBatch.routes (the experts the engine recorded per token)")
        batch = self._feed(batch)
        programs = self.programs
        route_agreement = None
        if self.config.proximal == "approximate":
            old_log_probs = batch.behaviour_log_probs  # stands in until the loss interpolates
        else:
            old_log_probs, _, route_agreement = programs.log_probs(self.params, batch)
        ref_log_probs = programs.log_probs(self.ref_params, batch)[0] if self.ref_params is not None else None
        teacher_log_probs = programs.teacher_log_probs(self.teacher_params, batch)[0] if self.teacher_params is not None else None
        values = self.critic.values(batch) if self.critic is not None else jnp.zeros_like(old_log_probs)
        targets, returns, prepared = programs.prepare(batch, old_log_probs, ref_log_probs, teacher_log_probs, values)
        self.params, self.opt_state, metrics = programs.update(self.params, self.opt_state, batch, targets)
        if self.critic is not None:
            metrics.update(self.critic.update(batch, values, returns))
            prepared.update(value_metrics(values, returns, batch.mask))
        if route_agreement is not None:  # of the weights before the update, as training/rollout_probs_diff_*
            agreed, recorded = jnp.sum(route_agreement, axis=0)
            prepared["moe/route_agreement"] = agreed / jnp.maximum(recorded, 1)
        per_step = jax.device_get(metrics)  # each [optimizer steps of this update]
        self._count_nonfinite(float(np.min(per_step["actor/update_finite"])))
        if not bool(all_finite(self.params)):
            raise NonFiniteLossError(
                "the update left parameters that are not finite (inf/NaN) although its loss and gradient were finite; "
                "the weights are lost, so the run stops before checkpointing them: lower optimizer.learning_rate"
            )
        return {**{key: float(np.mean(value)) for key, value in per_step.items()},
                **{key: float(value) for key, value in jax.device_get(prepared).items()}}

    def log_probs(self, batch: TrainBatch) -> tuple[jax.Array, jax.Array]:
        """(log-probs, entropies) [B, R] of `batch`'s responses under the current weights."""
        return tuple(self.programs.log_probs(self.params, self._feed(batch))[:2])

    def teacher_log_probs(self, batch: TrainBatch) -> jax.Array:
        return self.programs.teacher_log_probs(self.teacher_params, self._feed(batch))[0]

    def refresh_reference(self) -> None:
        """Makes the current weights the KL reference (`algorithm.ref_update_every`)."""
        self.ref_params = self.programs.copy(self.params)

    def set_teacher_params(self, params: Weights) -> None:
        self.teacher_params = self._place(params, self.programs.teacher_shardings)

    def reset_weights(self, params: Weights) -> None:
        """Starts RL from `params` (e.g. after warm-up): fresh optimizer, reference and critic trunk = these weights."""
        self.params = self._place(params, self.programs.param_shardings)
        self.opt_state = self.programs.init_opt_state(self.params)
        if self.ref_params is not None:
            self.ref_params = self.programs.copy(self.params)
        if self.critic is not None:
            self.critic.init_trunk(self.params)

    def state_dict(self) -> dict[str, object]:
        state = {"params": self.params, "opt_state": self.opt_state}
        if self.ref_params is not None:
            state["ref_params"] = self.ref_params
        if self.teacher_params is not None:
            state["teacher_params"] = self.teacher_params
        if self.critic is not None:
            state.update(self.critic.state_dict())
        return state

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.params = state["params"]
        self.opt_state = state["opt_state"]
        if self.ref_params is not None:
            self.ref_params = state["ref_params"]
        if self.teacher_params is not None:
            self.teacher_params = state["teacher_params"]
        if self.critic is not None:
            self.critic.load_state_dict(state)

    @property
    def teacher_graphdef(self) -> nnx.GraphDef | None:
        return self.programs.teacher_graphdef

    def model(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.params)

    def _feed(self, batch: TrainBatch) -> TrainBatch:
        batch = self.layout.feed(batch)
        if self.micro_batch_rows == "auto":
            self.micro_batch_rows = self._fitting_micro_batch_rows(batch)
            self._build_programs(self.micro_batch_rows)
        return batch

    def _fitting_micro_batch_rows(self, batch: TrainBatch) -> int:
        """The largest micro-batch whose programs fit the device (its reported limit, else `device_memory_gib`)."""
        stats = self.layout.mesh.local_devices[0].memory_stats() or {}  # a device of this process
        limit = stats.get("bytes_limit") or (self.device_memory_gib * GIB if self.device_memory_gib else None)
        if limit is None:
            raise ValueError("learner.micro_batch_rows: auto needs the device memory: the device reports none, so set parallel.device_memory_gib")
        params, teacher = self._shapes
        return fitting_micro_batch_rows(self.spec, self.graphdef, params, self.layout, abstract(batch), limit, teacher)[0]

    @staticmethod
    def _place(params: Weights, shardings) -> Weights:
        """`params` on `shardings` (a prefix), left where they are if they are there already."""
        full = expand_shardings(shardings, params)
        if all(isinstance(x, jax.Array) and x.sharding == s for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(full))):
            return params
        return jax.device_put(params, full)

    def _count_nonfinite(self, finite: float) -> None:
        self.consecutive_nonfinite = 0 if finite else self.consecutive_nonfinite + 1
        if self.consecutive_nonfinite >= self.optimizer_config.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{self.consecutive_nonfinite} consecutive updates had a non-finite loss or gradient and were skipped; "
                "lower optimizer.learning_rate, tighten optimizer.grad_clip, or check rewards for NaN/inf"
            )


@jax.jit
def all_finite(tree: Weights) -> jax.Array:
    """One boolean: every element of every array in `tree` is finite."""
    floats = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in floats])) if floats else jnp.array(True)


def warn_if_updates_vanish(params: Weights, learning_rate: float) -> None:
    """Warns when bfloat16 master weights are too coarse for the learning rate to move most of them."""
    weights = [x for x in jax.tree.leaves(params) if x.dtype == jnp.bfloat16]
    if not weights:
        return
    # Adam moves a weight by about the learning rate per step; rounding to the nearest bf16 value
    # drops any step below half the spacing at |w| = m * 2^e (m in [0.5, 1)), which is 2^(e - 9).
    stuck = sum(int(jnp.sum(jnp.ldexp(1.0, jnp.frexp(x.astype(jnp.float32))[1] - 9) > learning_rate)) for x in weights)
    share = stuck / sum(x.size for x in jax.tree.leaves(params))
    if share > 0.5:
        log.warning(
            "model.param_dtype=bfloat16 with optimizer.learning_rate=%g: %.0f%% of the weights can never change. Adam moves each "
            "weight by about the learning rate per step, and a bfloat16 weight w only changes by steps larger than half its "
            "spacing (about |w| * 2^-9), so smaller updates round away. Use model.param_dtype=float32 (float32 master weights "
            "and optimizer state; compute stays in model.dtype=bfloat16) or a larger learning rate.", learning_rate, 100 * share)
