"""End-to-end runs of the synchronous loop on a tiny config: outputs, hooks and resume."""

import json

import numpy as np
import pytest

from rlx.config import load_config
from rlx.launch import main
from rlx.services import train
from rlx.services.tracking import read_metrics
from tests.conftest import tiny_overrides

REQUIRED = ["step", "reward/mean", "response_length/mean", "actor/pg_loss", "actor/entropy", "actor/grad_norm",
            "timing_s/gen", "timing_s/update", "timing_s/step", "perf/tokens_per_s"]

HOOK_CALLS: list[tuple[int, dict]] = []


def record_hook(step, metrics):
    HOOK_CALLS.append((step, metrics))


def consumed_prompts(output_dir):
    rows = [json.loads(line) for line in (output_dir / "rollouts.jsonl").read_text().splitlines()]
    return [(row["step"], row["prompt_id"]) for row in rows]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    HOOK_CALLS.clear()
    config = load_config(None, tiny_overrides(out) + ["run.hooks=[tests.services.test_training_run:record_hook]"])
    curve = train(config)
    return out, curve, list(HOOK_CALLS)


def test_outputs_of_a_run(full_run):
    out, curve, _ = full_run
    rows = read_metrics(out / "metrics.jsonl")
    assert [row["step"] for row in rows] == [0, 1, 2, 3, 4]
    assert "val/accuracy" in rows[0] and "reward/mean" not in rows[0]  # step 0: before any update
    for row in rows[1:]:
        assert set(REQUIRED) <= set(row), set(REQUIRED) - set(row)
        assert all(np.isfinite(v) for v in row.values())
    assert ["val/accuracy" in row for row in rows] == [True, False, True, False, True]
    assert curve == out / "reward_curve.png" and curve.stat().st_size > 1000
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]
    assert (out / "config.yaml").exists()


def test_hooks_see_each_step_when_it_ends(full_run):
    out, _, calls = full_run
    rows = read_metrics(out / "metrics.jsonl")
    assert [step for step, _ in calls] == [0, 1, 2, 3, 4]
    for (step, metrics), row in zip(calls, rows):
        assert {"step": step, **metrics} == row


def test_each_step_uses_fresh_prompts_and_fresh_keys(full_run):
    out, _, _ = full_run
    consumed = consumed_prompts(out)
    ids = [prompt for _, prompt in consumed[::2]]  # n_samples=2 rows per prompt
    assert len(ids) == len(set(ids)) == 16


def test_resume_continues_without_repeating_prompts(tmp_path, full_run):
    full_out, _, _ = full_run
    split_out = tmp_path / "split"
    assert main(["--config", "configs/demo.yaml", *tiny_overrides(split_out), "run.steps=2"]) == 0
    assert main(["--config", "configs/demo.yaml", *tiny_overrides(split_out)]) == 0
    rows = read_metrics(split_out / "metrics.jsonl")
    assert [row["step"] for row in rows] == [0, 1, 2, 3, 4]  # appended, step count continues
    assert consumed_prompts(split_out) == consumed_prompts(full_out)
    full_rows = read_metrics(full_out / "metrics.jsonl")
    for key in ("reward/mean", "val/accuracy"):
        assert [r.get(key) for r in rows] == pytest.approx([r.get(key) for r in full_rows])


def test_resume_refuses_a_different_seed(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--config", "configs/demo.yaml", *tiny_overrides(out), "run.steps=1"]) == 0
    assert main(["--config", "configs/demo.yaml", *tiny_overrides(out), "run.seed=5"]) == 2
    assert "run.seed (checkpoint: 0, now: 5)" in capsys.readouterr().err


def test_launch_reports_config_errors(capsys):
    assert main(["--config", "configs/demo.yaml", "run.stepz=3"]) == 2
    assert "did you mean 'run.steps'?" in capsys.readouterr().err
