"""Runs untrusted Python code (the `python` tool) in a child interpreter with limits; errors come back as output.

What is guaranteed here, on Linux:

* **Wall-clock timeout**: past `timeout_s` the parent kills the child's whole process group.
* **CPU, memory and file-size limits**: `RLIMIT_CPU`, `RLIMIT_AS`, `RLIMIT_FSIZE` are set in the
  child before any user code runs, and `resource.setrlimit` is refused afterwards.
* **No new processes**: an audit hook (PEP 578) refuses `os.fork`, `os.system`, `subprocess`,
  `exec*`, `spawn*`, `posix_spawn` and signals to other processes; `RLIMIT_NPROC` is set too,
  which the kernel enforces for any user but root.
* **No network**: the audit hook refuses creating sockets and the `socket`, `_socket`, `ssl` and
  `ctypes` modules cannot be imported. Where `unshare -rn` works (user namespaces enabled), the
  child also runs in a new network namespace with no interfaces, and without the host's
  privileges (its limits cannot be raised again even when rlx runs as root).
* **Writes only in a fresh temporary working directory** (deleted afterwards): the audit hook
  refuses opening files for writing, and removing, renaming, linking or changing files, outside it
  (symbolic links are resolved first).
* **Output**: stdout and stderr together, cut to `max_output_bytes`; a child that writes more
  than `KILL_AFTER_OUTPUT` times that is killed rather than drained.

Not guaranteed: reading files is allowed wherever the process may read (the interpreter needs its
standard library). Audit hooks are a Python-level guard, not a security boundary (PEP 578 says
so): code that reaches C through an importable compiled extension can get around them. For code
written by an adversary, run the tool inside a container or VM (gVisor, Firecracker).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from rlx.checks import require_positive

KILL_AFTER_OUTPUT = 16  # times max_output_bytes
SCRIPT = "main.py"


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    """Limits of one run of the `python` tool: wall-clock and CPU seconds, address space, file size, output."""

    timeout_s: float = 10.0
    cpu_s: int = 5
    memory_mb: int = 1024
    max_file_mb: int = 16
    max_output_bytes: int = 4096

    def __post_init__(self) -> None:
        require_positive(self, "timeout_s", "cpu_s", "memory_mb", "max_file_mb", "max_output_bytes")


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    output: str  # stdout and stderr, interleaved, cut to the limit
    exit_code: int | None  # None when the sandbox killed the child
    timed_out: bool = False
    flooded: bool = False  # killed for writing far more than the output limit
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not (self.timed_out or self.flooded)

    def report(self) -> str:
        """The output as a tool returns it: what the code printed, then what went wrong."""
        notes = []
        if self.truncated:
            notes.append("[output truncated]")
        if self.timed_out:
            notes.append("[killed: wall-clock time limit]")
        elif self.flooded:
            notes.append("[killed: too much output]")
        elif self.exit_code is not None and self.exit_code < 0:
            name = signal.Signals(-self.exit_code).name
            why = {"SIGXCPU": ": CPU time limit", "SIGXFSZ": ": file size limit"}.get(name, "")
            notes.append(f"[killed by {name}{why}]")
        elif self.exit_code:
            notes.append(f"[exit status {self.exit_code}]")
        return "\n".join([self.output.rstrip("\n"), *notes]).strip("\n")


# Runs in the child before the user's code (read first): limits, the audit hook, blocked modules. The hook
# and its settings live in a closure, and the user's code gets a fresh `__main__` module.
_PRELUDE = r'''
def _lock_down(limits):
    import json, os, resource, sys
    for name, (soft, hard) in json.loads(limits).items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    sys.dont_write_bytecode = True
    root = os.path.realpath(os.getcwd())
    with open("main.py") as handle:
        source = handle.read()
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    refused = {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen", "os.kill",
               "os.killpg", "signal.pthread_kill", "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
               "ctypes.dlopen", "ctypes.dlsym", "resource.setrlimit", "resource.prlimit"}
    changes = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink", "os.truncate",
               "os.utime", "os.chflags", "os.setxattr", "os.removexattr", "shutil.copyfile", "shutil.copymode", "shutil.copystat",
               "shutil.copytree", "shutil.move", "shutil.rmtree", "shutil.chown", "os.mkfifo", "os.mknod"}
    realpath, fsdecode, sep, path_types = os.path.realpath, os.fsdecode, os.sep, (str, bytes, os.PathLike)

    def inside(path):
        if isinstance(path, int):
            return True  # an open file descriptor: checked when it was opened
        real = realpath(fsdecode(path))
        return real == root or real.startswith(root + sep)

    def guard(event, args):
        if event in refused:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            if ((mode is not None and any(c in mode for c in "wax+")) or (flags is not None and flags & writing)) and path is not None and not inside(path):
                raise PermissionError(f"sandbox: writing outside the working directory is not allowed: {path}")
        elif event in changes:
            paths = [a for a in args[:2] if isinstance(a, path_types)]
            if not all(inside(p) for p in paths):
                raise PermissionError(f"sandbox: {event} outside the working directory is not allowed: {paths}")

    sys.addaudithook(guard)
    for name in ("socket", "_socket", "ssl", "_ssl", "ctypes", "_ctypes", "resource", "multiprocessing", "_posixsubprocess", "gc"):
        sys.modules[name] = None
    return source

import sys, types
_source = _lock_down(sys.argv[1])
del _lock_down
_main = sys.modules["__main__"] = types.ModuleType("__main__")
_main.__file__ = "main.py"
exec(compile(_source, "main.py", "exec"), _main.__dict__)
'''


@functools.cache
def _network_namespace() -> tuple[str, ...]:
    """`unshare -rn` (a new user and network namespace) when this host allows it, else nothing."""
    if shutil.which("unshare") is None:
        return ()
    try:
        probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return ("unshare", "-rn") if probe.returncode == 0 else ()


def run_python(code: str, config: SandboxConfig = SandboxConfig()) -> SandboxResult:
    """Runs `code` as a script in a fresh working directory under `config`'s limits."""
    workdir = tempfile.mkdtemp(prefix="rlx-sandbox-")
    try:
        with open(os.path.join(workdir, SCRIPT), "w") as handle:
            handle.write(code)
        # (soft, hard): past the soft CPU limit the child gets SIGXCPU (reported as such), SIGKILL a second later.
        limits = {"RLIMIT_CPU": (config.cpu_s, config.cpu_s + 1), "RLIMIT_AS": (config.memory_mb << 20,) * 2,
                  "RLIMIT_FSIZE": (config.max_file_mb << 20,) * 2, "RLIMIT_NPROC": (1, 1), "RLIMIT_CORE": (0, 0)}
        command = [*_network_namespace(), sys.executable, "-I", "-c", _PRELUDE, json.dumps(limits)]
        environment = {"PATH": os.defpath, "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        process = subprocess.Popen(command, cwd=workdir, env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        return _collect(process, config)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _collect(process: subprocess.Popen, config: SandboxConfig) -> SandboxResult:
    """Reads the child's output until it exits, keeping the first `max_output_bytes`; kills it past the
    deadline or when it floods."""
    deadline = time.monotonic() + config.timeout_s
    kept, total, timed_out, flooded = bytearray(), 0, False, False
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            if not selector.select(remaining):
                continue
            chunk = os.read(process.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            kept += chunk[: max(config.max_output_bytes - len(kept), 0)]
            total += len(chunk)
            if total > KILL_AFTER_OUTPUT * config.max_output_bytes:
                flooded = True
                break
    try:
        exit_code = None if timed_out or flooded else process.wait(max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        exit_code, timed_out = None, True
    _kill_group(process)
    process.stdout.close()
    return SandboxResult(kept.decode("utf-8", "replace"), exit_code, timed_out, flooded, truncated=total > len(kept))


def _kill_group(process: subprocess.Popen) -> None:
    """Kills whatever is left of the child's session (it is its own process group) and reaps the child."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
