"""The dry-run plan: compiles on abstract arrays over a simulated mesh; the big configs describe the real models."""

from pathlib import Path

import numpy as np
import pytest

from rlx.config import load_config
from rlx.launch import main
from rlx.models.hf import tensor_maps
from rlx.services.plan import StepMemory, _extrapolate, dry_run

REPO = Path(__file__).resolve().parents[2]
TINY_MOE = [
    "model.vocab_size=64", "model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=2", "model.num_heads=4",
    "model.num_kv_heads=2", "model.head_dim=8", "model.max_seq_len=32", "model.num_experts=4", "model.num_experts_per_tok=2",
    "model.moe_intermediate_size=16", "data.prompts_per_step=4", "data.max_prompt_len=8", "rollout.n_samples=2",
    "rollout.max_new_tokens=8", "rollout.max_concurrent_decodes=4", "parallel.learner={fsdp: 2, expert: 2}",
    "parallel.generator={tensor: 2, expert: 2}", "parallel.placement=disaggregated", "parallel.learner_rules=fsdp_tp_ep",
    "parallel.generator_rules=serve_tp_ep",
]


@pytest.fixture(scope="module")
def tiny_plan():
    return dry_run(load_config(None, TINY_MOE))


def _parameter_count(model_config):
    """Counted from the Hugging Face tensor list, independently of the plan's count from the NNX model."""
    return sum(int(np.prod(m.hf_shape)) for m in tensor_maps(model_config))


def test_plan_compiles_every_step_and_reports_memory(tiny_plan):
    config = load_config(None, TINY_MOE)
    assert tiny_plan.parameters == _parameter_count(config.model)
    assert set(tiny_plan.steps) == {"learner train step", "generator prefill", "generator decode step"}
    for step in tiny_plan.steps.values():
        assert step.arguments > 0 and step.peak >= step.arguments - step.aliased
    # Learner arguments: float32 weights plus two Adam moments, split 4 ways (+ the batch and small replicated tensors).
    weights = 4 * tiny_plan.parameters
    assert 3 * weights / 4 <= tiny_plan.steps["learner train step"].arguments <= 3 * weights / 2
    text = tiny_plan.render()
    assert "learner (fsdp_tp_ep) sharding" in text and "'expert'" in text and "-> fits" in text
    assert tiny_plan.fits()


def test_launch_flag_prints_the_plan(capsys, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("model: {vocab_size: 32, hidden_size: 32, intermediate_size: 64, num_layers: 1, max_seq_len: 32}\n")
    small = ["data.prompts_per_step=2", "rollout.n_samples=2", "rollout.max_concurrent_decodes=2"]
    assert main(["--config", str(config), "--dry-run", *small, "parallel.device_memory_gib=0.000001"]) == 0
    out = capsys.readouterr().out
    assert "compiled: all 1 layers" in out and "| learner train step |" in out and "does NOT fit" in out


def test_layer_extrapolation_is_linear_and_never_shrinks():
    small, large = StepMemory(10.0, 4.0, 4.0, 7.0, 1.0), StepMemory(14.0, 6.0, 6.0, 5.0, 2.0)
    full = _extrapolate(small, large, layers=2, full=8)
    assert (full.arguments, full.outputs, full.aliased, full.temporaries, full.compile_s) == (22.0, 10.0, 10.0, 7.0, 3.0)


@pytest.mark.parametrize("name, billions", [("qwen3_4b_grpo", 4.02), ("qwen3_30b_a3b_grpo", 30.53)])
def test_big_configs_describe_the_real_models(name, billions):
    path = REPO / "configs" / f"{name}.yaml"
    assert f"python -m rlx.launch --config configs/{name}.yaml --dry-run" in path.read_text().splitlines()[1]
    config = load_config(path)
    assert _parameter_count(config.model) / 1e9 == pytest.approx(billions, abs=0.01)
    assert config.parallel.num_devices in (16, 32) and config.model.dtype == "bfloat16"
