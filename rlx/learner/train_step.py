"""The learner: recomputes log-probs, builds advantages and takes optimizer steps, all jitted.

Weights are arguments of every compiled function, never constants baked into it.
"""

from __future__ import annotations

import dataclasses
import logging
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rlx.algorithms import (
    ADVANTAGE_ESTIMATORS, CORRECTIONS, KL_ESTIMATORS, POLICY_LOSSES, AdvantageInputs, AlgorithmConfig, CorrectionInputs,
    PolicyLossInputs, aggregate, interpolated_proximal_log_probs, masked_mean,
)
from pallas_kernels import resolve_fused_logprob_impl
from rlx.learner.config import CriticConfig, DistillConfig, LearnerConfig, OptimizerConfig
from rlx.learner.critic import Critic, value_metrics
from rlx.learner.logprobs import response_log_probs
from rlx.learner.optimizer import freeze_encoders, make_optimizer
from rlx.models import Qwen3

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive updates had a non-finite loss or gradient."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainBatch:
    """One step's rollouts, grouped: rows of a prompt group share a `group_ids` value."""

    tokens: jax.Array  # [B, P + R] left-padded prompt, then the response
    start: jax.Array  # [B] first real prompt column
    mask: jax.Array  # [B, R] 1 on response tokens, EOS included
    rewards: jax.Array  # [B]
    group_ids: jax.Array  # [B] int32 in [0, B)
    behaviour_log_probs: jax.Array  # [B, R] from the sampler
    media: dict[str, jax.Array] | None = None  # encoder inputs per row (rlx.models.multimodal.Media); None for text
    staleness: jax.Array | None = None  # [B, R] versions the learner is ahead of each token's sampler (proximal: approximate)

    @property
    def prompt_len(self) -> int:
        return self.tokens.shape[1] - self.mask.shape[1]

    def rows(self, index: np.ndarray) -> "TrainBatch":
        return jax.tree.map(lambda x: x[index], self)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class StepTargets:
    """Per-token arrays [B, R] that stay fixed across one update's minibatches and epochs."""

    old_log_probs: jax.Array  # proximal policy: the weights before this update
    ref_log_probs: jax.Array  # reference policy for the KL loss; zeros without one
    advantages: jax.Array
    weights: jax.Array  # rollout-correction weight per token
    mask: jax.Array  # response tokens the correction keeps

    def rows(self, index: np.ndarray) -> "StepTargets":
        return jax.tree.map(lambda x: x[index], self)


