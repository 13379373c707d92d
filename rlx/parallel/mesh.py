"""Meshes over device slices, and moving weights from one slice's sharding to another's."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from rlx.errors import UserError
from rlx.parallel.config import MESH_AXES, MeshConfig, ParallelConfig


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device]) -> Mesh:
    """A mesh with axes (data, fsdp, tensor, expert) over exactly `config.size` devices.

    Devices are laid out row-major, so the last axes (tensor, expert) are neighbours:
    the axes that talk most get the fastest links.
    """
    if len(devices) != config.size:
        raise ValueError(f"mesh {config.shape} needs {config.size} devices, got {len(devices)}")
    grid = np.asarray(devices, dtype=object).reshape(tuple(config.shape[a] for a in MESH_AXES))
    return Mesh(grid, MESH_AXES)


def role_meshes(config: ParallelConfig, devices: Sequence[jax.Device] | None = None) -> tuple[Mesh, Mesh]:
    """(learner mesh, generator mesh): the same devices when colocated, disjoint slices otherwise.

    When `devices` belong to several processes, the learner mesh spans all of them and the
    generator mesh is this process's own replica (`role_devices`).
    """
    devices = list(jax.devices() if devices is None else devices)
    learner, generator = role_devices(config, devices, jax.process_index())
    return make_mesh(config.learner, learner), make_mesh(config.generator, generator)


def role_devices(config: ParallelConfig, devices: Sequence[Any], process: int) -> tuple[list[Any], list[Any]]:
    """The learner's devices and process `process`'s generator devices, from `devices` in JAX's order.

    One process: the first `learner.size` devices, and the generator's on the same ones
    (colocated) or the next `generator.size`. P processes: the learner takes the first
    `learner.size / P` devices of every process, in process order (so its rows split by process),
    and each process's generator replica takes its own share (colocated) or its next
    `generator.size` devices (disaggregated); no generator program ever spans processes.
    """
    processes = sorted({d.process_index for d in devices})
    local = {p: [d for d in devices if d.process_index == p] for p in processes}
    per_process = config.devices_per_process(len(processes))
    share = config.learner.size // len(processes)
    if len(processes) > 1 and config.placement == "colocated" and config.generator.size != share:
        raise UserError(
            f"placement: colocated with {len(processes)} processes runs one generator replica per process on its "
            f"{share} learner devices, but parallel.generator has {config.generator.size} devices; size it {share} "
            "(parallel.generator is per process)"
        )
    short = {p: len(local[p]) for p in processes if len(local[p]) < per_process}
    if short:
        raise UserError(
            f"parallel config needs {per_process} devices per process ({config.placement}: learner {config.learner.shape} over "
            f"{len(processes)} process(es), generator {config.generator.shape} each) but process(es) {sorted(short)} see "
            f"{sorted(set(short.values()))}; shrink parallel.learner / parallel.generator to the devices you have"
        )
    learner = [d for p in processes for d in local[p][:share]]
    first = 0 if config.placement == "colocated" else share
    return learner, local[process][first: first + config.generator.size]


def expand_shardings(shardings: Any, tree: Any) -> Any:
    """One sharding per leaf of `tree`, from a prefix tree (e.g. one per `nnx.Variable`); raises on mismatch."""
    is_sharding = lambda x: isinstance(x, jax.sharding.Sharding)
    return jax.tree.map(lambda s, sub: jax.tree.map(lambda _: s, sub), shardings, tree, is_leaf=is_sharding)


def reshard(tree: Any, shardings: Any) -> Any:
    """Copies `tree` onto `shardings` (e.g. learner slice -> generator slice) within one process.

    `shardings` may be a prefix of `tree`; a structure mismatch raises before anything
    moves. The copy is an explicit `jax.device_put`, so `jax_transfer_guard` allows it. It is
    always a copy, even onto the same sharding: the learner donates its weights to its next
    update while the generator may still sample with the published ones.
    """
    return jax.device_put(tree, expand_shardings(shardings, tree), may_alias=False)


def from_host(tree: Any, shardings: Any) -> Any:
    """Global arrays from host values that every process holds alike (weights loaded on each host).

    Each process fills only its own devices' shards, so this works across hosts, where
    `jax.device_put` onto a mesh with other hosts' devices does not.
    """
    full = expand_shardings(shardings, tree)
    build = lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda index: np.asarray(x)[index])
    return jax.tree.map(build, tree, full)
