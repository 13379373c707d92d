"""What the engine's programs pass around (prefixes, decode state, result tokens) and where it lives.

Decode slots are rows: every per-slot array (and the KV cache's slot dim) is split over the
generator mesh's data-parallel axes (the rules' `batch`), so each data-parallel replica
decodes its own slots; the cache's kv heads go over `tensor` like the attention weights.
Weights follow the rules table by their logical names. Nothing here allocates.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlx.models import KVCache, ModelConfig
from rlx.models.kv_cache import CACHE_AXES
from rlx.parallel import expand_shardings, partition_spec, tree_shardings
from rlx.parallel.config import MESH_AXES
from rlx.parallel.presets import Rules


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Prefix:
    """Prefilled prompts: cache rows `[layers, N, bucket, ...]`, first real column, next-token logits."""

    cache: KVCache
    start: jax.Array  # [N]
    logits: jax.Array  # [N, V]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeState:
    cache: KVCache  # [layers, slots, max_len, kv_heads, head_dim]
    start: jax.Array  # [slots] first real column of the slot's prompt
    index: jax.Array  # [slots] column the next sampled token is written to
    logits: jax.Array  # [slots, V] next-token logits
    generated: jax.Array  # [slots] tokens emitted since insert
    done: jax.Array  # [slots] bool: a stop token was emitted or the row is full
    key: jax.Array
    step: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ResultTokens:
    """One `generate` call's output, laid out as JetStream's ResultTokens (one array, column ranges).

    `data [slots, 2k + 1]` holds k tokens, k validity flags and the slot's length so far;
    `log_probs [slots, k]` are the behaviour log-probs of those tokens.
    """

    data: jax.Array | np.ndarray
    log_probs: jax.Array | np.ndarray
    tokens_idx: tuple[int, int] = dataclasses.field(metadata=dict(static=True))
    valid_idx: tuple[int, int] = dataclasses.field(metadata=dict(static=True))
    length_idx: tuple[int, int] = dataclasses.field(metadata=dict(static=True))
    samples_per_slot: int = dataclasses.field(default=1, metadata=dict(static=True))

    def copy_to_host_async(self) -> None:
        for array in (self.data, self.log_probs):
            if isinstance(array, jax.Array):
                array.copy_to_host_async()

    def convert_to_numpy(self) -> "ResultTokens":
        return dataclasses.replace(self, data=np.asarray(self.data), log_probs=np.asarray(self.log_probs))

    @property
    def tokens(self) -> np.ndarray:
        return np.asarray(self.data[:, self.tokens_idx[0]:self.tokens_idx[1]])

    @property
    def valid(self) -> np.ndarray:
        return np.asarray(self.data[:, self.valid_idx[0]:self.valid_idx[1]]).astype(bool)


def single_device_mesh() -> Mesh:
    """The mesh an engine runs on when given none: the first device, under every generator axis name."""
    return Mesh(np.array(jax.devices()[:1]).reshape((1,) * len(MESH_AXES)), MESH_AXES)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Shardings of the engine's arrays on `mesh` under `rules`; `row_ways` is how many ways rows split."""

    mesh: Mesh
    params: Any  # a prefix of the weights tree
    cache: NamedSharding
    rows: NamedSharding  # leading dim over the batch axes, the rest whole
    replicated: NamedSharding
    row_ways: int

    @classmethod
    def build(cls, mesh: Mesh, rules: Rules, params: Any, config: ModelConfig, slots: int, max_len: int) -> "Layout":
        rows = partition_spec(("batch",), (slots,), rules, mesh, "decode slots (rollout.max_concurrent_decodes)")
        cache = partition_spec(CACHE_AXES, KVCache.shape(config, slots, max_len), rules, mesh, "kv cache")
        ways = int(np.prod([mesh.shape[axis] for axis in _axes(rows[0])]))
        return cls(mesh, tree_shardings(params, mesh, rules), NamedSharding(mesh, cache), NamedSharding(mesh, rows),
                   NamedSharding(mesh, PartitionSpec()), ways)

    def prefix(self) -> Prefix:
        return Prefix(KVCache(self.cache, self.cache), self.rows, self.rows)

    def state(self) -> DecodeState:
        rows, replicated = self.rows, self.replicated
        return DecodeState(KVCache(self.cache, self.cache), rows, rows, rows, rows, rows, replicated, replicated)


def _axes(entry: str | tuple[str, ...] | None) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def abstract(tree: Any, shardings: Any) -> Any:
    """`tree` (arrays or shapes) as `ShapeDtypeStruct`s placed on `shardings` (a prefix of `tree`)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, expand_shardings(shardings, tree))
