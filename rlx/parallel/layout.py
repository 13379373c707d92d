"""One role's placement: its mesh and rules table, and what follows from them for weights and rows.

Rows (the leading dim of a batch, and of every activation) split over the mesh axes the rules
give the logical name `batch` (e.g. `data` x `fsdp`); weights follow their logical names.
`feed` puts host rows onto the row sharding, each process giving only its own rows
(`jax.make_array_from_process_local_data`), so the same call serves one host and many.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlx.models.activation_sharding import ActivationSharding, MeshRules
from rlx.parallel.config import MESH_AXES
from rlx.parallel.modality import encode_data_parallel
from rlx.parallel.presets import Rules
from rlx.parallel.rules import partition_spec, tree_shardings


@dataclasses.dataclass(frozen=True, eq=False)
class Layout:
    mesh: Mesh
    rules: Rules

    @classmethod
    def single_device(cls, rules: Rules, device: jax.Device | None = None) -> "Layout":
        """Every mesh axis of size 1 on one device (default: the first)."""
        device = jax.devices()[0] if device is None else device
        return cls(Mesh(np.asarray([device], dtype=object).reshape((1,) * len(MESH_AXES)), MESH_AXES), rules)

    def axes(self, name: str) -> tuple[str, ...]:
        """Mesh axes (of size > 1) that the logical name `name` splits over."""
        return tuple(a for a in self.rules.get(name, ()) if self.mesh.shape.get(a, 1) > 1)

    @cached_property
    def row_axes(self) -> tuple[str, ...]:
        return self.axes("batch")

    @cached_property
    def row_ways(self) -> int:
        return int(np.prod([self.mesh.shape[a] for a in self.row_axes], dtype=int))

    @cached_property
    def rows(self) -> NamedSharding:
        """Rows split over the `batch` axes, all other dims whole: a prefix sharding for any row-major tree."""
        return NamedSharding(self.mesh, PartitionSpec(self.row_axes or None))

    @cached_property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def weights(self, tree: Any) -> Any:
        """Shardings of weights (or optimizer state) by their logical names; a prefix of `tree`."""
        return tree_shardings(tree, self.mesh, self.rules)

    def check_rows(self, rows: int, what: str) -> None:
        if rows % self.row_ways:
            raise ValueError(
                f"{what}: {rows} rows do not split over the mesh's data-parallel axes {self.row_axes} "
                f"({self.row_ways} ways); use a row count that is a multiple of {self.row_ways}"
            )

    def feed(self, tree: Any) -> Any:
        """`tree`'s rows on the row sharding. Host arrays hold this process's rows; device arrays move by `device_put`."""
        def place(x):
            if isinstance(x, jax.Array):
                return x if x.sharding == self.rows else jax.device_put(x, self.rows)
            return jax.make_array_from_process_local_data(self.rows, np.asarray(x))

        for leaf in jax.tree.leaves(tree):
            self.check_rows(np.shape(leaf)[0] * jax.process_count(), "batch")
        return jax.tree.map(place, tree)

    def constrain(self, x: jax.Array, names: Sequence[str | None]) -> jax.Array:
        """`x` placed by the logical names of its dims (inside `jax.jit`)."""
        spec = partition_spec(names, x.shape, self.rules, self.mesh, f"activation {tuple(names)}")
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

    def constrain_rows(self, tree: Any) -> Any:
        return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, self.rows), tree)

    def encode(self, encode: Callable[[jax.Array], jax.Array], inputs: jax.Array) -> jax.Array:
        """A modality encoder over every device of the mesh, features back in the row layout."""
        return encode_data_parallel(encode, inputs, self.mesh, self.rules)

    def hooks(self) -> ActivationSharding:
        """What model code traced for this layout places by (`rlx.models.activation_sharding`)."""
        return ActivationSharding(self.constrain, self.encode, self.map_rows, MeshRules(self.mesh, self.rules))

    def map_rows(self, fn: Callable[..., jax.Array], *arrays: jax.Array) -> jax.Array:
        """`fn` on each device's block of rows (a Pallas kernel XLA cannot partition); rows first in and out."""
        if not self.row_axes:
            return fn(*arrays)
        spec = PartitionSpec(self.row_axes)
        return jax.shard_map(fn, mesh=self.mesh, in_specs=(spec,) * len(arrays), out_specs=spec, check_vma=False)(*arrays)
