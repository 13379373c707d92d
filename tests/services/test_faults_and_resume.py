"""Faults a run survives, against one uninterrupted async run (`bus.max_staleness=1`) whose reward plug-in hangs,
SIGKILLs and exits its worker on cue: the run completes its steps, each failure scores `reward.on_error_reward` and is
counted, a hang costs one deadline, every reward starts as its sample finishes; and a run stopped after step 2 and resumed trains the same prompts at the same
steps, each `n_samples` times, training the batch it had drawn ahead as it was (not drawn again)."""

import json
import time
from collections import defaultdict

import numpy as np
import pytest

from rlx.config import load_config
from rlx.services import train
from rlx.services.bus_checkpoint import bus_file
from rlx.services.feed import RolloutFeed
from rlx.services.generation import Generation
from rlx.services.tracking import read_metrics
from rlx.services.trainer import BUS_CHECKPOINTS, Trainer
from tests.conftest import tiny_overrides
from tests.rewards.plugins import cue

TIMEOUT_S = 0.5
SAMPLES = 2  # tiny_overrides' rollout.n_samples


def config(out, *extra):
    return load_config(None, [*tiny_overrides(out), "bus.max_staleness=1", "reward.fn=tests.rewards.plugins:by_digest",
                              f"reward.timeout_s={TIMEOUT_S}", "reward.on_error_reward=-1", "reward.max_error_rate=1.0", "run.eval_every=4", *extra])


def rollouts(out) -> list[dict]:
    return [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(config(out))
    return out


def test_a_run_survives_hanging_and_crashing_rewards(uninterrupted):
    rows = {row["step"]: row for row in read_metrics(uninterrupted / "metrics.jsonl")[1:]}
    assert sorted(rows) == [1, 2, 3, 4]
    by_step = defaultdict(list)
    for row in rollouts(uninterrupted):
        by_step[row["step"]].append(row)
    hangs = crashes = 0
    for step, step_rows in by_step.items():
        cues = [cue(row["response"]) for row in step_rows]
        failed = [c in ("hang", "kill", "exit") for c in cues]
        assert [row["reward"] for row in step_rows] == [-1.0 if bad else float(c) for bad, c in zip(failed, cues)]
        assert rows[step]["reward/errors"] == sum(failed) and rows[step]["reward/timeouts"] == cues.count("hang")
        assert rows[step]["reward/scored_early"] == rows[step]["reward/scored"] == len(step_rows)  # each started as its sample finished
        assert rows[step]["timing_s/reward"] < TIMEOUT_S * cues.count("hang") + 3.0  # never a stall: at most a deadline per hang
        hangs, crashes = hangs + cues.count("hang"), crashes + cues.count("kill") + cues.count("exit")
    assert hangs > 0 and crashes > 0  # the run met both kinds


def test_a_resumed_async_run_trains_what_an_uninterrupted_one_does(uninterrupted, tmp_path):
    out = tmp_path / "resumed"
    trainer = Trainer(config(out))
    try:  # the loop of `train`, stopped at its step-2 checkpoint once step 3 is drawn ahead and sealed
        trainer.resume_or_warm_start()
        with RolloutFeed(trainer, first=1, last=4) as feed:
            for step in (1, 2):
                batch, _ = feed.take(step)
                trainer.learn(step, batch)
                feed.advance(step)
            deadline = time.monotonic() + 120
            while 3 not in [step for step, _, _ in feed.bus.snapshot()[0]] and time.monotonic() < deadline:
                time.sleep(0.05)
            trainer.save(2, **feed.checkpoint_state())
    finally:
        trainer.close()
    with np.load(bus_file(out / BUS_CHECKPOINTS, 2)) as saved:
        drawn = json.loads(str(saved["document.json"]))
    assert drawn[0]["step"] == 3

    train(config(out))
    first = read_metrics(out / "metrics.jsonl")[1]
    assert first["step"] == 3 and first["bus/restored_on_resume"] == 4 * len(drawn)
    got, expected = rollouts(out), rollouts(uninterrupted)
    assert [(r["step"], r["prompt_id"]) for r in got] == [(r["step"], r["prompt_id"]) for r in expected]  # same prompts, same steps
    counts = defaultdict(int)
    for row in got:
        counts[row["prompt_id"]] += 1
    assert set(counts.values()) == {SAMPLES} and len(counts) == 4 * 4  # each trained n_samples times: none lost or repeated
    step3 = [row["response"] for row in got if row["step"] == 3]
    assert step3 == [response for group in drawn[0]["groups"] for response in group["responses"]]  # trained as drawn, not redrawn


def test_a_generator_failing_mid_step_restarts_in_place(uninterrupted, tmp_path, monkeypatch):
    """Step 2 fails once after its prompts were drawn, generated and scored: it is drawn again, same prompts."""
    shape, failed = Generation._algorithm_batch, []

    def fail_once_at_step_2(self, step, *args):
        if step == 2 and not failed:
            failed.append(step)
            raise RuntimeError("injected generator fault")
        return shape(self, step, *args)

    monkeypatch.setattr(Generation, "_algorithm_batch", fail_once_at_step_2)
    out = tmp_path / "restarted"
    train(config(out))
    rows = read_metrics(out / "metrics.jsonl")[1:]
    assert failed == [2] and [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["services/restarts/generator"] == 1
    assert [(r["step"], r["prompt_id"]) for r in rollouts(out)] == [(r["step"], r["prompt_id"]) for r in rollouts(uninterrupted)]
    roles = json.loads((out / "services.json").read_text())
    assert set(roles) == {"generator", "learner", "reward-0", "reward-1"}
    assert (roles["generator"]["status"], roles["generator"]["restarts"], roles["learner"]["status"]) == ("done", 1, "done")
    assert sum(roles[w]["restarts"] for w in ("reward-0", "reward-1")) > 0  # workers the plug-in killed were replaced
    assert all(row[f"services/heartbeat_age_s/{role}"] >= 0 for row in rows for role in roles)
