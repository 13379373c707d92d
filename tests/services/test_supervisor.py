"""`services.backend: process`: the supervisor restarts a learner process that dies or hangs, and the restarted run
resumes from its latest checkpoint without writing a step twice."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlx.errors import RunStopped
from rlx.services.resume import drop_rows_after
from rlx.services.supervisor import ENV_LEARNER_RESTARTS, HangWatch, supervise
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]
LEARNER_HANG_TIMEOUT_S = 25  # longer than the tiny run's compiles and steps here, so only the injected hang counts as one


def dies_until(tmp_path: Path, deaths: int, how: str) -> list[str]:
    """A child that records the restart count it was given, then dies (`how`) on its first `deaths` runs."""
    script = f"""
import os, signal, sys
log = {str(tmp_path / 'restarts.log')!r}
with open(log, 'a') as handle:
    handle.write(os.environ[{ENV_LEARNER_RESTARTS!r}] + '\\n')
if len(open(log).read().split()) <= {deaths}:
    os.kill(os.getpid(), signal.SIGKILL) if {how!r} == 'kill' else sys.exit(1)
"""
    return [sys.executable, "-c", script]


def restarts_seen(tmp_path: Path) -> list[int]:
    return [int(n) for n in (tmp_path / "restarts.log").read_text().split()]


@pytest.mark.parametrize("how", ["kill", "crash"])
def test_a_learner_that_dies_is_started_again_with_its_restart_count(tmp_path, how):
    assert supervise(dies_until(tmp_path, 2, how), max_restarts=2) == 0
    assert restarts_seen(tmp_path) == [0, 1, 2]


def test_past_max_restarts_the_run_stops_naming_the_learner_and_how_it_ended(tmp_path):
    with pytest.raises(RunStopped, match=r"learner process was killed by SIGKILL after 1 restarts \(services.max_restarts=1\)"):
        supervise(dies_until(tmp_path, 5, "kill"), max_restarts=1)
    assert restarts_seen(tmp_path) == [0, 1]


@pytest.mark.parametrize("code", [2, 3, 130])
def test_an_exit_that_says_why_is_never_restarted(tmp_path, code):
    command = [sys.executable, "-c", f"open({str(tmp_path / 'runs')!r}, 'a').write('x'); raise SystemExit({code})"]
    assert supervise(command, max_restarts=3) == code
    assert (tmp_path / "runs").read_text() == "x"


def hangs_once(tmp_path: Path, status: str, beating: bool, first_s: float = 3600.0) -> list[str]:
    """A child that writes its learner's health (`status`, a heartbeat 100 s old) to `services.json`, rewriting it every
    0.1 s if `beating`; then it exits 0, after `first_s` seconds on its first run."""
    script = f"""
import json, os, threading, time
log, path = {str(tmp_path / 'restarts.log')!r}, {str(tmp_path / 'services.json')!r}
with open(log, 'a') as handle:
    handle.write(os.environ[{ENV_LEARNER_RESTARTS!r}] + '\\n')
state = {{"learner": {{"pid": os.getpid(), "status": {status!r}, "restarts": 0, "last_heartbeat": time.time() - 100}}}}
def write():
    while True:
        open(path + '.partial', 'w').write(json.dumps(state)); os.replace(path + '.partial', path)
        if not {beating!r}: return
        time.sleep(0.1)
