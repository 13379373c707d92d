"""The dry-run plan: compiles the run's own programs on abstract arrays over a simulated mesh; every shipped
config plans as shipped; the big configs describe the real models."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlx.config import load_config
from rlx.launch import main
from rlx.models.hf import tensor_maps
from rlx.services.plan import dry_run
from tests.test_config_init_from import QWEN3_1_7B

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


def test_plan_compiles_every_program_and_reports_memory(tiny_plan):
    config = load_config(None, TINY_MOE)
    assert tiny_plan.parameters == _parameter_count(config.model)
    assert set(tiny_plan.steps) == {"learner update", "learner log-probs", "learner advantages", "generator prefill", "generator insert", "generator decode step", "generator recompute", "generator extend"}
    for step in tiny_plan.steps.values():
        assert step.arguments > 0 and step.peak >= step.arguments - step.aliased
    # Update arguments: float32 weights plus two Adam moments, split 4 ways (+ the batch and small replicated tensors).
    weights = 4 * tiny_plan.parameters
    assert 3 * weights / 4 <= tiny_plan.steps["learner update"].arguments <= 3 * weights / 2
    text = tiny_plan.render()
    assert "learner (fsdp_tp_ep) sharding" in text and "'expert'" in text and "-> fits" in text
    assert "| learner update |" in text and text.count("| fits |") == len(tiny_plan.steps)
    assert tiny_plan.fits()


def test_launch_flag_prints_the_plan(capsys, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("model: {vocab_size: 32, hidden_size: 32, intermediate_size: 64, num_layers: 1, max_seq_len: 32}\n")
    small = ["data.prompts_per_step=2", "rollout.n_samples=2", "rollout.max_concurrent_decodes=2"]
    assert main(["--config", str(config), "--dry-run", *small, "parallel.device_memory_gib=0.000001"]) == 0
    out = capsys.readouterr().out
    assert "compiled: all 1 layers" in out and "| learner update |" in out and "| does NOT fit |" in out
    assert out.rstrip().endswith("-> does NOT fit")


@pytest.mark.parametrize("gib, choice", [("64", "4 (the largest that fits)"), ("0.000001", "2 (the smallest there is; none fits)")])
def test_auto_micro_batch_takes_the_largest_that_fits(gib, choice):
    """4 rollouts per minibatch over 2 data-parallel devices: micro-batches of 4 or 2 rows."""
    config = load_config(None, TINY_MOE + ["algorithm.minibatches=2", "learner.micro_batch_rows=auto", "parallel.learner={fsdp: 2}",
                                           f"parallel.device_memory_gib={gib}"])
    plan = dry_run(config)
    assert f"micro_batch_rows auto -> {choice}" in plan.render()
    assert plan.steps["learner update"].peak > 0


@pytest.mark.parametrize("name, billions", [("qwen3_4b_grpo", 4.02), ("qwen3_4b_grpo_v5e", 4.02), ("qwen3_30b_a3b_grpo", 30.53)])
def test_big_configs_describe_the_real_models(name, billions):
    path = REPO / "configs" / f"{name}.yaml"
    assert f"python -m rlx.launch --config configs/{name}.yaml --dry-run" in path.read_text().splitlines()[1]
    config = load_config(path)
    assert _parameter_count(config.model) / 1e9 == pytest.approx(billions, abs=0.01)
    assert config.parallel.num_devices in (16, 32) and config.model.dtype == "bfloat16" and config.model.param_dtype == "float32"
    assert config.data.max_prompt_len + config.rollout.max_new_tokens == 2048


PLAN_EVERY_CONFIG = """
import json, sys
from rlx.services.plan import dry_run, prepare_planning_backend
prepare_planning_backend(32)
from rlx.config import load_config
checkpoint_dir = sys.argv[1]
for path in sys.argv[2:]:
    # A recipe that starts from a Hugging Face checkpoint plans from its config.json alone.
    overrides = [f"model.init_from={checkpoint_dir}"] if path.endswith("qwen3_math.yaml") else []
    plan = dry_run(load_config(path, overrides))
    print(json.dumps({"config": path, "fits": plan.fits(), "peaks": {name: m.peak for name, m in plan.steps.items()},
                      "arguments": {name: m.arguments for name, m in plan.steps.items()}}), flush=True)
"""


@pytest.fixture(scope="module")
def shipped_plans(tmp_path_factory):
    """Every config in configs/ planned as shipped (dtype, sizes and meshes), in one process simulating 32 devices.
    A compilation cache lets the demo configs share the programs they have in common."""
    paths = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*.yaml"))
    cache = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", **cache}
    checkpoint = tmp_path_factory.mktemp("Qwen3-1.7B")
    (checkpoint / "config.json").write_text(json.dumps(QWEN3_1_7B))
    proc = subprocess.run([sys.executable, "-c", PLAN_EVERY_CONFIG, str(checkpoint), *paths], cwd=REPO, env=env, capture_output=True,
                          text=True, check=False)
    plans = {Path(row["config"]).stem: row for row in map(json.loads, proc.stdout.splitlines())}
    assert proc.returncode == 0, proc.stderr[-3000:]
    return plans


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "configs").glob("*.yaml")))
def test_every_shipped_config_plans_as_shipped(shipped_plans, name):
    plan = shipped_plans[name]
    assert {"learner update", "learner log-probs", "generator prefill", "generator decode step"} <= set(plan["peaks"])
    assert plan["fits"], plan["peaks"]
    if name == "qwen3_30b_a3b_grpo":
        # Weights + Adam state in float32 over the 16-device learner slice (attention splits 4 ways only, experts 16).
        state = 3 * 4 * 30.53e9
        assert state / 16 <= plan["arguments"]["learner update"] <= 1.25 * state / 16
