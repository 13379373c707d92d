"""The critic for GAE: a separate value model with its own optimizer, updated beside the policy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rlx.algorithms import clipped_value_loss, explained_variance, masked_mean
from rlx.learner.config import CriticConfig, OptimizerConfig
from rlx.learner.optimizer import make_optimizer
from rlx.models import ModelConfig
from rlx.models.value_head import ValueModel


class Critic:
    """V(s_t) for every response token: the value of the prefix before token t is read from the
    same hidden state that predicts token t, mirroring `response_log_probs`."""

    def __init__(self, model_config: ModelConfig, config: CriticConfig, grad_clip: float, seed: int):
        self.config = config
        self.graphdef, self.params = nnx.split(ValueModel(model_config, rngs=nnx.Rngs(seed)))
        self.tx = make_optimizer(OptimizerConfig(learning_rate=config.learning_rate, grad_clip=grad_clip))
        self.opt_state = self.tx.init(self.params)
        self._values = jax.jit(self._values_impl, static_argnums=3)
        self._step = jax.jit(self._step_impl, static_argnums=7, donate_argnums=(0, 1))

    def init_trunk(self, policy_params: nnx.State) -> None:
        """Starts the value trunk from the policy's weights (as veRL does) with a fresh optimizer."""
        model = nnx.merge(self.graphdef, self.params)
        nnx.update(model.trunk, jax.tree.map(jnp.copy, policy_params))
        self.params = nnx.state(model)
        self.opt_state = self.tx.init(self.params)

    def values(self, tokens: jax.Array, start: jax.Array, prompt_len: int) -> jax.Array:
        """[B, R] values of the response tokens' prefixes."""
        return self._values(self.params, tokens, start, prompt_len)

    def update(self, tokens: jax.Array, start: jax.Array, mask: jax.Array, old_values: jax.Array, returns: jax.Array, prompt_len: int) -> dict[str, jax.Array]:
        """One clipped-value-loss AdamW step toward `returns`; `old_values` are the values the returns were built from."""
        self.params, self.opt_state, metrics = self._step(self.params, self.opt_state, tokens, start, mask, old_values, returns, prompt_len)
        return metrics

    def state_dict(self) -> dict[str, object]:
        return {"critic_params": self.params, "critic_opt_state": self.opt_state}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.params, self.opt_state = state["critic_params"], state["critic_opt_state"]

    def _values_impl(self, params, tokens, start, prompt_len: int):
        model = nnx.merge(self.graphdef, params)
        return model(tokens[:, :-1], start=start)[:, prompt_len - 1:]

    def _step_impl(self, params, opt_state, tokens, start, mask, old_values, returns, prompt_len: int):
        def loss_fn(params):
            values = self._values_impl(params, tokens, start, prompt_len)
            return clipped_value_loss(values, old_values, returns, mask, self.config.cliprange_value)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = self.tx.update(grads, opt_state, params)
        metrics["critic/grad_norm"] = optax.tree.norm(grads)
        return optax.apply_updates(params, updates), opt_state, metrics


def value_metrics(values: jax.Array, returns: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Diagnostics of the critic before its update, on this step's returns."""
    return {
        "critic/vf_explained_var": explained_variance(values, returns, mask),
        "critic/values/mean": masked_mean(values, mask),
        "critic/returns/mean": masked_mean(returns, mask),
    }
