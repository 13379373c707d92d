"""Two local processes form one jax.distributed CPU cluster and run a sharded step together."""

import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from rlx.models import Qwen3
from rlx.parallel import DistributedConfig, initialize_distributed
from tests.conftest import fast_compile_env

WORKER = Path(__file__).with_name("distributed_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_share_one_mesh_and_agree_with_one_process():
    port = _free_port()
    env = {k: v for k, v in fast_compile_env().items() if k != "JAX_PLATFORMS"}  # each process simulates its own devices
    env.update(RLX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", RLX_NUM_PROCESSES="2")
    procs = [subprocess.Popen([sys.executable, str(WORKER)], env={**env, "RLX_PROCESS_ID": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=90)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
    results = [[float(v) for v in line.split()[1:]] for out in outputs for line in out.splitlines() if line.startswith("RESULT")]
    assert len(results) == 2 and results[0] == results[1]

    sys.path.insert(0, str(WORKER.parent))
    try:
        from distributed_worker import CONFIG, loss_and_grad_norm
    finally:
        sys.path.pop(0)
    graphdef, params = nnx.split(Qwen3(CONFIG, rngs=nnx.Rngs(0)))
    ids = np.random.default_rng(0).integers(0, CONFIG.vocab_size, (4, 6)).astype(np.int32)
    value, norm = jax.jit(lambda p, x: loss_and_grad_norm(graphdef, p, x))(params, ids)
    np.testing.assert_allclose(results[0], [float(value), float(norm)], rtol=1e-4)


def test_explicit_mode_names_what_is_missing():
    with pytest.raises(ValueError, match="needs coordinator_address / RLX_COORDINATOR_ADDRESS, process_id / RLX_PROCESS_ID"):
        initialize_distributed(DistributedConfig(mode="explicit"), environ={"RLX_NUM_PROCESSES": "2"})
    with pytest.raises(ValueError, match="process_id 2 is outside"):
        initialize_distributed(DistributedConfig(mode="explicit", coordinator_address="h:1", num_processes=2, process_id=2), environ={})
    with pytest.raises(ValueError, match="RLX_NUM_PROCESSES='two' is not an integer"):
        initialize_distributed(DistributedConfig(mode="explicit"), environ={"RLX_NUM_PROCESSES": "two"})
    assert initialize_distributed(DistributedConfig()) is False
