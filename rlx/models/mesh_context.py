"""The device mesh and logical-axis rules the caller runs the model under.

Model code names axes (`batch`, `exp`, `embed`, ...); whoever builds the program (the learner,
the engine, the plan) knows the mesh and the rules table and sets them here around tracing:

    with mesh_rules(mesh, rules):
        compiled = jax.jit(step).lower(...).compile()

Layers that place work per device (the MoE layer's expert parallelism) read them at trace
time; without a context they run as on one device. The context is not part of jit's cache
key: trace a function under the context it will run with.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Iterator, Mapping, Sequence

from jax.sharding import Mesh, PartitionSpec


@dataclasses.dataclass(frozen=True)
class MeshRules:
    """A mesh and a logical name -> mesh axes table (as `rlx.parallel.presets.PRESETS` holds)."""

    mesh: Mesh
    rules: Mapping[str, Sequence[str]]

    def axes(self, name: str) -> tuple[str, ...]:
        """The mesh axes (of size > 1) that the rules split logical axis `name` over."""
        return tuple(a for a in self.rules.get(name, ()) if self.mesh.shape.get(a, 1) > 1)

    def size(self, axes: Sequence[str]) -> int:
        ways = 1
        for axis in axes:
            ways *= self.mesh.shape[axis]
        return ways

    def spec(self, *dims: Sequence[str]) -> PartitionSpec:
        """The placement of a tensor whose dims split over the given mesh axes (empty: whole)."""
        return PartitionSpec(*(tuple(axes) if axes else None for axes in dims))


_CURRENT: contextvars.ContextVar[MeshRules | None] = contextvars.ContextVar("rlx_mesh_rules", default=None)


@contextlib.contextmanager
def mesh_rules(mesh: Mesh, rules: Mapping[str, Sequence[str]]) -> Iterator[MeshRules]:
    """Runs the enclosed tracing under `mesh` and `rules`."""
    token = _CURRENT.set(MeshRules(mesh, rules))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)


def current_mesh_rules() -> MeshRules | None:
    """The innermost `mesh_rules` context, or None (single-device semantics)."""
    return _CURRENT.get()
