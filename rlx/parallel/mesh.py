"""Meshes over device slices, and moving weights from one slice's sharding to another's."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

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
    """(learner mesh, generator mesh): the same devices when colocated, disjoint slices otherwise."""
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) < config.num_devices:
        raise ValueError(
            f"parallel config needs {config.num_devices} devices ({config.placement}: learner {config.learner.shape}, "
            f"generator {config.generator.shape}) but {len(devices)} are visible"
        )
    learner = make_mesh(config.learner, devices[: config.learner.size])
    if config.placement == "colocated":
        return learner, make_mesh(config.generator, devices[: config.generator.size])
    generator_devices = devices[config.learner.size : config.learner.size + config.generator.size]
    return learner, make_mesh(config.generator, generator_devices)


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
