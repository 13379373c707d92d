"""The README's GSM8K/MATH-style JSONL example: its references parse, and RL steps run on it with
`math_verify + 0.1 * format` scored in the generator role's thread."""

import json
from pathlib import Path

import pytest

from rlx.config import load_config
from rlx.data.jsonl import read_jsonl
from rlx.rewards import RewardConfig, resolve_reward_fn
from rlx.services import train
from rlx.services.tracking import read_metrics
from tests.conftest import tiny_overrides

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def example(tmp_path):
    block = README.read_text().split("```jsonl\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "math.jsonl"
    path.write_text(block)
    return path


def test_the_readme_example_references_parse_and_verify(example):
    records, skipped = read_jsonl(example, "error")
    assert skipped == 0 and len(records) == 4
    reward = resolve_reward_fn("math_verify + 0.1 * format", RewardConfig(timeout_s=30.0))
    for record in records:
        assert reward(f"The answer is \\boxed{{{record.answer}}}.", record) == pytest.approx(1.1)
        assert reward("\\boxed{7/3}", record) == pytest.approx(0.1)


def test_an_rl_step_on_the_readme_example(example, tmp_path):
    out = tmp_path / "run"
    config = load_config(None, [
        *tiny_overrides(out), "run.steps=1", "data.source=jsonl", f"data.train_path={example}", f"data.val_path={example}",
        "data.max_prompt_len=96", "model.max_seq_len=104", "data.prompts_per_step=2", "warmup.sft_steps=0",
        "reward.fn=math_verify + 0.1 * format", "reward.timeout_s=30",
    ])
    train(config)
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1]
    assert all(r["reward/errors"] == 0 for r in rows[1:])  # every call answered in time, every reference parsed
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 2 * 2 and all(r["reward"] in (0.0, 0.1, 1.0, 1.1) for r in rollouts)
