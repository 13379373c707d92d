import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rlx.data import PromptRecord
from rlx.rewards import EarlyScores, RewardConfig, resolve_reward_fn, score_responses

RECORD = PromptRecord("r", "2+2=", "4")


@pytest.mark.parametrize(
    "name, response, expected",
    [("exact_match", "4", 1.0), ("exact_match", " 4 ", 1.0), ("exact_match", "04", 0.0), ("exact_match", "", 0.0),
     ("integer_match", "04", 1.0), ("integer_match", "5", 0.0), ("integer_match", "four", 0.0)],
)
def test_verifiers(name, response, expected):
    assert resolve_reward_fn(name)(response, RECORD) == expected


def crashing(response, record):
    if response == "boom":
        raise RuntimeError("kaboom")
    return math.nan if response == "nan" else 1.0


def test_crashing_and_non_finite_rewards_are_isolated_and_counted(caplog):
    scores = score_responses(crashing, ["ok", "boom", "nan"], [RECORD] * 3, on_error=-1.0)
    np.testing.assert_array_equal(scores.rewards, [1.0, -1.0, -1.0])
    assert scores.errors == 2 and "kaboom" in caplog.text


@pytest.fixture(scope="module")
def misbehaving():
    """The plug-in of `tests.rewards.plugins` in a pool of 2 workers, 0.5 s per call."""
    fn = resolve_reward_fn("tests.rewards.plugins:misbehaving", RewardConfig(timeout_s=0.5, workers=2))
    fn("1", RECORD)  # both workers up (the second is forked while the first answers)
    yield fn
    fn.close()


def test_plugin_by_dotted_path_runs_in_a_worker_process(misbehaving):
    assert misbehaving("2.5", RECORD) == 2.5
    assert misbehaving("pid", RECORD) in misbehaving.pool.worker_pids()
    with pytest.raises(RuntimeError, match="ValueError: could not convert string to float: 'boom'"):
        misbehaving("boom", RECORD)


def test_hangs_and_crashes_score_on_error_are_counted_and_their_workers_replaced(misbehaving, caplog):
    restarts_before = misbehaving.pool.restarts()
    responses = ["1", "hang", "2", "kill", "exit", "3", "nan", "4"]
    began = time.perf_counter()
    scores = score_responses(misbehaving, responses, [RECORD] * len(responses), on_error=-1.0)
    seconds = time.perf_counter() - began
    np.testing.assert_array_equal(scores.rewards, [1, -1, 2, -1, -1, 3, -1, 4])
    assert (scores.errors, scores.timeouts) == (4, 1)  # hang, SIGKILL, os._exit, nan; only the hang is a timeout
    assert "killed by signal 9" in caplog.text and "exit code 3" in caplog.text
    assert misbehaving.pool.restarts() - restarts_before == 3  # a fresh worker after each of the hang and the two deaths
    assert seconds < 5  # one 0.5 s deadline; the other worker scored on meanwhile; each replacement is forked, not spawned
    assert misbehaving("5", RECORD) == 5.0


def test_a_batch_is_scored_across_the_pool_concurrently(misbehaving):
    began = time.perf_counter()
    scores = score_responses(misbehaving, ["sleep"] * 4, [RECORD] * 4, on_error=0.0)
    assert scores.errors == 0 and scores.rewards.tolist() == pytest.approx([0.3] * 4)
    assert time.perf_counter() - began < 1.0  # 4 calls of 0.3 s on 2 workers: ~0.6 s; one at a time would take 1.2 s


def test_rewards_beyond_float32_are_errors():
    scores = score_responses(lambda response, record: float(response), ["1e300", "-1e39", "2.5"], [RECORD] * 3, on_error=0.0)
    np.testing.assert_array_equal(scores.rewards, [0.0, 0.0, 2.5])
    assert scores.errors == 2


@pytest.mark.parametrize(
    "name, message",
    [("nope", "unknown reward function 'nope'; registered: exact_match, format, integer_match, math_verify"),
     ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
     ("tests.rewards.test_rewards:missing", "has no attribute 'missing'"),
     ("tests.rewards.test_rewards:RECORD", "is not callable")],
)
def test_bad_reward_names(name, message):
    with pytest.raises(ValueError, match=message):
        resolve_reward_fn(name)


def test_a_worker_killed_while_idle_is_replaced_before_a_call_needs_it(misbehaving):
    before, victim = misbehaving.pool.restarts(), misbehaving.pool.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while misbehaving.pool.restarts() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    health = misbehaving.pool.health()
    assert misbehaving.pool.restarts() == before + 1 and health["reward-0"]["pid"] not in (victim, None)
    assert health["reward-0"]["restarts"] >= 1 and set(health) == {"reward-0", "reward-1"}
    scores = score_responses(misbehaving, ["1", "2", "3"], [RECORD] * 3, on_error=0.0)
    assert scores.errors == 0 and misbehaving.pool.restarts() == before + 1  # no call met the dead worker


