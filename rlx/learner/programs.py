"""The learner's compiled programs, built in one place: the run (`Learner`) and `--dry-run` both use them.

Every program is a `jax.jit` with explicit shardings from the learner's `Layout`: weights and
optimizer state by their logical names, batch rows over the data-parallel axes (`batch` in the
rules), metrics replicated. Model code traced inside runs under the layout's activation hooks
(`rlx.models.activation_sharding`): residual-stream rows over the same axes, encoders over every
device, Pallas kernels per device.

An update is one program: `epochs` passes over `minibatches` strided minibatches (one optimizer
step each, as without micro-batching), each minibatch's gradient accumulated over micro-batches
of `micro_batch_rows` rows in a scan. Recompute passes (old, reference and teacher log-probs,
critic values) scan over micro-batches of the same size. Rows must split evenly over the
data-parallel devices at every level; the errors say which count to change.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rlx.learner.logprobs import ResponseScores, response_hidden_and_scores
from rlx.learner.memory import Programs
from rlx.learner.microbatch import accumulate_gradients, map_slices, slice_count, strided
from rlx.learner.mtp import mtp_coefficients, mtp_loss
from rlx.learner.objective import Objective, StepTargets, TrainBatch
from rlx.models.activation_sharding import activation_sharding
from rlx.parallel.layout import Layout

Weights = Any  # an nnx.State of weights (arrays or ShapeDtypeStructs)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Optimizer steps of one update and the micro-batch size of every pass."""

    epochs: int = 1
    minibatches: int = 1
    micro_batch_rows: int | None = None  # None: whole minibatches (update) and whole steps (recompute passes)


@dataclasses.dataclass(frozen=True)
class ScoreSettings:
    temperature: float  # of the behaviour policy's log-probs
    logprob_impl: str = "auto"
    remat: str = "none"  # of the update's backward pass
    routing_replay: str = "off"  # AlgorithmConfig.routing_replay: `replay` replays a batch's recorded routes


