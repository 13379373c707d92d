"""Multi-host start-up: one `jax.distributed.initialize` call, driven by config or environment.

After it, `jax.devices()` lists every host's devices, so the learner mesh built by
`rlx.parallel.role_meshes` spans hosts; each process feeds its own rows
(`jax.make_array_from_process_local_data`) and compiled steps run as one SPMD program.
What else processes share is in `rlx.parallel.processes`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Iterator, Mapping

import jax

from rlx.parallel.config import DistributedConfig

log = logging.getLogger(__name__)

ENV_COORDINATOR = "RLX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "RLX_NUM_PROCESSES"
ENV_PROCESS_ID = "RLX_PROCESS_ID"


def initialize_distributed(config: DistributedConfig, environ: Mapping[str, str] = os.environ) -> bool:
    """Joins the cluster described by `config` (falling back to RLX_* variables); False when `mode: off`."""
    if config.mode == "off":
        return False
    timeouts = {"initialization_timeout": config.timeout_s, "heartbeat_timeout_seconds": config.heartbeat_timeout_s}
    if config.mode == "auto":
        # TPU pods, SLURM and Open MPI: JAX reads the coordinator and ranks from the environment.
        jax.distributed.initialize(**timeouts)
        return True
    address = config.coordinator_address or environ.get(ENV_COORDINATOR)
    count = config.num_processes if config.num_processes is not None else _env_int(environ, ENV_NUM_PROCESSES)
    rank = config.process_id if config.process_id is not None else _env_int(environ, ENV_PROCESS_ID)
    missing = [name for name, value in ((f"coordinator_address / {ENV_COORDINATOR}", address),
                                        (f"num_processes / {ENV_NUM_PROCESSES}", count),
                                        (f"process_id / {ENV_PROCESS_ID}", rank)) if value is None]
    if missing:
        raise ValueError(f"parallel.distributed.mode: explicit needs {', '.join(missing)} (config field or environment variable)")
    if not 0 <= rank < count:
        raise ValueError(f"process_id {rank} is outside [0, num_processes={count})")
    jax.distributed.initialize(address, num_processes=count, process_id=rank, **timeouts)
    return True


def expected_processes(config: DistributedConfig, environ: Mapping[str, str] = os.environ) -> int:
    """The process count before joining, where config or environment says it (`explicit`); 1 otherwise.

    Only simulated CPU devices need it (each process simulates its own share); accelerators are counted by JAX.
    """
    if config.mode != "explicit":
        return 1
    count = config.num_processes if config.num_processes is not None else _env_int(environ, ENV_NUM_PROCESSES)
    return count or 1


@contextlib.contextmanager
def fail_fast() -> Iterator[None]:
    """In a multi-process run, an exception ends this process at once (exit code 1).

    A normal exit would wait at JAX's shutdown barrier (`shutdown_timeout_seconds`, minutes) for
    processes that may be blocked in a collective waiting for this one; exiting at once stops this
    process's heartbeats, so the coordinator stops the others within `heartbeat_timeout_s`.
    """
    try:
        yield
    except BaseException:
        if jax.process_count() == 1:
            raise
        log.exception("process %d of %d failed; exiting so that the others stop too", jax.process_index(), jax.process_count())
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None
