"""Model weights created or loaded straight onto their shardings, never whole on one device.

`init_params` runs the random initialiser under `jax.jit` with output shardings, so each device
computes only its shard. `load_params` builds each array with `jax.make_array_from_callback`: a
device's callback reads only the Hugging Face tensors, and the slices of them, that its shard covers.
One rlx array can gather many checkpoint tensors (decoder layers stacked per run, experts after them).

Models do not know meshes: callers pass `shardings`, a function from the abstract state to a sharding
per `nnx.Variable`, e.g. `lambda abstract: rlx.parallel.tree_shardings(abstract, mesh, rules)`.
"""

from __future__ import annotations

import itertools
import math
from functools import partial
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlx.models.config import ModelConfig
from rlx.models.hf import CheckpointError, CheckpointReader, PretrainedModel, TensorMap, tensor_maps
from rlx.models.hf_config import architecture_mismatches, model_config_from_hf, read_hf_config
from rlx.models.mtp import MTPHeads
from rlx.models.qwen3 import Qwen3

ShardingsFor = Callable[[nnx.State], Any]  # abstract state -> a sharding per nnx.Variable (a prefix tree)


def abstract_model(config: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """The graph and the state of `Qwen3(config)` as shapes and dtypes, without computing or allocating."""
    return nnx.split(nnx.eval_shape(lambda: Qwen3(config, rngs=nnx.Rngs(0))))


def init_params(config: ModelConfig, shardings: ShardingsFor, seed: int) -> tuple[nnx.GraphDef, nnx.State]:
    """Random weights of `Qwen3(config, rngs=nnx.Rngs(seed))`, computed under jit onto their shardings."""
    graphdef, abstract = abstract_model(config)

    @partial(jax.jit, out_shardings=shardings(abstract))
    def init() -> nnx.State:
        return nnx.split(Qwen3(config, rngs=nnx.Rngs(seed)))[1]

    return graphdef, init()


def load_params(path: str | Path, config: ModelConfig, shardings: ShardingsFor, seed: int = 0) -> tuple[nnx.GraphDef, nnx.State]:
    """The weights of the Hugging Face checkpoint in `path`, each built from its devices' slices.

    `config` must describe the checkpoint's architecture (`model.init_from` resolution does that);
    weights are cast to `config.param_dtype`. Hugging Face checkpoints hold the trunk only: MTP heads
    (`model.mtp`) start random from `seed`.
    """
    mismatches = architecture_mismatches(config, read_hf_config(path))
    if mismatches:
        raise CheckpointError(f"{path}: the model config does not match the checkpoint: {'; '.join(mismatches)}")
    graphdef, abstract = abstract_model(config)
    maps = tensor_maps(config)
    by_path: dict[tuple, list[TensorMap]] = {}
    for m in maps:
        by_path.setdefault(m.path, []).append(m)
    dtype = np.dtype(jnp.dtype(config.param_dtype))
    with CheckpointReader(path) as reader:
        reader.check(maps)

        def build(key_path, variable: nnx.Variable, sharding: jax.sharding.Sharding) -> nnx.Variable:
            if key_path[0].key == "mtp":
                return variable  # made below
            read = _shard_reader(reader, by_path[tuple(entry.key for entry in key_path)], variable.shape, dtype)
            return variable.replace(jax.make_array_from_callback(variable.shape, sharding, read))

        placement = shardings(abstract)
        state = jax.tree_util.tree_map_with_path(build, abstract, placement, is_leaf=_is_variable)
    if config.mtp.enabled:
        heads = jax.jit(lambda: nnx.state(MTPHeads(config, rngs=nnx.Rngs(seed))), out_shardings=placement["mtp"])
        state["mtp"] = heads()
    return graphdef, state


def create_params(config: ModelConfig, shardings: ShardingsFor, seed: int) -> tuple[nnx.GraphDef, nnx.State]:
    """The starting weights of a run: the checkpoint in `config.init_from`, else random ones from `seed`."""
    if config.init_from is not None:
        return load_params(config.init_from, config, shardings, seed)
    return init_params(config, shardings, seed)


def from_pretrained(path: str | Path, *, dtype: str | None = None) -> PretrainedModel:
    """Loads a local Hugging Face Qwen3 / Qwen3-MoE directory onto the default device; `dtype`
    (float32/bfloat16) overrides the checkpoint's."""
    hf_config = read_hf_config(path)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    one_device = lambda abstract: jax.tree.map(lambda _: device, abstract, is_leaf=_is_variable)
    graphdef, state = load_params(path, model_config_from_hf(hf_config, dtype), one_device)
    return PretrainedModel(nnx.merge(graphdef, state), hf_config)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _shard_reader(reader: CheckpointReader, maps: list[TensorMap], shape: tuple[int, ...], dtype: np.dtype):
    """The `make_array_from_callback` callback of one rlx array: index (one slice per dim) -> that block.

    The leading (stacked) dims pick checkpoint tensors (`TensorMap.index`); the rest slice each of them.
    """
    stacked = len(maps[0].index)
    by_index = {m.index: m for m in maps}
    blocks: dict[tuple, np.ndarray] = {}  # devices holding the same block (replicas) share one read

    def read(index: tuple[slice, ...]) -> np.ndarray:
        bounds = tuple(s.indices(n)[:2] for s, n in zip(index, shape))
        if bounds not in blocks:
            lead, rest = bounds[:stacked], bounds[stacked:]
            block = np.empty([stop - start for start, stop in bounds], dtype)
            for position in itertools.product(*(range(start, stop) for start, stop in lead)):
                at = tuple(p - start for p, (start, _) in zip(position, lead))
                block[at] = _read_tensor_block(reader, by_index[position], shape[stacked:], rest)
            blocks[bounds] = block
        return blocks[bounds]

    return read


def _read_tensor_block(reader: CheckpointReader, m: TensorMap, shape: tuple[int, ...], bounds: tuple[tuple[int, int], ...]) -> np.ndarray:
    """The block `bounds` of one tensor in rlx layout (`shape`), read from its Hugging Face layout.

    A linear weight is `[out, in]` in the checkpoint and `[*in_dims, *out_dims]` in rlx (the
    transpose, with heads split out of one side); each side's slice maps to one range of its
    flattened checkpoint dim (whole trailing dims, then cut: only head_dim-sharded layouts over-read).
    """
    if not m.linear:
        return reader.read(m.hf_name, tuple(slice(start, stop) for start, stop in bounds))
    split = next(j for j in range(1, len(shape)) if math.prod(shape[:j]) == m.hf_shape[1])
    in_range, in_shape, in_cut = _flat_range(bounds[:split], shape[:split])
    out_range, out_shape, out_cut = _flat_range(bounds[split:], shape[split:])
    block = reader.read(m.hf_name, (out_range, in_range)).T.reshape(in_shape + out_shape)
    return block[in_cut + out_cut]


def _flat_range(bounds: tuple[tuple[int, int], ...], dims: tuple[int, ...]) -> tuple[slice, tuple[int, ...], tuple[slice, ...]]:
    """For rlx dims `dims` that one checkpoint dim holds flattened: the range of it covering `bounds` on
    the first dim (whole on the others), the shape of that range unflattened, and the cut of `bounds`."""
    (start, stop), inner = bounds[0], math.prod(dims[1:])
    cut = (slice(None),) + tuple(slice(a, b) for a, b in bounds[1:])
    return slice(start * inner, stop * inner), (stop - start, *dims[1:]), cut