class Learner:
    """Policy (and optional critic) updates. `teacher` is the on-policy-distillation teacher,
    needed iff `distill.coef > 0`; its weights are trained by the caller (`set_teacher_params`)."""

    def __init__(
        self, model: Qwen3, algorithm: AlgorithmConfig, optimizer: OptimizerConfig, temperature: float,
        critic: CriticConfig = CriticConfig(), distill: DistillConfig = DistillConfig(), teacher: Qwen3 | None = None,
        learner: LearnerConfig = LearnerConfig(),
    ):
        if (teacher is not None) != (distill.coef > 0):
            raise ValueError("pass a teacher model exactly when distill.coef > 0")
        if (algorithm.adv_estimator == "gae") != critic.enabled:
            raise ValueError("adv_estimator gae needs critic.enabled, and only gae uses a critic")
        self.graphdef, self.params = nnx.split(model)
        self.algorithm = algorithm
        self.optimizer_config = optimizer
        self.distill = distill
        # Behaviour log-probs are taken at the sampling temperature; greedy scores at T = 1.
        self.temperature = temperature if temperature > 0 else 1.0
        self.logprob_impl = learner.logprob_impl
        self.proximal = learner.proximal
        log.info("learner log-probs: fused kernel %r (learner.logprob_impl=%r)", resolve_fused_logprob_impl(learner.logprob_impl), learner.logprob_impl)
        self.tx = freeze_encoders(make_optimizer(optimizer), model.config)
        self._jit_init = jax.jit(self.tx.init)
        self.opt_state = self._init_opt_state(self.params)
        self.ref_params = jax.tree.map(jnp.copy, self.params) if algorithm.kl_coef > 0 else None
        self.critic = Critic(model.config, critic, optimizer.grad_clip, seed=1) if critic.enabled else None
        if self.critic is not None:
            self.critic.init_trunk(self.params)
        self.teacher_graphdef, self.teacher_params = nnx.split(teacher) if teacher is not None else (None, None)
        self.consecutive_nonfinite = 0
        self._log_probs = jax.jit(partial(self._score, self.graphdef), static_argnums=2)
        self._teacher_log_probs = jax.jit(partial(self._score, self.teacher_graphdef), static_argnums=2) if teacher is not None else None
        self._prepare = jax.jit(self._prepare_impl)
        self._step = jax.jit(self._step_impl, donate_argnums=(0, 1))

    def update(self, batch: TrainBatch) -> dict[str, float]:
        """One RL update on `batch`; returns host-side metrics."""
        prompt_len = batch.prompt_len
        if self.proximal == "approximate":
            if batch.staleness is None:
                raise ValueError("learner.proximal=approximate needs TrainBatch.staleness (per-token policy-version lag)")
            old_log_probs = jnp.asarray(batch.behaviour_log_probs)  # stands in until the loss interpolates
        else:
            old_log_probs, _ = self._log_probs(self.params, batch, prompt_len)
        ref_log_probs = self._log_probs(self.ref_params, batch, prompt_len)[0] if self.ref_params is not None else None
        teacher_log_probs = self._teacher_log_probs(self.teacher_params, batch, prompt_len)[0] if self.teacher_params is not None else None
        values = self.critic.values(batch.tokens, batch.start, prompt_len) if self.critic is not None else jnp.zeros_like(old_log_probs)
        targets, returns, prepared = self._prepare(batch, old_log_probs, ref_log_probs, teacher_log_probs, values)
        rows = batch.mask.shape[0]
        if rows % self.algorithm.minibatches:
            raise ValueError(f"{rows} rollouts do not split into algorithm.minibatches={self.algorithm.minibatches}")
        step_metrics = []
        substeps = self.algorithm.epochs * self.algorithm.minibatches
        for _ in range(self.algorithm.epochs):
            for index in np.split(np.arange(rows), self.algorithm.minibatches):
                progress = np.float32(len(step_metrics) / substeps)  # of this update, in policy versions
                self.params, self.opt_state, metrics = self._step(self.params, self.opt_state, batch.rows(index), targets.rows(index), progress)
                if self.critic is not None:
                    metrics.update(self.critic.update(
                        batch.tokens[index], batch.start[index], batch.mask[index], values[index], returns[index], prompt_len))
                step_metrics.append(metrics)
        metrics = {key: float(np.mean([m[key] for m in step_metrics])) for key in step_metrics[0]}
        self._count_nonfinite(min(m["actor/update_finite"] for m in step_metrics))
        metrics.update({key: float(value) for key, value in prepared.items()})
        if self.critic is not None:
            metrics.update({key: float(value) for key, value in value_metrics(values, returns, batch.mask).items()})
        return metrics

    def refresh_reference(self) -> None:
        """Makes the current weights the KL reference (`algorithm.ref_update_every`)."""
        self.ref_params = jax.tree.map(jnp.copy, self.params)

    def set_teacher_params(self, params: nnx.State) -> None:
        self.teacher_params = params

    def reset_weights(self, params: nnx.State) -> None:
        """Starts RL from `params` (e.g. after warm-up): fresh optimizer, reference and critic trunk = these weights."""
        self.params = params
        self.opt_state = self._init_opt_state(params)
        if self.ref_params is not None:
            self.ref_params = jax.tree.map(jnp.copy, params)
        if self.critic is not None:
            self.critic.init_trunk(params)

    def _init_opt_state(self, params: nnx.State) -> optax.OptState:
        """Optimizer state placed where the weights are: moments sharded like their weight, counters replicated
        on the weights' devices. (`tx.init`'s outputs do not depend on the weights' values, so jit alone leaves
        them all on the default device, which a learner slice spanning several devices cannot use.)"""
        state = self._jit_init(params)
        masked = any(isinstance(x, optax.MaskedNode) for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.MaskedNode)))
        if masked or isinstance(jax.tree.leaves(params)[0], jax.core.Tracer):
            # eval_shape (dry-run plan): shapes only. Frozen encoders (masked state): not mapped yet, left as jit put it.
            return state
        weights = jax.tree.leaves(params)[0].sharding
        replicated = jax.sharding.NamedSharding(weights.mesh, jax.sharding.PartitionSpec()) if isinstance(weights, jax.sharding.NamedSharding) else weights
        return optax.tree_utils.tree_map_params(
            self.tx, lambda leaf, weight: leaf if isinstance(leaf, optax.MaskedNode) else jax.device_put(leaf, weight.sharding),
            state, params, transform_non_params=lambda leaf: jax.device_put(leaf, replicated),
            is_leaf=lambda leaf: isinstance(leaf, optax.MaskedNode))  # frozen encoders hold no optimizer state

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

    def log_probs(self, batch: TrainBatch) -> tuple[jax.Array, jax.Array]:
        return self._log_probs(self.params, batch, batch.prompt_len)

    def model(self) -> Qwen3:
        return nnx.merge(self.graphdef, self.params)

    def _count_nonfinite(self, finite: float) -> None:
        self.consecutive_nonfinite = 0 if finite else self.consecutive_nonfinite + 1
        if self.consecutive_nonfinite >= self.optimizer_config.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{self.consecutive_nonfinite} consecutive updates had a non-finite loss or gradient and were skipped; "
                "lower optimizer.learning_rate, tighten optimizer.grad_clip, or check rewards for NaN/inf"
            )

    def _score(self, graphdef: nnx.GraphDef, params, batch: TrainBatch, prompt_len: int):
        model = nnx.merge(graphdef, params)
        return response_log_probs(model, batch.tokens, batch.start, prompt_len, self.temperature, self.logprob_impl, batch.media)

    def _prepare_impl(self, batch: TrainBatch, old_log_probs, ref_log_probs, teacher_log_probs, values):
        """Token rewards, advantages, returns and correction weights: everything fixed before the first minibatch."""
        algo, mask = self.algorithm, batch.mask
        metrics = {}
        token_rewards = jnp.zeros_like(old_log_probs)
        if ref_log_probs is not None and algo.kl_penalty == "reward":
            kl = KL_ESTIMATORS.get(algo.kl_estimator)(old_log_probs, ref_log_probs)
            token_rewards = token_rewards - algo.kl_coef * kl
            metrics["actor/reward_kl_penalty"] = masked_mean(kl, mask)
        if teacher_log_probs is not None:
            reverse_kl = old_log_probs - teacher_log_probs
            token_rewards = token_rewards - self.distill.coef * reverse_kl
            metrics["distill/reverse_kl"] = masked_mean(reverse_kl, mask)
        inputs = AdvantageInputs(batch.rewards * self.distill.task_reward_coef, batch.group_ids, mask, values, token_rewards)
        advantages, returns = ADVANTAGE_ESTIMATORS.get(algo.adv_estimator)(inputs, algo)
        correction = CorrectionInputs(old_log_probs, batch.behaviour_log_probs, mask)
        weights, kept, correction_metrics = CORRECTIONS.get(algo.correction)(correction, algo)
        metrics.update(correction_metrics)
        if self.proximal == "recompute":  # with `approximate` there are no learner log-probs to compare yet
            mismatch = jnp.abs(jnp.exp(batch.behaviour_log_probs) - jnp.exp(old_log_probs)) * mask
            metrics["training/rollout_probs_diff_mean"] = jnp.sum(mismatch) / jnp.maximum(jnp.sum(mask), 1)
            metrics["training/rollout_probs_diff_max"] = jnp.max(mismatch)
        metrics["critic/advantages/mean"] = masked_mean(advantages, mask)
        use_ref_loss = ref_log_probs is not None and algo.kl_penalty == "loss"
        ref_for_loss = ref_log_probs if use_ref_loss else jnp.zeros_like(old_log_probs)
        return StepTargets(old_log_probs, ref_for_loss, advantages, weights, kept), returns, metrics

    def _loss(self, params, batch: TrainBatch, targets: StepTargets, progress):
        algo = self.algorithm
        log_probs, entropy = self._score(self.graphdef, params, batch, batch.prompt_len)
        proximal = targets.old_log_probs
        if self.proximal == "approximate":
            proximal = interpolated_proximal_log_probs(batch.behaviour_log_probs, log_probs, batch.staleness, progress)
        inputs = PolicyLossInputs(log_probs, proximal, targets.advantages, targets.mask, batch.behaviour_log_probs)
        token_loss, metrics = POLICY_LOSSES.get(algo.policy_loss)(inputs, algo)
        pg_loss = aggregate(token_loss * targets.weights, targets.mask, algo.loss_agg_mode)
        entropy_mean = masked_mean(entropy, batch.mask)
        loss = pg_loss - algo.entropy_coef * entropy_mean
        metrics.update({"actor/pg_loss": pg_loss, "actor/entropy": entropy_mean})
        if algo.kl_coef > 0 and algo.kl_penalty == "loss":
            kl = aggregate(KL_ESTIMATORS.get(algo.kl_estimator)(log_probs, targets.ref_log_probs), targets.mask, algo.loss_agg_mode)
            loss = loss + algo.kl_coef * kl
            metrics["actor/kl_loss"] = kl
        metrics["actor/loss"] = loss
        return loss, metrics

    def _step_impl(self, params, opt_state, batch, targets: StepTargets, progress):
        (loss, metrics), grads = jax.value_and_grad(self._loss, has_aux=True)(params, batch, targets, progress)
        grad_norm = optax.tree.norm(grads)
        updates, new_opt_state = self.tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # A non-finite step leaves weights and optimizer moments untouched; the host counts it.
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        metrics.update({"actor/grad_norm": grad_norm, "actor/update_finite": finite.astype(jnp.float32)})
        return keep(new_params, params), keep(new_opt_state, opt_state), metrics