threading.Thread(target=write, daemon=True).start()
time.sleep(0 if len(open(log).read().split()) > 1 else {first_s!r})
"""
    return [sys.executable, "-c", script]


@pytest.mark.parametrize("status, beating, why", [("training", True, "hung: no learner heartbeat for 10"),
                                                  ("waiting", False, "hung: services.json not rewritten for 1.")])
def test_a_learner_that_hangs_is_killed_and_started_again(tmp_path, caplog, status, beating, why):
    """Stuck while training (its health thread alive), or wedged altogether (its health no longer rewritten)."""
    assert supervise(hangs_once(tmp_path, status, beating), 1, HangWatch(tmp_path / "services.json", 1.0)) == 0
    assert restarts_seen(tmp_path) == [0, 1]
    assert f"the learner process {why}" in caplog.text and "(services.hang_timeout_s=1); restart 1 of 1" in caplog.text


def test_a_learner_waiting_for_rollouts_is_not_hung(tmp_path):
    assert supervise(hangs_once(tmp_path, "waiting", True, first_s=2.5), 1, HangWatch(tmp_path / "services.json", 1.0)) == 0
    assert restarts_seen(tmp_path) == [0]  # its heartbeat 100 s old, but it waits: not restarted


def test_rows_past_the_resumed_step_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in (1, 2, 3, 3, 4)))
    assert drop_rows_after(path, 2) == 3
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    assert drop_rows_after(path, 2) == 0 and drop_rows_after(tmp_path / "absent.jsonl", 2) == 0


def kill_then_hang_at_step_3(step: int, metrics: dict) -> None:
    """A `run.hooks` entry: at step 3 (checkpoints at 2 and 4) keeps what the run wrote so far, then SIGKILLs the learner;
    the second time, it hangs the learner (its health thread alive)."""
    output_dir = Path(os.environ["RLX_TEST_OUTPUT_DIR"])
    if step == 3 and not (output_dir / "killed_once").exists():
        for name in ("metrics.jsonl", "rollouts.jsonl"):
            (output_dir / f"{name}.before_kill").write_text((output_dir / name).read_text())
        (output_dir / "killed_once").touch()
        os.kill(os.getpid(), signal.SIGKILL)
    elif step == 3 and not (output_dir / "hung_once").exists():
        (output_dir / "hung_once").touch()
        time.sleep(3600)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_learner_killed_or_hung_between_checkpoints_resumes_and_writes_each_step_once(tmp_path):
    output_dir = tmp_path / "run"
    overrides = tiny_overrides(output_dir) + ["services.backend=process", "run.eval_every=4", "services.heartbeat_s=1",
                                              f"services.hang_timeout_s={LEARNER_HANG_TIMEOUT_S}",
                                              f"run.hooks=[{__name__}:kill_then_hang_at_step_3]"]
    environment = {**os.environ, "RLX_TEST_OUTPUT_DIR": str(output_dir), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "rlx.launch", "--config", "configs/demo.yaml", *overrides], cwd=ROOT,
                          env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "the learner process was killed by SIGKILL; restart 1 of 3" in done.stderr, done.stderr[-3000:]
    assert "the learner process hung: no learner heartbeat for 2" in done.stderr  # 25.x s
    assert "while training (services.hang_timeout_s=25); restart 2 of 3" in done.stderr
    metrics = rows(output_dir / "metrics.jsonl")
    assert [row["step"] for row in metrics] == [0, 1, 2, 3, 4]  # 0: the warm-up
    assert [row["services/restarts/learner"] for row in metrics[1:]] == [0.0, 0.0, 2.0, 2.0]
    # Step 3 again from checkpoint 2: the same prompts, samples and rewards as the run that was killed drew.
    before = [row for row in rows(output_dir / "rollouts.jsonl.before_kill") if row["step"] == 3]
    after = rows(output_dir / "rollouts.jsonl")
    assert [row for row in after if row["step"] == 3] == before
    counts: dict[tuple, int] = {}
    for row in after:
        counts[(row["step"], row["prompt_id"])] = counts.get((row["step"], row["prompt_id"]), 0) + 1
    assert len(counts) == 4 * 4 and set(counts.values()) == {2}  # 4 prompts a step, n_samples=2 each, none twice
    killed = rows(output_dir / "metrics.jsonl.before_kill")[3]
    assert killed["step"] == 3 and metrics[3]["reward/mean"] == killed["reward/mean"]
    assert metrics[3]["actor/pg_loss"] == pytest.approx(killed["actor/pg_loss"], abs=1e-6)


def test_a_supervisor_killed_outright_takes_its_run_with_it(tmp_path):
    run = ("import time; from rlx.services.supervisor import die_with_supervisor; die_with_supervisor(); "
           f"open({str(tmp_path / 'ready')!r}, 'w').close(); time.sleep(120)")
    supervisor = subprocess.Popen([sys.executable, "-c", "import sys; from rlx.services.supervisor import supervise; "
                                   "supervise([sys.executable, '-c', sys.argv[1]], 0)", run], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while not (tmp_path / "ready").exists():
        assert time.monotonic() < deadline and supervisor.poll() is None, "the supervised run never started"
        time.sleep(0.1)
    child = next(int(pid) for pid in os.listdir("/proc") if pid.isdigit() and _parent(int(pid)) == supervisor.pid)
    supervisor.kill()
    supervisor.wait()
    while time.monotonic() < deadline and os.path.exists(f"/proc/{child}") and _state(child) != "Z":
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{child}") or _state(child) == "Z"  # gone (or a zombie awaiting its reaper)


def _stat(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return ["X", "0"]


def _parent(pid: int) -> int:
    return int(_stat(pid)[1])


def _state(pid: int) -> str:
    return _stat(pid)[0]
