"""Training the MTP heads: the exact acceptance probability over vocabulary tiles, the heads' losses in the
RL update and the warm-up, and what leaves the trunk's training as it is without heads: the heads' losses
stop at the trunk, and the heads are clipped and stepped apart from it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlx.algorithms import AlgorithmConfig
from rlx.data import CharTokenizer, PromptBatch, PromptRecord
from rlx.learner import Learner, OptimizerConfig, WarmupConfig, supervised_warmup
from rlx.learner.logprobs import trunk_hidden
from rlx.learner.mtp import acceptance_probability, mtp_coefficients, mtp_loss, mtp_mask
from rlx.learner.optimizer import make_optimizer, separate_heads
from rlx.models import ModelConfig, Qwen3
from rlx.models.mtp_config import MTPConfig
from tests.learner.test_learner import make_batch

TRUNK = ModelConfig(vocab_size=11, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16)


def with_heads(config: ModelConfig, **mtp) -> ModelConfig:
    return dataclasses.replace(config, mtp=MTPConfig(enabled=True, confidence_width=8, **mtp))


def trunk_of(params) -> dict:
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(params) if not jax.tree_util.keystr(p).startswith("['mtp']")}


def test_acceptance_probability_over_tiles_equals_the_dense_sum_of_minima():
    keys = jax.random.split(jax.random.key(0), 3)
    p_hidden, q_hidden = jax.random.normal(keys[0], (5, 4)), jax.random.normal(keys[1], (5, 4))
    unembedding = jax.random.normal(keys[2], (4, 21))  # 21 columns: the last of three 8-column tiles is padded
    dense = jnp.sum(jnp.minimum(jax.nn.softmax(p_hidden @ unembedding / 0.7), jax.nn.softmax(q_hidden @ unembedding / 0.7)), -1)
    np.testing.assert_allclose(acceptance_probability(p_hidden, q_hidden, unembedding, 0.7, tile=8), dense, rtol=1e-5)
    np.testing.assert_allclose(acceptance_probability(p_hidden, p_hidden, unembedding, 1.0, tile=8), 1.0, rtol=1e-5)
    assert float(jnp.max(dense)) < 0.999


def test_mtp_mask_needs_both_tokens_trained():
    mask = jnp.array([[1, 1, 1, 0], [0, 1, 1, 1]], jnp.float32)
    np.testing.assert_array_equal(mtp_mask(mask), [[0, 1, 1, 0], [0, 0, 1, 1]])


def heads_loss(model_config: ModelConfig):
    """The heads' loss as a function of all weights, on `make_batch()`'s rows."""
    batch = make_batch()
    graphdef, params = nnx.split(Qwen3(model_config, rngs=nnx.Rngs(0)))
    coefficients = mtp_coefficients(batch.mask)

    def loss(params):
        model = nnx.merge(graphdef, params)
        hidden, _ = trunk_hidden(model, batch.tokens, batch.start, batch.prompt_len)
        return mtp_loss(model, hidden, batch.tokens, batch.start, batch.prompt_len, coefficients, 1.0)[0]

    return loss, params


def test_the_heads_losses_stop_at_the_trunk():
    loss, params = heads_loss(with_heads(TRUNK))  # train_trunk: false, the default
    grads = jax.jit(jax.grad(loss))(params)
    assert max(float(jnp.max(jnp.abs(g))) for g in trunk_of(grads).values()) == 0.0
    heads = {key: float(jnp.max(jnp.abs(g))) for key, g in trunk_of(grads["mtp"]).items()}
    # Every head weight is trained; the confidence MLP's first layer from the step after its zero output layer moves.
    assert all(g > 0 for key, g in heads.items() if "confidence_in" not in key), heads


def test_heads_step_apart_so_the_trunks_clipping_and_steps_are_as_without_heads():
    params = {"embed": jnp.ones((3,)), "mtp": {"proj": jnp.ones((2,))}}
    grads = {"embed": jnp.array([0.3, -0.2, 0.1]), "mtp": {"proj": jnp.array([50.0, -80.0])}}
    config = OptimizerConfig(learning_rate=1e-2, grad_clip=0.05)  # the heads' large gradients would dominate a shared norm
    split = separate_heads(lambda: make_optimizer(config), with_heads(TRUNK))
    plain = make_optimizer(config)
    updates, _ = split.update(grads, split.init(params), params)
    alone, _ = plain.update({"embed": grads["embed"]}, plain.init({"embed": params["embed"]}), {"embed": params["embed"]})
    np.testing.assert_array_equal(updates["embed"], alone["embed"])
    assert separate_heads(lambda: plain, with_heads(TRUNK, train_trunk=True)) is plain


def test_rl_update_trains_the_heads_and_reports_their_metrics():
    model = with_heads(TRUNK, loss_coef=1.0)
    learner = Learner(*nnx.split(Qwen3(model, rngs=nnx.Rngs(0))), AlgorithmConfig(), OptimizerConfig(learning_rate=1e-2), temperature=1.0)
    batch = make_batch()
    heads_before = jax.tree.map(jnp.copy, learner.params["mtp"])
    losses = []
    for _ in range(3):
        metrics = learner.update(batch)
        losses.append(metrics["mtp/loss"])
        assert 0.0 < metrics["mtp/accept_prob_mean"] <= 1.0 and np.isfinite(metrics["mtp/confidence_loss"])
    assert losses[-1] < losses[0] - 0.05, losses
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), learner.params["mtp"], heads_before)
    assert all(jax.tree.leaves(moved))


def test_warmup_trains_the_heads():
    tokenizer = CharTokenizer("0123456789+=")
    records = [PromptRecord(str(i), f"{i}+{i}=", str(2 * i)) for i in range(4)]
    prompts = [tokenizer.encode(r.prompt) for r in records]
    width = max(len(p) for p in prompts)
    batch = PromptBatch(records, np.array([[0] * (width - len(p)) + p for p in prompts], np.int32),
                        np.array([width - len(p) for p in prompts], np.int32))
    model = with_heads(dataclasses.replace(TRUNK, vocab_size=tokenizer.vocab_size, max_seq_len=16))
    graphdef, params = nnx.split(Qwen3(model, rngs=nnx.Rngs(0)))
    fresh = jnp.copy(params["mtp"]["proj"][...])
    params, losses = supervised_warmup(graphdef, params, iter([batch] * 2), tokenizer, WarmupConfig(sft_steps=2, batch_size=4), 4)
    assert all(np.isfinite(losses))
    assert bool(jnp.any(params["mtp"]["proj"][...] != fresh))
