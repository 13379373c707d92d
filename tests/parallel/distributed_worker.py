"""One process of the two-process CPU cluster that tests/parallel/test_distributed.py starts.

Joins through `initialize_distributed` (RLX_* environment variables), builds one fsdp mesh over
both processes' devices, runs a sharded loss-and-gradient step of a tiny Qwen3 and prints
`RESULT <loss> <grad norm>`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rlx.models import ModelConfig, Qwen3
from rlx.parallel import (
    DistributedConfig, MeshConfig, batch_sharding, from_host, initialize_distributed, make_mesh, rules_for, tree_shardings,
)

CONFIG = ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8)


def loss_and_grad_norm(graphdef, params, ids):
    def loss(p):
        logits, _ = nnx.merge(graphdef, p)(ids)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), ids[:, 1:, None], axis=-1))

    value, grads = jax.value_and_grad(loss)(params)
    return value, optax.tree.norm(grads)


def main() -> None:
    assert initialize_distributed(DistributedConfig(mode="explicit", timeout_s=30))
    assert jax.process_count() == 2 and len(jax.devices()) == 4, (jax.process_count(), jax.devices())
    mesh = make_mesh(MeshConfig(fsdp=4), jax.devices())
    rules = rules_for("fsdp")
    graphdef, params = nnx.split(Qwen3(CONFIG, rngs=nnx.Rngs(0)))  # same seed: the same weights on every host
    host_params = jax.device_get(params)
    param_shardings = tree_shardings(host_params, mesh, rules)
    params = from_host(host_params, param_shardings)
    ids = np.random.default_rng(0).integers(0, CONFIG.vocab_size, (4, 6)).astype(np.int32)
    rows = batch_sharding(mesh, rules, ids.shape)
    local = ids[jax.process_index() * 2 : jax.process_index() * 2 + 2]  # each host feeds its own rows
    global_ids = jax.make_array_from_process_local_data(rows, local, ids.shape)
    step = jax.jit(lambda p, x: loss_and_grad_norm(graphdef, p, x), in_shardings=(param_shardings, rows))
    value, norm = step(params, global_ids)
    print(f"RESULT {float(value):.6f} {float(norm):.6f}", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    # Before any JAX operation; not at import, since the test imports CONFIG from here.
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", 2)
    main()
