"""bfloat16 compute with float32 master weights and optimizer state, end to end on the demo model: supervised
warm-up, fused log-probs, policy and critic updates, checkpoint round trip; and the warning for bfloat16 master
weights whose learning rate cannot move them."""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlx.algorithms import AlgorithmConfig
from rlx.config import load_config
from rlx.data import PromptStream, load_task
from rlx.learner import Checkpointer, Learner, OptimizerConfig, WarmupConfig, supervised_warmup
from rlx.learner.config import CriticConfig
from rlx.learner.programs import abstract
from rlx.models import Qwen3
from tests.learner.test_sharded_learner import make_batch

DEMO = load_config("configs/demo.yaml", ["data.train_size=64", "data.val_size=8"])


@pytest.fixture(scope="module")
def task():
    return load_task(DEMO.data)


def demo_model(task, **dtypes):
    return dataclasses.replace(DEMO.model.with_vocab(task.tokenizer.vocab_size), **dtypes)


def float_dtypes(tree) -> set:
    return {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def demo_batch(task):
    """A step's rows in the demo's shapes: tokens drawn from the tokenizer's vocabulary."""
    batch = make_batch()
    width = DEMO.data.max_prompt_len + DEMO.rollout.max_new_tokens
    rng = np.random.default_rng(0)
    rows = batch.mask.shape[0]
    mask = (np.arange(DEMO.rollout.max_new_tokens)[None] < rng.integers(1, DEMO.rollout.max_new_tokens + 1, rows)[:, None]).astype(np.float32)
    return dataclasses.replace(batch, tokens=rng.integers(4, task.tokenizer.vocab_size, (rows, width)).astype(np.int32), mask=mask,
                               behaviour_log_probs=np.full(mask.shape, -2.0, np.float32), staleness=np.zeros(mask.shape, np.float32))


def test_bfloat16_compute_with_float32_master_weights_end_to_end(task, tmp_path):
    config = demo_model(task, dtype="bfloat16", param_dtype="float32")
    graphdef, params = nnx.split(Qwen3(config, rngs=nnx.Rngs(0)))
    stream = PromptStream(task.demonstrations, task.tokenizer, 16, DEMO.data.max_prompt_len, seed=0)
    params, losses = supervised_warmup(graphdef, params, stream, task.tokenizer, WarmupConfig(sft_steps=3, batch_size=16), DEMO.rollout.max_new_tokens)
    assert all(np.isfinite(losses)) and float_dtypes(params) == {np.dtype("float32")}

    learner = Learner(graphdef, params, AlgorithmConfig(adv_estimator="gae"), OptimizerConfig(learning_rate=1e-3), 1.0,
                      critic=CriticConfig(enabled=True, learning_rate=1e-3))
    batch = demo_batch(task)
    before = jax.tree.map(jnp.copy, learner.params)
    metrics = learner.update(batch)
    assert all(np.isfinite(v) for v in metrics.values())
    assert any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), learner.params, before)))
    assert float_dtypes((learner.params, learner.opt_state, learner.critic.params, learner.critic.opt_state)) == {np.dtype("float32")}
    # The matmuls run in bfloat16: the compiled update multiplies bf16 operands.
    update, args = learner.programs.programs(abstract(learner.layout.feed(batch)))["learner update"]
    assert "bf16" in update.lower(*args).as_text()

    # Log-probs through the fused kernel stay close to a float32-compute copy of the same weights.
    f32 = nnx.graphdef(Qwen3(demo_model(task), rngs=nnx.Rngs(0)))
    full = Learner(f32, learner.params, AlgorithmConfig(), OptimizerConfig(), 1.0)
    mixed_lp, full_lp = learner.log_probs(batch)[0], full.log_probs(batch)[0]
    assert float(jnp.max(jnp.abs(mixed_lp - full_lp) * batch.mask)) < 0.1

    checkpointer = Checkpointer(tmp_path / "ckpt", keep=1)
    checkpointer.save(1, learner.state_dict(), {"step": 1})
    checkpointer.wait()
    trees, _ = checkpointer.restore(1, learner.state_dict())
    checkpointer.close()
    assert float_dtypes(trees) == {np.dtype("float32")}
    same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), trees, learner.state_dict())
    assert all(jax.tree.leaves(same))


def test_bfloat16_master_weights_warn_when_the_learning_rate_cannot_move_them(task, caplog):
    graphdef, params = nnx.split(Qwen3(demo_model(task, dtype="bfloat16", param_dtype="bfloat16"), rngs=nnx.Rngs(0)))
    with caplog.at_level(logging.WARNING, logger="rlx.learner.train_step"):
        Learner(graphdef, params, AlgorithmConfig(), OptimizerConfig(learning_rate=1e-6), 1.0)
    assert "can never change" in caplog.text and "model.param_dtype=float32" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rlx.learner.train_step"):
        Learner(graphdef, params, AlgorithmConfig(), OptimizerConfig(learning_rate=1e-2), 1.0)
    assert "can never change" not in caplog.text
