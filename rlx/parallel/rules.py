"""Turns logical axis names (parameter metadata) into `NamedSharding`s through a rules table."""

from __future__ import annotations

from typing import Any, Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlx.parallel.presets import PRESETS, Rules


class ShardingError(ValueError):
    """A rules table cannot shard a tensor on a mesh; the message names the tensor and axis."""


def rules_for(preset: str) -> Rules:
    if preset not in PRESETS:
        raise ShardingError(f"unknown sharding preset {preset!r}; presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[preset]


def partition_spec(names: Sequence[str | None], shape: Sequence[int], rules: Rules, mesh: Mesh, where: str = "tensor") -> PartitionSpec:
    """The mesh placement of a tensor whose dims carry logical `names`.

    Mesh axes of size 1 are dropped (they change nothing), a mesh axis is used at most once
    per tensor, and every sharded dim must divide evenly.
    """
    used: set[str] = set()
    spec = []
    for dim, (name, size) in enumerate(zip(names, shape)):
        axes = tuple(a for a in rules.get(name, ()) if name is not None and mesh.shape.get(a, 1) > 1)
        clash = used.intersection(axes)
        if clash:
            raise ShardingError(f"{where}: mesh axis {sorted(clash)} would shard two dims (names {tuple(names)}); fix the rules table")
        ways = 1
        for axis in axes:
            ways *= mesh.shape[axis]
        if size % ways:
            raise ShardingError(
                f"{where}: dim {dim} ({name!r}, size {size}) does not split over mesh axes {axes} ({ways} ways); "
                "choose mesh sizes that divide it or a preset that leaves it whole"
            )
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else (axes or None))
    return PartitionSpec(*spec)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def logical_names(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    return variable.get_metadata().get("out_sharding")


def tree_shardings(tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """A sharding for every leaf of `tree` (params, optimizer state, abstract or concrete).

    Leaves inside an `nnx.Variable` follow its logical names; other leaves (step counters,
    scalars, and optimizer state masked off for frozen weights) are replicated. The result is a
    prefix of `tree`, as `jax.jit` accepts it.
    """
    def one(path, leaf):
        if _is_variable(leaf) and logical_names(leaf) is not None and getattr(leaf, "shape", None) is not None:
            names = logical_names(leaf)
            return NamedSharding(mesh, partition_spec(names, leaf.shape, rules, mesh, jax.tree_util.keystr(path)))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(one, tree, is_leaf=_is_variable)


def batch_sharding(mesh: Mesh, rules: Rules, shape: Sequence[int], where: str = "batch") -> NamedSharding:
    """Rows (the leading dim) over the preset's `batch` axes; scalars replicated."""
    if not shape:
        return NamedSharding(mesh, PartitionSpec())
    return NamedSharding(mesh, partition_spec(("batch",) + (None,) * (len(shape) - 1), shape, rules, mesh, where))


def spec_table(tree: Any, mesh: Mesh, rules: Rules) -> dict[str, list]:
    """{parameter path: mesh axes per dim}: the readable form golden files and plans print."""
    table = {}
    shardings = tree_shardings(tree, mesh, rules)
    flat, _ = jax.tree_util.tree_flatten_with_path(shardings)
    for path, sharding in flat:
        spec = list(sharding.spec)
        table[jax.tree_util.keystr(path)] = [list(s) if isinstance(s, tuple) else s for s in spec]
    return table
