"""Multi-host start-up: one `jax.distributed.initialize` call, driven by config or environment.

After it, `jax.devices()` lists every host's devices, so the learner mesh built by
`rlx.parallel.role_meshes` spans hosts; each process feeds its own rows
(`jax.make_array_from_process_local_data`) and compiled steps run as one SPMD program.
"""

from __future__ import annotations

import os
from typing import Mapping

import jax

from rlx.parallel.config import DistributedConfig

ENV_COORDINATOR = "RLX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "RLX_NUM_PROCESSES"
ENV_PROCESS_ID = "RLX_PROCESS_ID"


def initialize_distributed(config: DistributedConfig, environ: Mapping[str, str] = os.environ) -> bool:
    """Joins the cluster described by `config` (falling back to RLX_* variables); False when `mode: off`."""
    if config.mode == "off":
        return False
    if config.mode == "auto":
        # TPU pods, SLURM and Open MPI: JAX reads the coordinator and ranks from the environment.
        jax.distributed.initialize(initialization_timeout=config.timeout_s)
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
    jax.distributed.initialize(address, num_processes=count, process_id=rank, initialization_timeout=config.timeout_s)
    return True


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None
