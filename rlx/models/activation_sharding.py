"""Where activations and per-device work go on a device mesh, decided by the caller: models only name axes.

Model code calls these hooks; outside any context they do nothing, so tests and single-device
code run the model unchanged. A role that traces the model under a mesh (the learner's programs,
the engine's, the plan) enters `activation_sharding(hooks)` with hooks built from its mesh and
rules table (`rlx.parallel.Layout.hooks()`); `rlx.models` never imports `rlx.parallel`.

* `constrain(x, names)`: place `x` by the logical names of its dims (e.g. `("batch", None, None)`).
* `run_encoder(encode, inputs)`: run a modality encoder on items (e.g. spread over every device).
* `map_rows(fn, *arrays)`: run a kernel XLA cannot partition (Pallas) on each device's block of
  rows (the leading dim of every array) and return its outputs, rows first.
* `current_mesh_rules()`: the mesh and rules themselves, for layers that split their own work
  per device in `shard_map` (the MoE layer's expert parallelism).

The context is not part of jit's cache key: trace a function under the context it will run with.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Callable, Iterator, Mapping, Sequence

import jax
from jax.sharding import Mesh, PartitionSpec

Constrain = Callable[[jax.Array, Sequence[str | None]], jax.Array]
RunEncoder = Callable[[Callable[[jax.Array], jax.Array], jax.Array], jax.Array]
MapRows = Callable[..., jax.Array]


def _no_constraint(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    return x


def _encode_in_place(encode: Callable[[jax.Array], jax.Array], inputs: jax.Array) -> jax.Array:
    return encode(inputs)


def _apply(fn: Callable[..., jax.Array], *arrays: jax.Array) -> jax.Array:
    return fn(*arrays)


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


@dataclasses.dataclass(frozen=True)
class ActivationSharding:
    constrain: Constrain = _no_constraint
    run_encoder: RunEncoder = _encode_in_place
    map_rows: MapRows = _apply
    mesh_rules: MeshRules | None = None


_ACTIVE: contextvars.ContextVar[ActivationSharding] = contextvars.ContextVar("activation_sharding", default=ActivationSharding())


@contextlib.contextmanager
def activation_sharding(hooks: ActivationSharding) -> Iterator[None]:
    """Model code traced inside this block places its activations with `hooks`."""
    token = _ACTIVE.set(hooks)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    return _ACTIVE.get().constrain(x, names)


def run_encoder(encode: Callable[[jax.Array], jax.Array], inputs: jax.Array) -> jax.Array:
    return _ACTIVE.get().run_encoder(encode, inputs)


def map_rows(fn: Callable[..., jax.Array], *arrays: jax.Array) -> jax.Array:
    return _ACTIVE.get().map_rows(fn, *arrays)


def current_mesh_rules() -> MeshRules | None:
    """The mesh and rules of the innermost context, or None (single-device semantics)."""
    return _ACTIVE.get().mesh_rules


@contextlib.contextmanager
def mesh_rules(mesh: Mesh, rules: Mapping[str, Sequence[str]]) -> Iterator[MeshRules]:
    """Traces the enclosed code under `mesh` and `rules` with no other hooks (layers that split their own work)."""
    placement = MeshRules(mesh, rules)
    with activation_sharding(ActivationSharding(mesh_rules=placement)):
        yield placement
