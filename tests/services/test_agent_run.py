"""Multi-turn runs end to end: environment rewards and agent metrics, observation tokens out of the
mismatch metrics, the asynchronous loop, and the combinations refused at config load."""

import json
import subprocess
import sys

import pytest

from rlx.config import ConfigError, load_config
from rlx.services import train
from rlx.services.trainer import Trainer
from rlx.services.tracking import read_metrics
from tests.conftest import REPO, default_compile_env, tiny_overrides


class Ping:
    """Every character ends a turn (turns of one token, mostly); the first two
    turns get `=1=` back, the third ends the trajectory with reward 1 if it is a digit. Trajectories of records
    whose id ends in 3 raise: counted, scored `on_error_reward`, not fatal."""

    def __init__(self, context):
        self.turns = 0

    @staticmethod
    def stop_strings(context):
        return tuple("0123456789+=")

    def reset(self, record):
        self.record = record

    def step(self, action):
        self.turns += 1
        if self.record.id.endswith("3"):
            raise RuntimeError("environment broke")
        if self.turns == 3:
            return None, float(action.isdigit()), True, {"pings": 1}
        return "=1=", 0.0, False, {"pings": 1}


def agent_config(out, *extra):
    return load_config(None, [*tiny_overrides(out), "env.fn=tests.services.test_agent_run:Ping", "rollout.max_new_tokens=12", "warmup.sft_steps=0",
                              "model.max_seq_len=24", "rollout.max_turns=3", *extra])


def test_a_multi_turn_run_trains_on_environment_rewards_one_step_stale(tmp_path):
    """The asynchronous loop (generation one version ahead; `max_staleness: 0` runs the same loop in lockstep)."""
    out = tmp_path / "run"
    train(agent_config(out, "bus.max_staleness=1", "run.steps=3", "run.checkpoint_every=100", "reward.on_error_reward=-1"))
    rows = read_metrics(out / "metrics.jsonl")
    assert [row["step"] for row in rows] == [0, 1, 2, 3]
    for row in rows[1:]:
        # Of the step's 4 x 2 trajectories, broken ones take one turn (no ping), the others at most three, one ping per
        # turn; a few reach the token limit early where the policy writes special tokens (they decode to no text).
        broken = row["agent/env_errors"] / 8
        assert 1.5 < row["agent/turns_mean"] <= 3 - 2 * broken + 1e-6 and row["agent/truncated"] < 0.5
        assert row["agent/pings"] == pytest.approx(row["agent/turns_mean"] - broken) and row["reward/errors"] == row["agent/env_errors"]
        # Observation tokens carry no behaviour log-prob: were they in the mask, this would be near 1 (the tiny policy
        # gives `=1=` little probability). Policy tokens differ by what one update moved (the sampler is a version behind).
        assert row["training/rollout_probs_diff_max"] < (1e-4 if row["training/off_policy/staleness_max"] == 0 else 0.05)
        assert row["training/off_policy/staleness_max"] <= 1
    assert rows[1]["training/off_policy/staleness_max"] == 0  # step 1 is sampled and trained with version 0
    assert any(row["training/off_policy/staleness_max"] == 1 for row in rows[2:])  # later ones were sampled a version behind
    assert "val/agent/turns_mean" in rows[0] and rows[0]["val/accuracy"] >= 0
    consumed = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert any("=1=" in row["response"] for row in consumed)  # whole trajectories, observations included
    broken = [row for row in consumed if row["prompt_id"].endswith("3")]
    assert all(row["reward"] == -1.0 for row in broken) and any(row["reward"] >= 0 for row in consumed)


@pytest.mark.parametrize("extra, message", [
    ("rollout.token_budget=64", "rollout.token_budget"),
    ("rollout.backend=jetstream", "rollout.backend: jetstream"),
    ("bus.interrupt=recompute_cache", "bus.interrupt: recompute_cache"),
    ("rollout.max_turns=0", "max_turns must be >= 1"),
])
def test_unsupported_combinations_are_refused_at_config_load(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        agent_config(tmp_path, extra)
    with pytest.raises(ConfigError, match="need an environment"):
        load_config(None, [*tiny_overrides(tmp_path), "env.tools=[calculator]"])


def test_the_shipped_agent_demo_warm_start_is_this_codes_key_for_its_config(tmp_path):
    """configs/demo_agent.yaml's warm-up (800 steps on calculator trajectories) ships in rlx/warmstarts/; its key covers
    the demonstrations the environment plays (flawed calls included), so a changed environment, task or flaw misses it.
    The key is checked as a user's run compiles (the tests' faster compile changes initial weights' last bits).
    If this fails after a deliberate change, rebuild: python -m rlx.warmstart --config configs/demo_agent.yaml --ship"""
    trainer = Trainer(load_config("configs/demo_agent.yaml", [f"run.output_dir={tmp_path}", "run.progress=false"]))
    try:
        assert any("<out>error: bad expression</out>" in record.answer for record in trainer.task.demonstrations)
    finally:
        trainer.close()
    done = subprocess.run([sys.executable, "-m", "rlx.warmstart", "--config", "configs/demo_agent.yaml", "--check", "0"], cwd=REPO,
                          env=default_compile_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "is this code's warm start for configs/demo_agent.yaml" in done.stdout
