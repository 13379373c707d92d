import math
import time

import numpy as np
import pytest

from rlx.data import PromptRecord
from rlx.rewards import RewardConfig, resolve_reward_fn, score_responses

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


def test_plugin_by_dotted_path_runs_under_its_deadline():
    fn = resolve_reward_fn("tests.rewards.test_rewards:crashing")
    assert fn("ok", RECORD) == 1.0
    with pytest.raises(RuntimeError, match="kaboom"):
        fn("boom", RECORD)


def sleeping(response, record):
    time.sleep(float(response))
    return 1.0


def test_a_plugin_past_its_deadline_fails_and_later_calls_fail_at_once():
    fn = resolve_reward_fn("tests.rewards.test_rewards:sleeping", RewardConfig(timeout_s=0.2))
    began = time.perf_counter()
    scores = score_responses(fn, ["5", "0", "0"], [RECORD] * 3, on_error=0.0)
    assert scores.errors == 3 and time.perf_counter() - began < 1.5  # one deadline, then fail-fast while it sleeps on


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