def test_rewards_started_early_are_read_once_and_unread_ones_age_out(misbehaving):
    early = EarlyScores(misbehaving)
    other = PromptRecord("r2", "1+1=", "2")
    for response, record in [("sleep", RECORD), ("2", RECORD), ("2", RECORD), ("7", other)]:
        early.start(response, record)
    scores = score_responses(misbehaving, ["2", "sleep", "2", "2", "3"], [RECORD, RECORD, other, RECORD, RECORD], on_error=0.0, early=early)
    assert scores.rewards.tolist() == pytest.approx([2, 0.3, 2, 2, 3]) and scores.errors == 0
    assert scores.early == 3  # ("2", other) and ("3", RECORD) were not started; each start is read once
    assert early.take("7", other).result() == 7.0  # an unread start is kept for the next batch (a partial rollout's) ...
    early.start("9", other)
    score_responses(misbehaving, [], [], on_error=0.0, early=early)
    score_responses(misbehaving, [], [], on_error=0.0, early=early)
    assert early.take("9", other) is None  # ... dropped once two batches were scored without it


def test_a_pool_stops_its_workers_on_close():
    fn = resolve_reward_fn("tests.rewards.plugins:misbehaving", RewardConfig(workers=1))
    fn("1", RECORD)
    (process,) = [worker.process for worker in fn.pool._workers]
    fn.close()
    assert not process.is_alive()
    with pytest.raises(RuntimeError, match="pool is closed"):
        fn("1", RECORD)


def test_a_program_that_never_closes_its_pool_exits_cleanly():
    """At exit multiprocessing terminates the workers and the fork server; the pool closes first instead of
    taking them for crashes and forking replacements from a fork server that is gone."""
    program = ("import atexit, time\natexit.register(time.sleep, 2.5)\n"  # a slow exit, as pytest's: idle checks run meanwhile
               "from rlx.data import PromptRecord\nfrom rlx.rewards import RewardConfig, resolve_reward_fn\n"
               "fn = resolve_reward_fn('tests.rewards.plugins:misbehaving', RewardConfig(workers=2))\n"
               "print(fn('1', PromptRecord('r', '2+2=', '4')))\n")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", program], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, "1.0\n"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "died while idle" not in done.stderr, done.stderr[-2000:]


def test_evaluation_and_training_share_the_verifier(tmp_path):
    """The evaluator scores with the same function object the trainer uses."""
    from rlx.config import load_config
    from rlx.services.trainer import Trainer
    from tests.conftest import tiny_overrides

    trainer = Trainer(load_config(None, tiny_overrides(tmp_path) + ["reward.fn=integer_match"]))
    try:
        assert trainer.reward_fn is resolve_reward_fn("integer_match")
    finally:
        trainer.close()


@pytest.mark.parametrize(
    "pattern, response, expected",
    [("\\\\boxed\\{.+\\}", "so $\\boxed{3}$", 1.0), ("\\\\boxed\\{.+\\}", "3", 0.0), ("^\\d+$", "42", 1.0), ("^\\d+$", "42 apples", 0.0)],
)
def test_format_reward(pattern, response, expected):
    assert resolve_reward_fn("format", RewardConfig(format_pattern=pattern))(response, RECORD) == expected


def test_weighted_sum_of_rewards():
    fn = resolve_reward_fn("exact_match + 0.25 * format - 0.5*integer_match", RewardConfig(format_pattern="^4$"))
    assert fn("4", RECORD) == pytest.approx(1.0 + 0.25 - 0.5)
    assert fn("04", RECORD) == pytest.approx(-0.5)


def test_a_crashing_term_makes_the_sum_an_error():
    fn = resolve_reward_fn("exact_match + 0.1 * tests.rewards.test_rewards:crashing")
    scores = score_responses(fn, ["4", "boom"], [RECORD] * 2, on_error=0.0)
    assert scores.rewards.tolist() == pytest.approx([1.1, 0.0]) and scores.errors == 1


@pytest.mark.parametrize(
    "overrides, message",
    [(["reward.fn=exact_match + 2 x"], "cannot read '\\+ 2 x'"), (["reward.fn=a ++ b"], "cannot read '\\+\\+ b'"),
     (["reward.fn=a b"], "cannot read 'b'"), (["reward.fn="], "cannot read ''"),
     (["reward.timeout_s=0"], "timeout_s must be > 0"), (["reward.format_pattern=(a"], "is not a regular expression")],
)
def test_reward_config_errors(overrides, message):
    from rlx.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
