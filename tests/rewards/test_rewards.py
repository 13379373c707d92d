import math

import numpy as np
import pytest

from rlx.data import PromptRecord
from rlx.rewards import resolve_reward_fn, score_responses

RECORD = PromptRecord("r", "2+2=", "4")


@pytest.mark.parametrize(
    "name, response, expected",
    [("exact_match", "4", 1.0), ("exact_match", " 4 ", 1.0), ("exact_match", "04", 0.0), ("exact_match", "", 0.0),
     ("integer_match", "04", 1.0), ("integer_match", "5", 0.0), ("integer_match", "four", 0.0)],
)
def test_verifiers(name, response, expected):
    assert resolve_reward_fn(name)(response, RECORD) == expected


@pytest.mark.parametrize(
    "response, answer, expected",
    [("<think>2+2 is \\boxed{5}? no</think> so \\boxed{4}.", "4", 1.0), ("\\boxed{4}", "5", 0.0), ("the answer is 4", "4", 0.0),
     ("\\boxed{1,000}", "1000.0", 1.0), ("\\boxed{0.75}", "3/4", 1.0), ("\\boxed{$12$}", "12", 1.0),
     ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 1.0), ("\\boxed{\\frac{1}{2}", "\\frac{1}{2}", 0.0), ("\\boxed{x + 1}", "x+1", 1.0)],
)
def test_boxed_answer_reads_the_last_box(response, answer, expected):
    assert resolve_reward_fn("boxed_answer")(response, PromptRecord("m", "q", answer)) == expected


def crashing(response, record):
    if response == "boom":
        raise RuntimeError("kaboom")
    return math.nan if response == "nan" else 1.0


def test_crashing_and_non_finite_rewards_are_isolated_and_counted(caplog):
    scores = score_responses(crashing, ["ok", "boom", "nan"], [RECORD] * 3, on_error=-1.0)
    np.testing.assert_array_equal(scores.rewards, [1.0, -1.0, -1.0])
    assert scores.errors == 2 and "kaboom" in caplog.text


def test_plugin_by_dotted_path():
    assert resolve_reward_fn("tests.rewards.test_rewards:crashing") is crashing


@pytest.mark.parametrize(
    "name, message",
    [("nope", "unknown reward function 'nope'; registered: boxed_answer, exact_match, integer_match"),
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
