"""The sandbox contains what untrusted code tries, and reports it as the tool's output."""

import os
import time

import pytest

from rlx.envs import SandboxConfig, run_python

LIMITS = SandboxConfig(timeout_s=3, cpu_s=2, memory_mb=512, max_output_bytes=1000)


def test_output_and_errors_come_back_and_the_working_directory_is_fresh_and_removed():
    result = run_python("import os\nopen('notes.txt', 'w').write('kept')\nprint(open('notes.txt').read(), os.getcwd())", LIMITS)
    assert result.ok and result.output.startswith("kept ")
    workdir = result.output.split()[1]
    assert os.path.basename(workdir).startswith("rlx-sandbox-") and not os.path.exists(workdir)
    failed = run_python("print('before')\n1 / 0", LIMITS)
    assert not failed.ok and "before" in failed.report() and "ZeroDivisionError" in failed.report() and "[exit status 1]" in failed.report()


def test_an_infinite_loop_is_stopped_by_the_cpu_limit_and_a_sleep_by_the_wall_clock():
    spin = run_python("while True:\n    pass", SandboxConfig(timeout_s=60, cpu_s=1))  # 1 CPU second, even on a busy machine
    assert not spin.ok and not spin.timed_out and "CPU time limit" in spin.report()
    sleep = run_python("import time\nprint('started', flush=True)\ntime.sleep(60)", SandboxConfig(timeout_s=1, cpu_s=2))
    assert sleep.timed_out and "started" in sleep.report() and "wall-clock time limit" in sleep.report()


def test_a_fork_bomb_and_subprocesses_are_refused():
    bomb = run_python("import os\nwhile True:\n    os.fork()", LIMITS)
    assert not bomb.ok and "os.fork is not allowed" in bomb.report()
    for code in ("import os\nos.system('echo escaped')", "import subprocess\nsubprocess.run(['echo', 'escaped'])",
                 "import os\nos.execv('/bin/echo', ['echo', 'escaped'])"):
        result = run_python(code, LIMITS)
        assert not result.ok and "escaped" not in result.output.splitlines(), code  # (the traceback quotes the code)


def test_a_100_mb_print_is_cut_to_the_limit_and_the_child_killed():
    began = time.perf_counter()
    result = run_python("print('x' * 100_000_000)", LIMITS)
    assert result.truncated and result.flooded and not result.ok
    assert len(result.output) == LIMITS.max_output_bytes and "[output truncated]" in result.report()
    assert time.perf_counter() - began < 30


def test_writes_outside_the_working_directory_are_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    for code in (f"open({str(target)!r}, 'w').write('x')", f"import os\nos.open({str(target)!r}, os.O_CREAT | os.O_WRONLY)",
                 f"import os\nos.symlink({str(tmp_path)!r}, 'link')\nopen('link/escaped.txt', 'w')",
                 f"import shutil\nshutil.rmtree({str(tmp_path)!r})"):
        result = run_python(code, LIMITS)
        assert not result.ok and "sandbox:" in result.report(), code
    assert not target.exists() and tmp_path.exists()


def test_sockets_cannot_be_imported_or_connected():
    result = run_python("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)\nprint('connected')", LIMITS)
    assert not result.ok and "connected" not in result.output and "import of socket halted" in result.report()
    for module in ("_socket", "ssl", "ctypes"):
        assert "halted" in run_python(f"import {module}", LIMITS).report(), module


def test_memory_and_the_limits_themselves_are_bounded():
    assert "MemoryError" in run_python("x = bytearray(2 * 1024 ** 3)", LIMITS).report()
    raised = run_python("import sys\nresource = sys.modules.get('resource')\nprint(resource)", LIMITS)
    assert raised.ok and raised.output.strip() == "None"  # the module is gone: its limits cannot be raised from Python


def test_limits_are_validated():
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxConfig(timeout_s=0)
