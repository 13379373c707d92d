"""The critic for GAE: a separate value model with its own optimizer, updated beside the policy."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rlx.algorithms import clipped_value_loss, explained_variance, masked_mean
from rlx.learner.config import CriticConfig, OptimizerConfig
from rlx.learner.memory import Programs
from rlx.learner.objective import TrainBatch, linear_coefficients
from rlx.learner.optimizer import make_optimizer
from rlx.learner.programs import ProgramBuilder, Weights
from rlx.models import ModelConfig
from rlx.models.value_head import ValueModel


class CriticPrograms:
    """The critic's compiled programs: values of a step's rows, its update, and its start from the policy."""

    def __init__(self, model_config: ModelConfig, config: CriticConfig, grad_clip: float, builder: ProgramBuilder,
                 policy_shardings: Any, remat: str = "none"):
        self.config, self.builder, self.remat = config, builder, remat
        self.tx = make_optimizer(OptimizerConfig(learning_rate=config.learning_rate, grad_clip=grad_clip))
        shapes = nnx.eval_shape(lambda: ValueModel(model_config, rngs=nnx.Rngs(0)))
        self.graphdef, self.params_abstract = nnx.split(shapes)
        self.model_config = model_config
        layout, weights = builder.layout, builder.layout.weights(self.params_abstract)
        self.opt_shardings = layout.weights(jax.eval_shape(self.tx.init, self.params_abstract))
        self.from_policy = builder.jit(self._from_policy, (policy_shardings,), weights)
        self.init_opt_state = builder.jit(self.tx.init, (weights,), self.opt_shardings)
        self.values = builder.jit(self._values, (weights, layout.rows), layout.rows)
        self.update = builder.jit(self._update, (weights, self.opt_shardings, layout.rows), (weights, self.opt_shardings, layout.replicated),
                                  donate_argnums=(0, 1))

    def _from_policy(self, policy_params: Weights) -> Weights:
        """A zero value head on a copy of the policy's weights (as veRL starts its critic)."""
        model = ValueModel(self.model_config, rngs=nnx.Rngs(0))  # traced: the random trunk is never computed
        nnx.update(model.trunk, jax.tree.map(jnp.copy, policy_params))
        return nnx.state(model)

    def _predict(self, params: Weights, batch: TrainBatch, remat: str = "none") -> jax.Array:
        values = nnx.merge(self.graphdef, params)(batch.tokens[:, :-1], start=batch.start, remat=remat)
        return values[:, batch.prompt_len - 1:]

    def _values(self, params: Weights, batch: TrainBatch) -> jax.Array:
        return self.builder.forward(partial(self._predict, params), batch)

    def _update(self, params: Weights, opt_state: Any, rows: tuple[TrainBatch, jax.Array, jax.Array]):
        def loss(params, micro, progress):
            (batch, old_values, returns), token_share = micro
            values = self._predict(params, batch, self.remat)
            loss, metrics = clipped_value_loss(values, old_values, returns, batch.mask, self.config.cliprange_value)
            share = jnp.sum(token_share)  # the loss and its metrics are masked means over this micro-batch
            return loss * share, {key: value * share for key, value in metrics.items()}

        share = lambda minibatch: linear_coefficients(minibatch[0].mask, "token-mean")
        return self.builder.optimizer_steps(self.tx, loss, share, params, opt_state, rows, "critic")

    def programs(self, batch: TrainBatch) -> Programs:
        params = self.params_abstract
        per_token = jax.ShapeDtypeStruct(batch.mask.shape, jnp.float32)
        opt_state = jax.eval_shape(self.tx.init, params)
        return {"critic values": (self.values, (params, batch)),
                "critic update": (self.update, (params, opt_state, (batch, per_token, per_token)))}


class Critic:
    """V(s_t) for every response token: the value of the prefix before token t is read from the
    same hidden state that predicts token t, mirroring `response_log_probs`."""

    def __init__(self, programs: CriticPrograms, policy_params: Weights):
        self.programs = programs
        self.init_trunk(policy_params)

    def init_trunk(self, policy_params: Weights) -> None:
        """Starts the value trunk from the policy's weights (as veRL does) with a fresh optimizer."""
        self.params = self.programs.from_policy(policy_params)
        self.opt_state = self.programs.init_opt_state(self.params)

    def values(self, batch: TrainBatch) -> jax.Array:
        """[B, R] values of the response tokens' prefixes."""
        return self.programs.values(self.params, batch)

    def update(self, batch: TrainBatch, old_values: jax.Array, returns: jax.Array) -> dict[str, jax.Array]:
        """The update's clipped-value-loss AdamW steps toward `returns`; `old_values` are the values the returns were built from."""
        self.params, self.opt_state, metrics = self.programs.update(self.params, self.opt_state, (batch, old_values, returns))
        return metrics

    def state_dict(self) -> dict[str, object]:
        return {"critic_params": self.params, "critic_opt_state": self.opt_state}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.params, self.opt_state = state["critic_params"], state["critic_opt_state"]


def value_metrics(values: jax.Array, returns: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Diagnostics of the critic before its update, on this step's returns."""
    return {
        "critic/vf_explained_var": explained_variance(values, returns, mask),
        "critic/values/mean": masked_mean(values, mask),
        "critic/returns/mean": masked_mean(returns, mask),
    }
