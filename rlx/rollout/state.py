"""What the engine's programs pass around (prefixes, decode state, result tokens, weights) and where it lives.

Decode slots are rows: every per-slot array (and the KV cache's slot dim) is split over the
generator mesh's data-parallel axes (the rules' `batch`), so each data-parallel replica
decodes its own slots; the cache's kv heads go over `tensor` like the attention weights.
Weights follow the rules table by their logical names. Nothing here allocates.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from rlx.models import KVCache, ModelConfig
from rlx.models.kv_cache import CACHE_AXES
from rlx.parallel import Layout, expand_shardings, partition_spec


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DraftContext:
    """What the MTP head needs per row (slot or prefilled prompt) for its next draft (`rlx.rollout.speculative`)."""

    hidden: jax.Array  # [rows, 2, D] the trunk's hidden states at the two columns before the next token
    token: jax.Array  # [rows] the token at the column before the next token
    pending: jax.Array  # [rows] a token already drawn (a resampled one) that the next forward emits
    pending_log_prob: jax.Array  # [rows] its behaviour log-prob
    has_pending: jax.Array  # [rows] bool


    @classmethod
    def zeros(cls, rows: int, hidden_size: int, dtype: jnp.dtype) -> "DraftContext":
        """No context yet (free slots: `insert` fills a slot's from its prefix)."""
        zeros = lambda dtype, *dims: jnp.zeros((rows, *dims), dtype)
        return cls(zeros(dtype, 2, hidden_size), zeros(jnp.int32), zeros(jnp.int32), zeros(jnp.float32), zeros(bool))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Prefix:
    """Prefilled prompts: cache rows `[layers, N, bucket, ...]`, first real column, next-token logits,
    and (when the engine records routes) the experts each prompt token went to."""

    cache: KVCache
    start: jax.Array  # [N]
    logits: jax.Array  # [N, V]
    routes: jax.Array | None = None  # [N, bucket, moe_layers, k] int32, -1 on padding columns
    draft: DraftContext | None = None  # the MTP head's context (speculative engines)


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
    draft: DraftContext | None = None  # the MTP head's context per slot (speculative engines)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ResultTokens:
    """One `generate` call's output, laid out as JetStream's ResultTokens (one array, column ranges).

    `data [slots, 2k + 1]` holds k tokens, k validity flags and the slot's length so far;
    `log_probs [slots, k]` are the behaviour log-probs of those tokens; `routes [slots, k, moe_layers,
    top_k]` (when the engine records routes) the experts each token went to when it was fed back.
    """

    data: jax.Array | np.ndarray
    log_probs: jax.Array | np.ndarray
    tokens_idx: tuple[int, int] = dataclasses.field(metadata=dict(static=True))
    valid_idx: tuple[int, int] = dataclasses.field(metadata=dict(static=True))
    length_idx: tuple[int, int] = dataclasses.field(metadata=dict(static=True))
    samples_per_slot: int = dataclasses.field(default=1, metadata=dict(static=True))
    routes: jax.Array | np.ndarray | None = None
    # Speculative decoding: token columns come in pairs (the forward's token, then its draft if kept); an
    # invalid draft column is a rejected draft, not a full row.
    drafts: bool = dataclasses.field(default=False, metadata=dict(static=True))
    draft_kl: jax.Array | np.ndarray | None = None  # [slots, forwards] log q(d) - log p(d) of each forward's draft d (speculative)
    # [slots] int32, one value: the forwards the call ran (`rlx.rollout.forward_loop`); token columns past them are invalid
    forwards: jax.Array | np.ndarray | None = None

    def copy_to_host_async(self) -> None:
        for array in (self.data, self.log_probs, self.routes, self.draft_kl, self.forwards):
            if isinstance(array, jax.Array):
                array.copy_to_host_async()

    def convert_to_numpy(self) -> "ResultTokens":
        host = lambda array: None if array is None else np.asarray(array)
        return dataclasses.replace(self, data=np.asarray(self.data), log_probs=np.asarray(self.log_probs), routes=host(self.routes),
                                   draft_kl=host(self.draft_kl), forwards=host(self.forwards))

    @property
    def columns_run(self) -> int:
        """Token columns of the forwards the call ran (all of them when it does not say)."""
        columns = self.tokens_idx[1] - self.tokens_idx[0]
        return columns if self.forwards is None else int(self.forwards[0]) * (2 if self.drafts else 1)

    @property
    def tokens(self) -> np.ndarray:
        return np.asarray(self.data[:, self.tokens_idx[0]:self.tokens_idx[1]])

    @property
    def valid(self) -> np.ndarray:
        return np.asarray(self.data[:, self.valid_idx[0]:self.valid_idx[1]]).astype(bool)


@dataclasses.dataclass(frozen=True)
class EngineLayout:
    """The engine's arrays on the generator's mesh: `role` places weights and rows (`rlx.parallel.Layout`),
    and the KV cache goes slots over the row axes, kv heads over `tensor`."""

    role: Layout
    params: Any  # a prefix of the weights tree
    cache: NamedSharding
    record_routes: bool = False  # prefixes carry their prompt tokens' routes
    drafts: bool = False  # prefixes and decode states carry the MTP head's draft context

    @classmethod
    def build(cls, role: Layout, params: Any, config: ModelConfig, slots: int, max_len: int, record_routes: bool = False,
              drafts: bool = False) -> "EngineLayout":
        """`config` sizes the KV cache (with the MTP layer for a speculative engine)."""
        role.check_rows(slots, "decode slots (rollout.max_concurrent_decodes)")
        cache = partition_spec(CACHE_AXES, KVCache.shape(config, slots, max_len), role.rules, role.mesh, "kv cache")
        return cls(role, role.weights(params), NamedSharding(role.mesh, cache), record_routes, drafts)

    @property
    def rows(self) -> NamedSharding:
        return self.role.rows

    @property
    def replicated(self) -> NamedSharding:
        return self.role.replicated

    def prefix(self) -> Prefix:
        return Prefix(KVCache(self.cache, self.cache), self.rows, self.rows, self.rows if self.record_routes else None, self._draft())

    def state(self) -> DecodeState:
        rows, replicated = self.rows, self.replicated
        return DecodeState(KVCache(self.cache, self.cache), rows, rows, rows, rows, rows, replicated, replicated, self._draft())

    def _draft(self) -> DraftContext | None:
        return DraftContext(*(self.rows,) * len(dataclasses.fields(DraftContext))) if self.drafts else None


def abstract(tree: Any, shardings: Any) -> Any:
    """`tree` (arrays or shapes) as `ShapeDtypeStruct`s placed on `shardings` (a prefix of `tree`)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, expand_shardings(shardings, tree))


def check_same_structure(reference: Any, candidate: Any) -> None:
    """Raises ValueError naming the first leaf whose path, shape or dtype differs from `reference`."""
    ref_leaves, ref_tree = jax.tree_util.tree_flatten_with_path(reference)
    new_leaves, new_tree = jax.tree_util.tree_flatten_with_path(candidate)
    if ref_tree != new_tree:
        ref_paths = [jax.tree_util.keystr(path) for path, _ in ref_leaves]
        new_paths = [jax.tree_util.keystr(path) for path, _ in new_leaves]
        first = next((f"{a} vs {b}" for a, b in zip(ref_paths, new_paths) if a != b), f"{len(ref_paths)} vs {len(new_paths)} leaves")
        raise ValueError(f"new weights have a different tree structure than the engine's (first difference: {first})")
    for (path, ref), (_, new) in zip(ref_leaves, new_leaves):
        if tuple(ref.shape) != tuple(new.shape) or jnp.dtype(ref.dtype) != jnp.dtype(new.dtype):
            raise ValueError(
                f"new weights leaf {jax.tree_util.keystr(path)} is {jnp.dtype(new.dtype).name}{list(new.shape)}, "
                f"the engine was built for {jnp.dtype(ref.dtype).name}{list(ref.shape)}; "
                "weights can only be replaced by weights of the same architecture and dtype (publish them through Engine.publish)"
            )
