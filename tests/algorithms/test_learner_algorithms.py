"""Learner updates with each algorithm feature: critic (GAE), distillation teacher, KL as reward,
reference refresh, policy losses with corrections. Each learner compiles its own step, so
features share tests where they do not interfere."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlx.algorithms import AlgorithmConfig
from rlx.learner import Learner, OptimizerConfig, TrainBatch
from rlx.learner.config import CriticConfig, DistillConfig, WarmupConfig
from rlx.models import ModelConfig, Qwen3
from tests.learner.test_learner import make_batch as learner_batch

MODEL = ModelConfig(vocab_size=11, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16)
OPTIMIZER = OptimizerConfig(learning_rate=1e-2)


def make_batch() -> TrainBatch:
    # behaviour log-probs far from the learner's: corrections have work to do
    return learner_batch(behaviour_log_prob=-2.3)


def changed(before, after) -> bool:
    return any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, after)))


def test_gae_update_trains_the_critic_and_reports_its_metrics():
    """Also PPO's dual clip and sequence-level TIS, which need no learner of their own."""
    algorithm = AlgorithmConfig(adv_estimator="gae", clip_ratio_c=3.0, correction="tis", correction_level="sequence")
    learner = Learner(*nnx.split(Qwen3(MODEL, rngs=nnx.Rngs(0))), algorithm, OPTIMIZER, 1.0, critic=CriticConfig(enabled=True, learning_rate=1e-2))
    head_before = jnp.copy(learner.critic.params["head"][...])
    metrics = learner.update(make_batch())
    for key in ("critic/vf_loss", "critic/vf_explained_var", "critic/vf_clipfrac", "critic/values/mean", "critic/returns/mean", "actor/pg_loss",
                "actor/pg_clipfrac_lower", "training/correction_weight_mean"):
        assert np.isfinite(metrics[key]), key
    assert metrics["critic/values/mean"] == 0.0  # zero-initialized head: the first values are 0
    assert metrics["critic/vf_loss"] > 0
    assert bool(jnp.any(learner.critic.params["head"][...] != head_before))
    second = learner.update(make_batch())
    assert second["critic/values/mean"] != 0.0
    assert set(learner.state_dict()) >= {"critic_params", "critic_opt_state"}


def test_distillation_rewards_tokens_the_teacher_likes():
    """With grpo, no task reward and gamma = 0, A_t = log pi_teacher(y_t) - log pi_student(y_t) exactly."""
    teacher = nnx.split(Qwen3(MODEL, rngs=nnx.Rngs(7)))
    distill = DistillConfig(coef=1.0, task_reward_coef=0.0, teacher=MODEL, teacher_warmup=WarmupConfig(sft_steps=1))
    learner = Learner(*nnx.split(Qwen3(MODEL, rngs=nnx.Rngs(0))), AlgorithmConfig(gamma=0.0, policy_loss="pg"),
                      OptimizerConfig(learning_rate=1e-3), 1.0, distill=distill, teacher=teacher)
    batch = make_batch()
    teacher_lp = learner.teacher_log_probs(batch)
    student_lp = learner.log_probs(batch)[0]
    gap = lambda lp: float(jnp.sum(jnp.abs(lp - teacher_lp) * batch.mask))
    metrics = learner.update(batch)
    expected = float(jnp.sum((teacher_lp - student_lp) * batch.mask) / jnp.sum(batch.mask))
    assert metrics["critic/advantages/mean"] == pytest.approx(expected, rel=1e-4)
    assert metrics["distill/reverse_kl"] == pytest.approx(-expected, rel=1e-4)
    for _ in range(2):
        learner.update(batch)
    assert gap(learner.log_probs(batch)[0]) < gap(student_lp)  # the student moves toward the teacher on its samples
    assert "teacher_params" in learner.state_dict()


def test_kl_as_reward_penalty_and_reference_refresh():
    """Also CISPO, IcePop and RLOO."""
    algorithm = AlgorithmConfig(kl_coef=0.1, kl_penalty="reward", kl_estimator="k3", ref_update_every=1,
                                policy_loss="cispo", clip_ratio_high=4.0, correction="icepop", adv_estimator="rloo")
    learner = Learner(*nnx.split(Qwen3(MODEL, rngs=nnx.Rngs(0))), algorithm, OPTIMIZER, 1.0)
    first = learner.update(make_batch())
    assert first["actor/reward_kl_penalty"] == pytest.approx(0.0, abs=1e-6)  # reference = policy before any update
    assert "actor/kl_loss" not in first
    second = learner.update(make_batch())
    assert second["actor/reward_kl_penalty"] > 0
    learner.refresh_reference()
    assert not changed(learner.ref_params, learner.params)


@pytest.mark.parametrize(
    "overrides",
    [
        {"policy_loss": "decoupled_ppo", "behaviour_weight_cap": 3.0, "kl_coef": 0.01, "kl_estimator": "low_var_kl",
         "loss_agg_mode": "seq-mean-token-sum-norm"},
        {"policy_loss": "gspo", "clip_ratio_low": 3e-4, "clip_ratio_high": 4e-4, "loss_agg_mode": "seq-mean-token-mean", "correction": "geo_mask"},
    ],
    ids=["decoupled-kl", "gspo-geo"],
)
def test_policy_loss_and_correction_combinations_update(overrides):
    learner = Learner(*nnx.split(Qwen3(MODEL, rngs=nnx.Rngs(0))), AlgorithmConfig(**overrides), OPTIMIZER, 1.0)
    before = jax.tree.map(jnp.copy, learner.params)
    metrics = learner.update(make_batch())
    for key in ("actor/pg_loss", "actor/ppo_kl", "actor/pg_clipfrac", "training/correction_masked_frac", "training/rollout_probs_diff_mean"):
        assert np.isfinite(metrics[key]), key
    assert changed(before, learner.params) or metrics["training/correction_masked_frac"] == 1.0
