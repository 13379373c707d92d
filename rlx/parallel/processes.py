"""What the processes of a multi-process run share besides the learner's programs.

A multi-process run (`parallel.distributed`) is one SPMD learner over every process's devices
plus one generator replica per process on its own devices. Each process generates whole prompt
groups (`Processes.share` of each step's prompts) and feeds them as its rows of the learner's
batch. Beyond that, processes exchange:

- weights: `local_copy` gathers the learner's weights so each process holds them whole on its
  own devices (what its generator replica samples with; a device collective);
- small host values (metrics, per-record validation results, rollout rows): `Processes.allgather`
  through the `jax.distributed` coordinator's key-value store, each wait bounded by `timeout_s`.

Both are collective: every process makes the same calls in the same order, from one thread
(the learner's). One process (`Processes()`) does no exchange at all.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Mapping, Sequence, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlx.errors import UserError

T = TypeVar("T")


class Processes:
    """This process's place among the run's processes (index 0 is the one that writes the run's outputs)."""

    def __init__(self, index: int = 0, count: int = 1, timeout_s: float = 300.0):
        if not 0 <= index < count:
            raise ValueError(f"process index {index} is outside [0, {count})")
        self.index, self.count, self.timeout_s = index, count, timeout_s
        self._exchanges = 0

    @classmethod
    def current(cls, timeout_s: float = 300.0) -> "Processes":
        return cls(jax.process_index(), jax.process_count(), timeout_s)

    @property
    def primary(self) -> bool:
        return self.index == 0

    def share(self, total: int, what: str) -> int:
        """This process's part of `total` items that split evenly (e.g. a step's prompt groups)."""
        if total % self.count:
            raise UserError(
                f"{what}={total} does not split over {self.count} processes (each generates whole prompt groups); "
                f"use a multiple of {self.count}"
            )
        return total // self.count

    def own_key(self, key: jax.Array) -> jax.Array:
        """`key` made this process's own, so replicas draw their own noise (one process: `key` itself)."""
        return key if self.count == 1 else jax.random.fold_in(key, self.index)

    def part(self, items: Sequence[T]) -> Sequence[T]:
        """This process's contiguous block of `items` (block sizes differ by at most one)."""
        return items[len(items) * self.index // self.count: len(items) * (self.index + 1) // self.count]

    def allgather(self, value: Any) -> list[Any]:
        """Every process's `value` (JSON-serialisable), in process order; waits at most `timeout_s` for each."""
        if self.count == 1:
            return [value]
        from jax._src import distributed  # the coordinator's key-value store, as orbax uses it

        client = distributed.global_state.client
        exchange, self._exchanges = self._exchanges, self._exchanges + 1
        text = json.dumps(value)
        client.key_value_set(_key(exchange, self.index), text)
        values = []
        for process in range(self.count):
            if process == self.index:
                values.append(json.loads(text))
                continue
            try:
                values.append(json.loads(client.blocking_key_value_get(_key(exchange, process), int(self.timeout_s * 1000))))
            except jax.errors.JaxRuntimeError as err:
                raise TimeoutError(
                    f"process {self.index}: process {process} sent nothing for exchange {exchange} within "
                    f"parallel.distributed.timeout_s={self.timeout_s:g} s; it has probably failed (see its log)"
                ) from err
        if exchange:  # every process has posted this exchange, so each has read the previous one
            client.key_value_delete(_key(exchange - 1, self.index))
        return values

    def gather_rows(self, rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every process's `rows` (arrays of per-item values, any item count per process), joined in process order."""
        if self.count == 1:
            return dict(rows)
        parts = self.allgather({name: array.tolist() for name, array in rows.items()})

        def joined(name: str, like: np.ndarray) -> np.ndarray:
            dtype = like.dtype if like.dtype.kind in "biuf" else None  # strings: as long as the longest
            return np.concatenate([np.asarray(part[name], dtype=dtype).reshape(-1, *like.shape[1:]) for part in parts])

        return {name: joined(name, array) for name, array in rows.items()}

    def check_same(self, what: str, value: Any) -> None:
        """Raises (on every process) unless all processes pass the same `value`."""
        values = self.allgather(value)
        if any(v != values[0] for v in values):
            raise ValueError(f"{what} differs between processes: {values} (process order); every process must hold the same")


def _key(exchange: int, process: int) -> str:
    return f"rlx/allgather/{exchange}/{process}"


def local_copy(tree: Any) -> Any:
    """`tree`'s arrays whole on every process: each copy split over this process's own devices of the
    array's mesh (along the largest dim they divide, else replicated). Arrays a process already holds
    whole are returned as they are, so one process returns `tree` itself. A collective."""
    leaves, structure = jax.tree.flatten(tree)
    spanning = [i for i, leaf in enumerate(leaves) if not leaf.is_fully_addressable]
    if not spanning:
        return tree
    targets = [_process_shardings(leaves[i]) for i in spanning]
    copies = jax.device_put([leaves[i] for i in spanning], [across for across, _ in targets], may_alias=False)
    for i, copy, (_, mine) in zip(spanning, copies, targets):
        leaves[i] = jax.make_array_from_single_device_arrays(copy.shape, mine, [shard.data for shard in copy.addressable_shards])
    return jax.tree.unflatten(structure, leaves)


def _process_shardings(array: jax.Array) -> tuple[NamedSharding, NamedSharding]:
    """(whole on every process, split over each process's devices; this process's part of it) for `array`."""
    across, mine = _process_meshes(tuple(sorted(array.sharding.device_set, key=lambda d: (d.process_index, d.id))))
    local = mine.devices.size
    fits = [dim for dim, size in enumerate(array.shape) if size % local == 0]
    spec = [None] * array.ndim
    if fits and local > 1:
        spec[max(fits, key=lambda dim: array.shape[dim])] = "local"
    return NamedSharding(across, PartitionSpec(*spec)), NamedSharding(mine, PartitionSpec(*spec))


@functools.cache
def _process_meshes(devices: tuple[jax.Device, ...]) -> tuple[Mesh, Mesh]:
    """A (processes, local) mesh over `devices` (one row per process) and this process's row as a mesh of its own."""
    rows: dict[int, list[jax.Device]] = {}
    for device in devices:
        rows.setdefault(device.process_index, []).append(device)
    if len({len(row) for row in rows.values()}) != 1:
        raise ValueError(f"the array's devices are spread unevenly over processes: {({p: len(r) for p, r in rows.items()})}")
    grid = np.asarray(list(rows.values()), dtype=object)
    return Mesh(grid, ("processes", "local")), Mesh(np.asarray(rows[jax.process_index()], dtype=object), ("local",))


def check_rows_by_process(rows: NamedSharding, processes: int) -> None:
    """Raises unless `rows` (a learner's row sharding) gives each process one block of rows of its own,
    in process order: what feeding each process's rows (`make_array_from_process_local_data`) needs."""
    probe = rows.mesh.devices.size * processes
    owners = row_owners(rows.devices_indices_map((probe,)), probe)
    block = probe // processes
    if owners != {p: set(range(p * block, (p + 1) * block)) for p in range(processes)}:
        raise UserError(
            f"the learner's rows ({rows.spec}) do not split into one block per process over {processes} processes: the "
            "mesh axes rows split over (`batch` in parallel.learner_rules, e.g. data x fsdp) must be a multiple of the "
            "process count and lead the mesh, with tensor/expert axes inside each process"
        )


def row_owners(index_map: Mapping[Any, tuple[slice, ...]], rows: int) -> dict[int, set[int]]:
    """{process: the row indices its devices hold}, from a sharding's device -> index map over `rows` rows."""
    owners: dict[int, set[int]] = {}
    for device, index in index_map.items():
        owners.setdefault(device.process_index, set()).update(range(*index[0].indices(rows)))
    return owners
