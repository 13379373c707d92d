"""math-verify rewards: equivalent answers, extraction, the per-call deadline from a non-main thread."""

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rlx.data import PromptRecord
from rlx.rewards import RewardConfig, resolve_reward_fn, score_responses
from rlx.rewards.isolation import CallTimeout, WorkerPool
from tests.conftest import REPO, fast_compile_env


def record(answer: str) -> PromptRecord:
    return PromptRecord("q", "question", answer)


@pytest.fixture(scope="module")
def math_verify():
    fn = resolve_reward_fn("math_verify", RewardConfig(timeout_s=20.0))
    yield fn
    fn.close()


@pytest.mark.parametrize(
    "answer, response",
    [("\\frac{1}{2}", "so the answer is $\\boxed{0.5}$"),
     ("0.5", "Therefore $\\boxed{\\frac{1}{2}}$."),
     ("1/2", "The answer is 1/2"),
     ("2\\sqrt{2}", "$\\boxed{\\sqrt{8}}$"),
     ("\\{1,2\\}", "the set is $\\boxed{\\{2,1\\}}$"),
     ("x^2+2x+1", "$\\boxed{(x+1)^2}$"),
     ("18", "She makes 9 * 2 = 18 dollars.\n#### 18"),
     ("72", "72"),
     ("1,000", "\\boxed{1000}")],
)
def test_equivalent_answers_score_one(math_verify, answer, response):
    assert math_verify(response, record(answer)) == 1.0


@pytest.mark.parametrize(
    "answer, response",
    [("3", "The answer is 4"), ("448", "844"), ("448", ""), ("[1,2]", "$\\boxed{(1,2)}$"), ("\\pi", "\\boxed{3.14159}"),
     ("18", "first \\boxed{18}, no wait: \\boxed{17}")],  # the last boxed answer counts
)
def test_different_answers_score_zero(math_verify, answer, response):
    assert math_verify(response, record(answer)) == 0.0


def test_an_unparseable_reference_is_an_error_not_a_zero(math_verify):
    scores = score_responses(math_verify, ["\\boxed{1}"], [record("\\frac{")], on_error=-1.0)
    assert scores.errors == 1 and scores.rewards[0] == -1.0


def test_a_hanging_comparison_times_out_from_a_worker_thread_and_the_next_call_works():
    """SymPy evaluates 9^9^9^9 forever; the generator role scores in a thread, where signal timeouts cannot work."""
    fn = resolve_reward_fn("math_verify", RewardConfig(timeout_s=3.0, workers=1))
    outcome = {}

    def score():
        began = time.perf_counter()
        outcome["scores"] = score_responses(fn, ["$\\boxed{9^{9^{9^{9}}}}$", "\\boxed{5}"], [record("5")] * 2, on_error=0.0)
        outcome["seconds"] = time.perf_counter() - began

    fn("\\boxed{5}", record("5"))  # the worker is up, so the deadline below counts only the call
    thread = threading.Thread(target=score)
    thread.start()
    thread.join(120)
    fn.close()
    scores = outcome["scores"]
    assert (scores.errors, scores.timeouts) == (1, 1) and scores.rewards.tolist() == [0.0, 1.0]  # the next call got a fresh worker
    assert outcome["seconds"] < 60  # 3 s deadline + one worker restart; without the deadline it never returns


def sleepy(seconds: float) -> float:
    if seconds < 0:
        raise ArithmeticError(f"negative time {seconds}")
    time.sleep(seconds)
    return seconds


def serve_sleepy() -> dict:
    return {"sleepy": sleepy}


def test_worker_pool_kills_late_calls_and_reports_errors():
    pool = WorkerPool(serve_sleepy, workers=1, timeout_s=0.2)
    try:
        assert pool.call("sleepy", 0.0) == 0.0
        with pytest.raises(CallTimeout, match="sleepy ran past its 0.2 s deadline"):
            pool.call("sleepy", 30.0)
        assert pool.call("sleepy", 0.01) == 0.01
        with pytest.raises(RuntimeError, match="ArithmeticError: negative time -1"):
            pool.call("sleepy", -1)
        assert pool.call("sleepy", 0.0) == 0.0 and pool.restarts() == 1  # an error in the function keeps the worker
    finally:
        pool.close()


BUSY_POOL = """
import time
from rlx.rewards.isolation import WorkerPool
from tests.rewards.test_math_verify import serve_sleepy
pool = WorkerPool(serve_sleepy, workers=1, timeout_s=600)
pool.call("sleepy", 0.0)
pool.submit("sleepy", 600.0)
print(pool.worker_pids()[0], flush=True)
time.sleep(600)
"""


def running(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" not in status.read_text()
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_a_process_killed_outright_takes_its_worker_with_it_even_mid_call():
    """A generator killed with SIGKILL while a reward plug-in is stuck in a call leaves no worker behind."""
    owner = subprocess.Popen([sys.executable, "-c", BUSY_POOL], stdout=subprocess.PIPE, text=True, env=fast_compile_env(), cwd=REPO)
    try:
        worker = int(owner.stdout.readline())
        time.sleep(0.5)  # the call reaches the worker
        assert running(worker)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    ended_by = time.monotonic() + 10
    while running(worker) and time.monotonic() < ended_by:
        time.sleep(0.1)
    assert not running(worker)
