import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlx.algorithms import AlgorithmConfig
from rlx.learner import Checkpointer, Learner, LearnerConfig, NonFiniteLossError, OptimizerConfig, TrainBatch, encode_answers
from rlx.models import ModelConfig, Qwen3
from rlx.data import CharTokenizer

EOS = 2


def make_learner(algorithm=AlgorithmConfig(), optimizer=OptimizerConfig(learning_rate=1e-2), learner=LearnerConfig()) -> Learner:
    config = ModelConfig(vocab_size=11, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16)
    return Learner(*nnx.split(Qwen3(config, rngs=nnx.Rngs(0))), algorithm, optimizer, temperature=1.0, learner=learner)


def make_batch(rewards=(1.0, 0.0, 1.0, 0.0), behaviour_log_prob: float = 0.0) -> TrainBatch:
    """Two prompt groups of two responses; rows 0 and 2 stop early (EOS inside the mask)."""
    prompt = [[0, 1, 5, 6], [0, 1, 5, 6], [1, 7, 7, 8], [1, 7, 7, 8]]
    response = [[9, EOS, 0], [4, 4, EOS], [3, EOS, 0], [9, 9, 9]]
    mask = [[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1]]
    return TrainBatch(
        tokens=jnp.array([p + r for p, r in zip(prompt, response)], jnp.int32),
        start=jnp.array([1, 1, 0, 0], jnp.int32),
        mask=jnp.array(mask, jnp.float32),
        rewards=jnp.array(rewards, jnp.float32),
        group_ids=jnp.array([0, 0, 1, 1], jnp.int32),
        behaviour_log_probs=jnp.full((4, 3), behaviour_log_prob),
    )


def test_update_reports_metrics_and_moves_weights():
    learner = make_learner()
    before = jax.tree.map(jnp.copy, learner.params)
    metrics = learner.update(make_batch())
    for key in ("actor/pg_loss", "actor/entropy", "actor/grad_norm", "actor/pg_clipfrac", "actor/ppo_kl",
                "training/rollout_probs_diff_mean", "training/rollout_probs_diff_max", "critic/advantages/mean"):
        assert np.isfinite(metrics[key]), key
    assert metrics["actor/grad_norm"] > 0
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), learner.params, before)
    assert any(jax.tree.leaves(changed))


def test_rewarded_eos_becomes_more_likely():
    """EOS is inside the loss mask, so rewarding a stop teaches the policy to stop."""
    learner = make_learner()
    batch = make_batch(rewards=(1.0, 0.0, 1.0, 0.0))  # rows 0 and 2 stop early and are rewarded
    before, _ = learner.log_probs(batch)
    for _ in range(3):
        learner.update(batch)
    after, _ = learner.log_probs(batch)
    assert float(after[0, 1]) > float(before[0, 1])  # EOS of row 0
    assert float(after[2, 1]) > float(before[2, 1])  # EOS of row 2


def test_mismatch_metric_measures_behaviour_vs_learner():
    learner = make_learner()
    batch = make_batch()
    recomputed, _ = learner.log_probs(batch)
    same = learner.update(dataclasses.replace(batch, behaviour_log_probs=recomputed))
    assert same["training/rollout_probs_diff_max"] < 1e-6
    learner = make_learner()
    shifted = learner.update(dataclasses.replace(batch, behaviour_log_probs=recomputed - 0.1))
    assert shifted["training/rollout_probs_diff_mean"] > 1e-3


def test_non_finite_updates_are_skipped_then_stop_the_run():
    learner = make_learner(optimizer=OptimizerConfig(learning_rate=1e-2, max_nonfinite_steps=2))
    before = jax.tree.map(jnp.copy, learner.params)
    poisoned = make_batch(rewards=(np.nan, 0.0, 1.0, 0.0))
    metrics = learner.update(poisoned)
    assert metrics["actor/update_finite"] == 0.0 and learner.consecutive_nonfinite == 1
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), learner.params, before)))
    with pytest.raises(NonFiniteLossError, match="2 consecutive updates had a non-finite loss"):
        learner.update(poisoned)


def test_kl_to_reference_starts_at_zero_and_grows():
    learner = make_learner(algorithm=AlgorithmConfig(kl_coef=0.1))
    first = learner.update(make_batch())
    assert abs(first["actor/kl_loss"]) < 1e-6
    second = learner.update(make_batch())
    assert second["actor/kl_loss"] > 0


def test_minibatches_must_divide_the_batch():
    learner = make_learner(algorithm=AlgorithmConfig(minibatches=2, epochs=2))
    assert np.isfinite(learner.update(make_batch())["actor/pg_loss"])
    with pytest.raises(ValueError, match="do not split into algorithm.minibatches=3"):
        make_learner(algorithm=AlgorithmConfig(minibatches=3)).update(make_batch())


@pytest.mark.parametrize("impl", ["auto", "reference", "chunked", "pallas_gpu_interpret"])
def test_learner_log_probs_equal_log_softmax_of_the_model_logits(impl):
    learner = make_learner(learner=LearnerConfig(logprob_impl=impl))
    batch = make_batch()
    log_probs, entropy = learner.log_probs(batch)
    logits, _ = learner.model()(batch.tokens[:, :-1], start=batch.start)
    full = jax.nn.log_softmax(logits[:, batch.prompt_len - 1:], axis=-1)
    expected = jnp.take_along_axis(full, batch.tokens[:, batch.prompt_len:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(log_probs, expected, atol=1e-5)
    np.testing.assert_allclose(entropy, -(jnp.exp(full) * full).sum(-1), atol=1e-5)


def test_unknown_logprob_impl_lists_the_choices():
    with pytest.raises(ValueError, match="is not one of auto, reference, chunked"):
        LearnerConfig(logprob_impl="fast")


def test_encode_answers_appends_eos_in_mask():
    tokenizer = CharTokenizer("0123456789")
    tokens, mask = encode_answers(["12", "345678"], tokenizer, 4)
    assert list(tokens[0]) == [*tokenizer.encode("12", bos=False), tokenizer.eos_id, 0]
    assert list(mask[0]) == [1, 1, 1, 0] and list(mask[1]) == [1, 1, 1, 1]


def test_checkpoint_round_trip(tmp_path):
    learner = make_learner()
    learner.update(make_batch())
    checkpointer = Checkpointer(tmp_path / "ckpt", keep=2)
    checkpointer.save(3, learner.state_dict(), {"step": 3, "note": "x"})
    checkpointer.wait()
    fresh = make_learner()
    trees, meta = checkpointer.restore(checkpointer.latest_step(), fresh.state_dict())
    fresh.load_state_dict(trees)
    assert meta == {"step": 3, "note": "x"}
    same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), (fresh.params, fresh.opt_state), (learner.params, learner.opt_state))
    assert all(jax.tree.leaves(same))
    checkpointer.close()
