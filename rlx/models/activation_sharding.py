"""Where activations go on a device mesh, decided by the caller: models only name axes.

Model code calls three hooks; outside any context they do nothing, so the engine, tests
and single-device code run the model unchanged. A role that traces the model under a mesh
(the learner's programs) enters `activation_sharding(hooks)` with hooks built from its mesh
and rules table; `rlx.models` never imports `rlx.parallel`.

* `constrain(x, names)`: place `x` by the logical names of its dims (e.g. `("batch", None, None)`).
* `run_encoder(encode, inputs)`: run a modality encoder on items (e.g. spread over every device).
* `map_rows(fn, *arrays)`: run a kernel XLA cannot partition (Pallas) on each device's block of
  rows (the leading dim of every array) and return its outputs, rows first.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Callable, Iterator, Sequence

import jax

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
class ActivationSharding:
    constrain: Constrain = _no_constraint
    run_encoder: RunEncoder = _encode_in_place
    map_rows: MapRows = _apply


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