def abstract(tree: Any) -> Any:
    """Shapes and dtypes only (what `--dry-run` compiles with)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _rows(tree: Any) -> int:
    return jax.tree.leaves(tree)[0].shape[0]


class ProgramBuilder:
    """`jit` with shardings under the activation hooks, and the schedule both the policy and the critic follow."""

    def __init__(self, layout: Layout, schedule: Schedule):
        self.layout, self.schedule = layout, schedule
        self._hooks = layout.hooks()

    def jit(self, fn: Callable, in_shardings: Any, out_shardings: Any, donate_argnums: tuple[int, ...] = ()) -> Callable:
        def traced(*args):
            with activation_sharding(self._hooks):
                return fn(*args)
        return jax.jit(traced, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=donate_argnums)

    def micro_batches(self, rows: int, what: str) -> int:
        count = slice_count(rows, self.schedule.micro_batch_rows, what)
        self.layout.check_rows(rows // count, f"{what} micro-batch")
        return count

    def forward(self, fn: Callable[[Any], Any], rows: Any) -> Any:
        """`fn` over a step's rows, micro-batch by micro-batch."""
        return map_slices(fn, rows, self.micro_batches(_rows(rows), "recompute pass"), self.layout.constrain_rows)

    def optimizer_steps(self, tx: optax.GradientTransformation, loss_fn: Callable, weigh: Callable, params: Weights,
                        opt_state: Any, rows: Any, prefix: str) -> tuple[Weights, Any, dict[str, jax.Array]]:
        """`epochs * minibatches` optimizer steps on `rows`; metrics stacked per step.

        `weigh(minibatch) -> weights` runs once per minibatch (e.g. its loss normalisers), and
        `loss_fn(params, (micro rows, micro weights), progress) -> (loss, metrics)` per micro-batch,
        its loss and metrics summing over micro-batches to the minibatch's. A step whose loss or
        gradient is not finite leaves weights and optimizer state untouched.
        """
        minibatches, place = self.schedule.minibatches, self.layout.constrain_rows
        total = _rows(rows)
        if total % minibatches:
            raise ValueError(f"{total} rollouts do not split into algorithm.minibatches={minibatches}")
        micro = self.micro_batches(total // minibatches, "update")
        steps = self.schedule.epochs * minibatches

        def step(carry, index):
            params, opt_state = carry
            minibatch = place(strided(rows, minibatches, index % minibatches))
            progress = index.astype(jnp.float32) / steps  # of this update, in policy versions
            micro_loss = lambda params, micro_rows: loss_fn(params, micro_rows, progress)
            loss, grads, metrics = accumulate_gradients(micro_loss, params, (minibatch, weigh(minibatch)), micro, place)
            grad_norm = optax.tree.norm(grads)
            updates, new_opt_state = tx.update(grads, opt_state, params)
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
            metrics.update({f"{prefix}/grad_norm": grad_norm, f"{prefix}/update_finite": finite.astype(jnp.float32)})
            return (keep(optax.apply_updates(params, updates), params), keep(new_opt_state, opt_state)), metrics

        (params, opt_state), metrics = jax.lax.scan(step, (params, opt_state), jnp.arange(steps))
        return params, opt_state, metrics


class LearnerPrograms:
    """The policy's programs, and the distillation teacher's log-probs.

    `params` (and the teacher's) may be concrete or abstract: only their shapes, dtypes and
    logical names are read.
    """

    def __init__(self, graphdef: nnx.GraphDef, params: Weights, tx: optax.GradientTransformation, objective: Objective,
                 settings: ScoreSettings, builder: ProgramBuilder, teacher: tuple[nnx.GraphDef, Weights] | None = None):
        self.graphdef, self.tx, self.objective, self.settings, self.builder = graphdef, tx, objective, settings, builder
        self.teacher_graphdef = teacher[0] if teacher is not None else None
        layout = builder.layout
        self.params_abstract = abstract(params)
        self.teacher_abstract = abstract(teacher[1]) if teacher is not None else None
        self.param_shardings = layout.weights(params)
        self.opt_shardings = layout.weights(jax.eval_shape(tx.init, self.params_abstract))
        self.teacher_shardings = layout.weights(teacher[1]) if teacher is not None else None
        rows, replicated, weights = layout.rows, layout.replicated, self.param_shardings
        self.init_opt_state = builder.jit(tx.init, (weights,), self.opt_shardings)
        self.copy = builder.jit(partial(jax.tree.map, jnp.copy), (weights,), weights)
        self.log_probs = builder.jit(partial(self._log_probs, graphdef), (weights, rows), rows)
        # The teacher is another network: the policy's recorded routes mean nothing to it.
        self.teacher_log_probs = (builder.jit(partial(self._log_probs, self.teacher_graphdef, routed=False), (self.teacher_shardings, rows), rows)
                                  if teacher is not None else None)
        self.prepare = builder.jit(objective.prepare, (rows,) * 5, (rows, rows, replicated))
        self.update = builder.jit(self._update, (weights, self.opt_shardings, rows, rows), (weights, self.opt_shardings, replicated),
                                  donate_argnums=(0, 1))

    def score(self, model: nnx.Module, batch: TrainBatch, remat: str = "none", routed: bool = True) -> ResponseScores:
        """`routed`: whether the batch's recorded routes (if any) belong to this model (replayed, compared)."""
        return self.hidden_and_scores(model, batch, remat, routed)[1]

    def hidden_and_scores(self, model: nnx.Module, batch: TrainBatch, remat: str = "none", routed: bool = True) -> tuple[jax.Array, ResponseScores]:
        """The trunk's hidden states [B, P + R - 1, D] and `score`'s scores (`rlx.learner.logprobs.response_hidden_and_scores`)."""
        settings = self.settings
        return response_hidden_and_scores(model, batch.tokens, batch.start, batch.prompt_len, settings.temperature, settings.logprob_impl,
                                          batch.media, remat, self.builder.layout, batch.routes if routed else None,
                                          settings.routing_replay == "replay")

    def _log_probs(self, graphdef: nnx.GraphDef, params: Weights, batch: TrainBatch, routed: bool = True) -> ResponseScores:
        return self.builder.forward(lambda rows: self.score(nnx.merge(graphdef, params), rows, routed=routed), batch)

    def _update(self, params: Weights, opt_state: Any, batch: TrainBatch, targets: StepTargets):
        if "mtp" in self.params_abstract:
            return self._update_with_mtp(params, opt_state, batch, targets)

        def loss(params, micro, progress):
            (batch, targets), weights = micro
            log_probs, entropy, _ = self.score(nnx.merge(self.graphdef, params), batch, self.settings.remat)
            return self.objective.loss(log_probs, entropy, batch, targets, weights, progress)

        return self.builder.optimizer_steps(self.tx, loss, self.objective.loss_weights, params, opt_state, (batch, targets), "actor")

    def _update_with_mtp(self, params: Weights, opt_state: Any, batch: TrainBatch, targets: StepTargets):
        """`_update` plus the MTP heads' losses (`rlx.learner.mtp`) on the same forward pass's hidden states."""
        settings = self.settings

        def loss(params, micro, progress):
            (batch, targets), (weights, mtp_weights) = micro
            model = nnx.merge(self.graphdef, params)
            hidden, (log_probs, entropy, _) = self.hidden_and_scores(model, batch, settings.remat)
            policy_loss, metrics = self.objective.loss(log_probs, entropy, batch, targets, weights, progress)
            heads_loss, head_metrics = mtp_loss(model, hidden, batch.tokens, batch.start, batch.prompt_len, mtp_weights,
                                                settings.temperature, settings.logprob_impl, self.builder.layout)
            return policy_loss + heads_loss, {**metrics, **head_metrics}

        weigh = lambda rows: (self.objective.loss_weights(rows), mtp_coefficients(rows[0].mask))
        return self.builder.optimizer_steps(self.tx, loss, weigh, params, opt_state, (batch, targets), "actor")

    def programs(self, batch: TrainBatch) -> Programs:
        """Every program of one RL update on a batch shaped like `batch` (abstract), with abstract arguments."""
        params, per_token = self.params_abstract, jax.ShapeDtypeStruct(batch.mask.shape, jnp.float32)
        opt_state = jax.eval_shape(self.tx.init, params)
        targets = StepTargets(*(per_token,) * len(dataclasses.fields(StepTargets)))
        programs = {
            "learner update": (self.update, (params, opt_state, batch, targets)),
            "learner log-probs": (self.log_probs, (params, batch)),
            "learner advantages": (self.prepare, (batch, per_token, per_token, per_token, per_token)),
        }
        if self.teacher_log_probs is not None:
            programs["teacher log-probs"] = (self.teacher_log_probs, (self.teacher_abstract, batch))
        return programs


def abstract_batch(rows: int, prompt_len: int, response_len: int, media: dict[str, tuple[int, ...]] | None = None,
                   routes: tuple[int, int] | None = None) -> TrainBatch:
    """A `TrainBatch` of shapes only, as the trainer builds it (`media`: one item's shape per modality;
    `routes`: (moe_layers, k) of recorded routes, None without)."""
    shape = lambda *dims, dtype=jnp.float32: jax.ShapeDtypeStruct(dims, dtype)
    return TrainBatch(
        tokens=shape(rows, prompt_len + response_len, dtype=jnp.int32), start=shape(rows, dtype=jnp.int32),
        mask=shape(rows, response_len), rewards=shape(rows), group_ids=shape(rows, dtype=jnp.int32),
        behaviour_log_probs=shape(rows, response_len),
        media={name: shape(rows, *item) for name, item in media.items()} if media else None,
        staleness=shape(rows, response_len),
        routes=shape(rows, prompt_len + response_len, *routes, dtype=jnp.int32) if routes else None,
    )
