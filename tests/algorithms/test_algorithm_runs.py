"""Algorithm features through the whole loop (tiny config), and config checks that span sections."""

from pathlib import Path

import pytest

from rlx.config import ConfigError, load_config
from rlx.services import train
from rlx.services.tracking import read_metrics
from tests.conftest import tiny_overrides

TEACHER = ["distill.teacher.hidden_size=32", "distill.teacher.intermediate_size=64", "distill.teacher.num_layers=1",
           "distill.teacher.num_heads=2", "distill.teacher.num_kv_heads=1", "distill.teacher.head_dim=16", "distill.teacher.max_seq_len=24"]


@pytest.fixture(scope="module")
def dapo_opd_run(tmp_path_factory):
    """DAPO (dynamic sampling, overlong shaping) + distillation teacher + KL in the reward, refreshed every step."""
    out = tmp_path_factory.mktemp("algorithms") / "run"
    overrides = tiny_overrides(out) + TEACHER + [
        "run.steps=1", "algorithm.dynamic_sampling=true", "algorithm.max_sampling_rounds=2", "algorithm.overlong_buffer=1",
        "algorithm.kl_coef=0.05", "algorithm.kl_penalty=reward", "algorithm.ref_update_every=1",
        "distill.coef=0.5", "distill.teacher_warmup.sft_steps=2", "distill.teacher_warmup.batch_size=8",
    ]
    train(load_config(None, overrides))
    return out


def test_dapo_and_distillation_metrics_are_logged(dapo_opd_run):
    rows = read_metrics(dapo_opd_run / "metrics.jsonl")
    assert "distill/teacher_sft_loss_last" in rows[0]
    assert [row["step"] for row in rows] == [0, 1]
    for row in rows[1:]:
        for key in ("dapo/dropped_groups", "dapo/sampling_rounds", "dapo/filled_groups", "dapo/overlong_penalty_mean",
                    "distill/reverse_kl", "actor/reward_kl_penalty", "critic/score/mean", "actor/pg_clipfrac_lower"):
            assert key in row, key
        assert 1 <= row["dapo/sampling_rounds"] <= 2
        assert row["dapo/filled_groups"] <= 4  # data.prompts_per_step


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["algorithm.adv_estimator=gae"], "gae needs a critic"),
        (["critic.enabled=true"], "only gae uses one"),
        (["algorithm.policy_loss=decoupled_ppo", "algorithm.correction=tis"], "correct the same mismatch twice"),
        (["algorithm.behaviour_weight_cap=2.0"], "read only by policy_loss: decoupled_ppo"),
        (["algorithm.policy_loss=nope"], "registered: cispo, decoupled_ppo, gspo, gspo_token, pg, ppo_clip"),
        (["algorithm.correction=nope"], "registered: geo_mask, icepop, none, tis"),
        (["algorithm.loss_agg_mode=nope"], "registered: seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm, token-mean"),
        (["rollout.n_samples=1"], "rollout.n_samples=1"),
        (["algorithm.overlong_buffer=5"], "smaller than rollout.max_new_tokens"),
        (["algorithm.ref_update_every=5"], "kl_coef = 0"),
        (["algorithm.clip_ratio_c=1.0"], "clip_ratio_c must be > 1"),
        (["algorithm.correction=icepop", "algorithm.correction_low=1.5"], "correction_low < 1 < correction_high"),
        (["distill.coef=1.0"], "teacher_warmup.sft_steps > 0"),
        (["distill.task_reward_coef=0.0"], "no reward at all"),
    ],
)
def test_incompatible_algorithm_settings_fail_at_load(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, tiny_overrides(tmp_path) + overrides)


def test_demo_configs_load():
    for name in ("grpo", "drgrpo", "dapo", "gspo", "ppo", "opd"):
        config = load_config(Path(__file__).parents[2] / "configs" / f"demo_{name}.yaml")
        assert config.run.output_dir == f"runs/demo_{name}"
