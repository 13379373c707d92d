"""The learner: recomputes log-probs, builds advantages and takes optimizer steps, all jitted.

Weights are arguments of every compiled function, never constants baked into it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rlx.algorithms import ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, POLICY_LOSSES, AlgorithmConfig, PolicyLossInputs, aggregate, masked_mean
from rlx.learner.config import OptimizerConfig
from rlx.learner.logprobs import response_log_probs
from rlx.learner.optimizer import make_optimizer
from rlx.models import Qwen3


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

    @property
    def prompt_len(self) -> int:
        return self.tokens.shape[1] - self.mask.shape[1]

    def rows(self, index: np.ndarray) -> "TrainBatch":
        return jax.tree.map(lambda x: x[index], self)


class Learner:
    def __init__(self, model: Qwen3, algorithm: AlgorithmConfig, optimizer: OptimizerConfig, temperature: float):
        self.graphdef, self.params = nnx.split(model)
        self.algorithm = algorithm
        self.optimizer_config = optimizer
        # Behaviour log-probs are taken at the sampling temperature; greedy scores at T = 1.
        self.temperature = temperature if temperature > 0 else 1.0
        self.tx = make_optimizer(optimizer)
        self.opt_state = self.tx.init(self.params)
        self.ref_params = jax.tree.map(jnp.copy, self.params) if algorithm.kl_coef > 0 else None
        self.consecutive_nonfinite = 0
        self._log_probs = jax.jit(self._log_probs_impl, static_argnums=2)
        self._step = jax.jit(self._step_impl, donate_argnums=(0, 1))

    def update(self, batch: TrainBatch) -> dict[str, float]:
        """One RL update on `batch`; returns host-side metrics."""
        old_log_probs, _ = self._log_probs(self.params, batch, batch.prompt_len)
        ref_log_probs = self._log_probs(self.ref_params, batch, batch.prompt_len)[0] if self.ref_params is not None else jnp.zeros_like(old_log_probs)
        advantages = ADVANTAGE_ESTIMATORS.get(self.algorithm.adv_estimator)(batch.rewards, batch.group_ids, batch.mask, self.algorithm)
        rows = batch.mask.shape[0]
        if rows % self.algorithm.minibatches:
            raise ValueError(f"{rows} rollouts do not split into algorithm.minibatches={self.algorithm.minibatches}")
        step_metrics = []
        for _ in range(self.algorithm.epochs):
            for index in np.split(np.arange(rows), self.algorithm.minibatches):
                minibatch = (batch.rows(index), old_log_probs[index], ref_log_probs[index], advantages[index])
                self.params, self.opt_state, metrics = self._step(self.params, self.opt_state, *minibatch)
                step_metrics.append(metrics)
        metrics = {key: float(np.mean([m[key] for m in step_metrics])) for key in step_metrics[0]}
        self._count_nonfinite(min(m["actor/update_finite"] for m in step_metrics))
        mismatch = jnp.abs(jnp.exp(batch.behaviour_log_probs) - jnp.exp(old_log_probs)) * batch.mask
        metrics["training/rollout_probs_diff_mean"] = float(jnp.sum(mismatch) / jnp.maximum(jnp.sum(batch.mask), 1))
        metrics["training/rollout_probs_diff_max"] = float(jnp.max(mismatch))
        metrics["critic/advantages/mean"] = float(masked_mean(advantages, batch.mask))
        return metrics

    def reset_weights(self, params: nnx.State) -> None:
        """Starts RL from `params` (e.g. after warm-up): fresh optimizer, reference = these weights."""
        self.params = params
        self.opt_state = self.tx.init(params)
        if self.ref_params is not None:
            self.ref_params = jax.tree.map(jnp.copy, params)

    def state_dict(self) -> dict[str, object]:
        state = {"params": self.params, "opt_state": self.opt_state}
        if self.ref_params is not None:
            state["ref_params"] = self.ref_params
        return state

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.params = state["params"]
        self.opt_state = state["opt_state"]
        if self.ref_params is not None:
            self.ref_params = state["ref_params"]

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

    def _log_probs_impl(self, params, batch: TrainBatch, prompt_len: int):
        model = nnx.merge(self.graphdef, params)
        return response_log_probs(model, batch.tokens, batch.start, prompt_len, self.temperature)

    def _loss(self, params, batch: TrainBatch, old_log_probs, ref_log_probs, advantages):
        algo = self.algorithm
        log_probs, entropy = self._log_probs_impl(params, batch, batch.prompt_len)
        inputs = PolicyLossInputs(log_probs, old_log_probs, advantages, batch.mask)
        token_loss, metrics = POLICY_LOSSES.get(algo.policy_loss)(inputs, algo)
        pg_loss = aggregate(token_loss, batch.mask, algo.loss_agg_mode)
        entropy_mean = masked_mean(entropy, batch.mask)
        loss = pg_loss - algo.entropy_coef * entropy_mean
        metrics.update({"actor/pg_loss": pg_loss, "actor/entropy": entropy_mean})
        if algo.kl_coef > 0:
            kl = aggregate(KL_ESTIMATORS.get(algo.kl_estimator)(log_probs, ref_log_probs), batch.mask, algo.loss_agg_mode)
            loss = loss + algo.kl_coef * kl
            metrics["actor/kl_loss"] = kl
        metrics["actor/loss"] = loss
        return loss, metrics

    def _step_impl(self, params, opt_state, batch, old_log_probs, ref_log_probs, advantages):
        (loss, metrics), grads = jax.value_and_grad(self._loss, has_aux=True)(params, batch, old_log_probs, ref_log_probs, advantages)
        grad_norm = optax.tree.norm(grads)
        updates, new_opt_state = self.tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # A non-finite step leaves weights and optimizer moments untouched; the host counts it.
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        metrics.update({"actor/grad_norm": grad_norm, "actor/update_finite": finite.astype(jnp.float32)})
        return keep(new_params, params), keep(new_opt_state, opt_state), metrics
