"""A run whose reward plug-in hangs, SIGKILLs and exits its worker: it completes its steps, each failure scores
`reward.on_error_reward` and is counted, and a hang costs one deadline, not the run."""

import json
from collections import defaultdict

from rlx.config import load_config
from rlx.services import train
from rlx.services.tracking import read_metrics
from tests.conftest import tiny_overrides
from tests.rewards.plugins import cue

TIMEOUT_S = 0.5


def test_a_run_survives_hanging_and_crashing_rewards(tmp_path):
    out = tmp_path / "run"
    train(load_config(None, [*tiny_overrides(out), "run.steps=3", "bus.max_staleness=1", "reward.fn=tests.rewards.plugins:by_digest",
                             f"reward.timeout_s={TIMEOUT_S}", "reward.on_error_reward=-1", "reward.max_error_rate=1.0"]))
    rows = {row["step"]: row for row in read_metrics(out / "metrics.jsonl")[1:]}
    assert sorted(rows) == [1, 2, 3]
    by_step = defaultdict(list)
    for row in map(json.loads, (out / "rollouts.jsonl").read_text().splitlines()):
        by_step[row["step"]].append(row)
    hangs = crashes = 0
    for step, rollouts in by_step.items():
        cues = [cue(row["response"]) for row in rollouts]
        failed = [c in ("hang", "kill", "exit") for c in cues]
        assert [row["reward"] for row in rollouts] == [-1.0 if bad else float(c) for bad, c in zip(failed, cues)]
        assert rows[step]["reward/errors"] == sum(failed) and rows[step]["reward/timeouts"] == cues.count("hang")
        assert rows[step]["timing_s/reward"] < TIMEOUT_S * cues.count("hang") + 3.0  # never a stall: at most a deadline per hang
        hangs, crashes = hangs + cues.count("hang"), crashes + cues.count("kill") + cues.count("exit")
    assert hangs > 0 and crashes > 0  # the run met both kinds
