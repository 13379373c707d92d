"""A generation engine with JetStream's Engine API: `prefill`, `insert`, `generate` over decode slots.

Each of `max_concurrent_decodes` slots holds one sequence's KV cache row. A prompt is
prefilled into a length bucket (left-padded, so its last token sits at the bucket's end),
inserted into a free slot, and then every `generate` call advances every slot by
`steps_per_generate` tokens: sample from the slot's next-token logits (`rlx.rollout.sampling`),
record the behaviour log-prob, feed the token back. Slots sit at different lengths, so the
cache is written at one column per row.

Lean programs: prefill computes logits only at each row's last column; decode attention reads
only the first `kv_len` cache columns, one compiled variant per power-of-two length bucket,
chosen on the host from the longest live slot (`generate(..., columns=)`); `recompute` runs
in column chunks written in place, with logits only at each slot's last token; `extend` appends
tokens (a multi-turn observation) to some slots at their own columns, onto the cache they hold,
one compiled variant per power-of-two length bucket, in the same column chunks. The KV cache
and the weights (`publish`) are in the model's compute dtype.

Sharding (`rlx.rollout.state.EngineLayout`): every program has explicit in/out shardings on the
generator mesh; slots split over its data-parallel axes, and model code is traced under the
mesh's placement hooks (`rlx.models.activation_sharding`). The decode state (KV cache included)
is made once, inside jit, and handed from session to session (`decode_state` / `release`).
`programs()` returns the jitted programs with abstract arguments for the dry-run plan.

Rollout routing replay (R3): with `record_routes`, prefill and decode also return the experts
each MoE layer's router chose for every token (int32 `[tokens, moe_layers, k]`): prompt tokens'
in the `Prefix`, each generated token's (from the decode step that feeds it back) in the
`ResultTokens` of its generate call, so they reach the host with the step's tokens, never one
transfer per token. `recompute` records nothing: a token keeps the routes chosen when it was
sampled (see `rlx.rollout.driver`).

Weights are an argument of every jitted function (never baked in); `load_params` checks a
replacement has the tree structure, shapes and dtypes the programs were compiled for.
The engine imports nothing from JetStream: `rlx.rollout.jetstream_compat` adapts it.

`speculative` (a `rlx.rollout.speculative.Speculation`): each decode forward also makes a draft with the MTP head
and keeps it by exact rejection sampling (`lossless`: sampled exactly as without drafting) or when the confidence
head rates it high enough (`confidence`, PIPO: kept drafts record their draft log-prob): 1 to 2 tokens per forward.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlx.models import KVCache, ModelConfig
from rlx.models.activation_sharding import ActivationSharding, activation_sharding
from rlx.parallel import Layout, reshard, rules_for
from rlx.parallel.presets import Rules
from rlx.rollout.forward_loop import run_forwards
from rlx.rollout.sampling import SamplingParams, sample_tokens, token_log_probs
from rlx.rollout.speculative import (Speculation, cache_config, drafts, prefill_context, refresh_mtp_chunk, refreshed_context,
                                     speculative_generate)
from rlx.rollout.state import DecodeState, DraftContext, EngineLayout, Prefix, ResultTokens, abstract, check_same_structure

MIN_BUCKET = 8
RECOMPUTE_COLUMNS = 256  # cache columns per chunk of `recompute`
FLOAT32_MODULES = ("vision", "audio")  # encoders compute in float32 whatever the decoder's dtype


def prefill_buckets(max_length: int) -> tuple[int, ...]:
    """Powers of two from MIN_BUCKET below `max_length`, then `max_length` itself (prompt and kv lengths)."""
    buckets, size = [], MIN_BUCKET
    while size < max_length:
        buckets.append(size)
        size *= 2
    return (*buckets, max_length)


def _padded_count(count: int, limit: int, multiple: int = 1) -> int:
    """Next power of two >= count (at most `limit`), rounded up to `multiple`: batch sizes of jitted calls stay a few."""
    count = min(1 << max(count - 1, 0).bit_length(), max(limit, count))
    return -(-count // multiple) * multiple


def stack_media(media: Sequence[dict[str, np.ndarray]] | None, rows: int) -> dict[str, np.ndarray] | None:
    """Per-prompt encoder inputs stacked into `rows` rows (zeros for padding rows); None for text."""
    if not media:
        return None
    stacked = {}
    for name in media[0]:
        array = np.zeros((rows, *media[0][name].shape), np.float32)
        array[: len(media)] = [item[name] for item in media]
        stacked[name] = array
    return stacked


def _is_abstract(tree: Any) -> bool:
    return all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(tree))


def _jit_under(hooks: ActivationSharding, fn: Callable, **jit_kwargs: Any) -> Callable:
    """`jax.jit(fn)` whose model code is traced under the generator's placement hooks (e.g. MoE expert parallelism)."""
    @functools.wraps(fn)
    def traced(*args):
        with activation_sharding(hooks):
            return fn(*args)
    return jax.jit(traced, **jit_kwargs)


class Engine:
    """JetStream Engine API over an NNX model (see the module docstring).

    `params` may be concrete (published at once) or abstract (`ShapeDtypeStruct`s: nothing is
    allocated, for `programs()`). `mesh` is the generator mesh (default: one device) and `rules`
    its sharding rules (default: the `serve_tp` preset).
    """

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        params: nnx.State,
        model_config: ModelConfig,
        *,
        max_concurrent_decodes: int,
        max_prefill_length: int,
        max_decode_length: int,
        stop_tokens: Sequence[int],
        pad_id: int = 0,
        steps_per_generate: int = 1,
        tokenizer: Any = None,
        mesh: jax.sharding.Mesh | None = None,
        rules: Rules | None = None,
        record_routes: bool = False,
        speculative: Speculation | None = None,
    ):
        if speculative is not None and (not model_config.mtp.enabled or record_routes):
            raise ValueError("speculative decoding drafts with the model's MTP head and records no routes: it needs model.mtp.enabled")
        if record_routes and not model_config.moe_layers:
            raise ValueError("record_routes records the experts of MoE layers, but this model has none (model.num_experts: 0)")
        if max_prefill_length + max_decode_length > model_config.max_seq_len:
            raise ValueError(
                f"max_prefill_length ({max_prefill_length}) + max_decode_length ({max_decode_length}) exceeds "
                f"model.max_seq_len ({model_config.max_seq_len}); shorten them or raise model.max_seq_len"
            )
        self._graphdef = graphdef
        self.model_config = model_config
        self._slots = max_concurrent_decodes
        self._max_prefill = max_prefill_length
        self.max_len = max_prefill_length + max_decode_length
        self.stop_tokens = tuple(int(t) for t in stop_tokens)
        self.pad_id = pad_id
        self.steps_per_generate = steps_per_generate
        self.buckets = prefill_buckets(max_prefill_length)
        self.kv_buckets = prefill_buckets(self.max_len)
        self._recompute_columns = min(RECOMPUTE_COLUMNS, self.max_len)
        self.tokenizer = tokenizer
        self.speculative = speculative
        self._cache_config = cache_config(model_config) if speculative is not None else model_config
        # (moe_layers, k) of the routes each token's record holds; None when not recording.
        self.route_shape = (model_config.moe_layers, model_config.num_experts_per_tok) if record_routes else None
        rules = rules_for("serve_tp") if rules is None else rules
        role = Layout.single_device(rules) if mesh is None else Layout(mesh, rules)
        self._layout = layout = EngineLayout.build(role, params, self._cache_config, max_concurrent_decodes, self.max_len, record_routes,
                                                   speculative is not None)
        self._abstract_params = abstract(jax.eval_shape(self._cast_impl, params), layout.params)
        self._cast = jax.jit(self._cast_impl)
        state, prefix = layout.state(), layout.prefix()
        jit = functools.partial(_jit_under, role.hooks())
        self._prefill = jit(self._prefill_impl, in_shardings=(layout.params, layout.rows, layout.rows, layout.rows), out_shardings=prefix)
        self._insert = jit(self._insert_impl, in_shardings=(prefix, state, layout.replicated, layout.replicated),
                           out_shardings=state, donate_argnums=(1,))
        self._generate = {
            kv_len: jit(functools.partial(self._generate_impl, kv_len=kv_len), static_argnums=(2,),
                        in_shardings=(layout.params, state, layout.replicated), out_shardings=(state, layout.rows), donate_argnums=(1,))
            for kv_len in self.kv_buckets
        }
        self._recompute = jit(self._recompute_impl, in_shardings=(layout.params, state, layout.rows, layout.rows),
                              out_shardings=state, donate_argnums=(1,))
        self._extend = jit(self._extend_impl, in_shardings=(layout.params, state, layout.rows, layout.rows, layout.rows),
                           out_shardings=state, donate_argnums=(1,))
        self._new_state = jit(self._new_state_impl, in_shardings=(layout.replicated,), out_shardings=state)
        self._reset = jit(self._reset_impl, in_shardings=(state, layout.replicated), out_shardings=state, donate_argnums=(0,))
        self._score = jit(self._score_impl, static_argnums=(3, 4))
        self._free_states: list[DecodeState] = []
        self._states_lock = threading.Lock()
        self._params = None if _is_abstract(params) else self.publish(params)

    # -- JetStream Engine API: properties ---------------------------------------------------------
    @property
    def max_concurrent_decodes(self) -> int:
        return self._slots

    @property
    def max_prefill_length(self) -> int:
        return self._max_prefill

    @property
    def samples_per_slot(self) -> int:
        return 1

    @property
    def columns_per_generate(self) -> int:
        """The most cache columns a slot advances in one `generate` call (two per forward when drafting)."""
        return self.steps_per_generate * (1 if self.speculative is None else 2)

    @property
    def mesh(self) -> jax.sharding.Mesh:
        return self._layout.role.mesh

    @property
    def colocated_cpus(self) -> None:
        return None  # prefixes move device to device; no host staging

    def get_prefix_destination_sharding(self) -> Prefix:
        return self._layout.prefix()

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def free_resource(self, slot: int) -> None:
        """Slots own cache rows that `insert` overwrites, so a finished slot holds nothing to release."""
        del slot

    # -- weights ----------------------------------------------------------------------------------
    def load_params(self, params: nnx.State | None = None) -> nnx.State:
        """Returns the weights to pass to `prefill`/`generate`: the engine's own, or `params` once checked."""
        if params is None:
            if self._params is None:
                raise ValueError("this engine was built from abstract weights (for programs()); publish real ones first")
            return self._params
        check_same_structure(self._abstract_params, params)
        return params

    def publish(self, params: nnx.State) -> nnx.State:
        """`params` (e.g. the learner's float32 master weights, on any devices) as this engine's weights:
        cast to the compute dtype where they live (half the bytes to move when it is bfloat16), then
        copied onto the generator's shardings. Always a copy: the learner may donate its own."""
        return reshard(self._cast(params), self._layout.params)

    def _cast_impl(self, params: nnx.State) -> nnx.State:
        dtype = jnp.dtype(self.model_config.dtype)

        def cast(path, leaf):
            encoder = getattr(path[0], "key", None) in FLOAT32_MODULES
            return leaf if encoder or not jnp.issubdtype(leaf.dtype, jnp.floating) else leaf.astype(dtype)

        return jax.tree_util.tree_map_with_path(cast, params)

    # -- prefill ----------------------------------------------------------------------------------
    def prefill(self, *, params: nnx.State, existing_prefix: Prefix | None = None, padded_tokens: Any, true_length: int) -> Prefix:
        """JetStream's single-sequence prefill: `padded_tokens` is right-padded, `true_length` real tokens."""
        if existing_prefix is not None:
            raise ValueError("rlx's engine prefills whole prompts; prefix caching (existing_prefix) is not supported")
        return self.prefill_batch(params, [np.asarray(padded_tokens)[:true_length]])

    def prefill_batch(self, params: nnx.State, prompts: Sequence[np.ndarray], media: Sequence[dict[str, np.ndarray]] | None = None) -> Prefix:
        """Prefills prompts (each at most `max_prefill_length` tokens) together, padded to one bucket.

        `media` holds each prompt's encoder inputs (see `rlx.models.multimodal.Media`): the
        encoders run here, in prefill, and their outputs fill the placeholder columns.
        """
        for prompt in prompts:
            if len(prompt) == 0:
                raise ValueError("empty prompt: a prompt needs at least one token (e.g. BOS)")
            if len(prompt) > self._max_prefill:
                raise ValueError(f"prompt of {len(prompt)} tokens exceeds max_prefill_length={self._max_prefill}")
        bucket = next(b for b in self.buckets if b >= max(len(p) for p in prompts))
        rows = _padded_count(len(prompts), self._slots, self._layout.role.row_ways)
        tokens = np.full((rows, bucket), self.pad_id, np.int32)
        start = np.full((rows,), bucket - 1, np.int32)  # padding rows: one pad token
        for row, prompt in enumerate(prompts):
            tokens[row, bucket - len(prompt):] = prompt
            start[row] = bucket - len(prompt)
        return self._prefill(params, tokens, start, stack_media(media, rows))

    def _prefill_impl(self, params, tokens, start, media):
        model = nnx.merge(self._graphdef, params)
        cache = KVCache.zeros(self._cache_config, *tokens.shape)
        hidden, cache, routes = model.hidden_states_and_routes(tokens, start=start, cache=cache, cache_index=0, media=media)
        logits = model.logits(hidden[:, -1])  # left-padded: the last column is every row's last token
        if self.speculative is not None:
            context, cache = prefill_context(model, hidden, tokens, start, cache)
            return Prefix(cache, start, logits, draft=context)
        if self.route_shape is None:
            return Prefix(cache, start, logits)
        padding = jnp.arange(tokens.shape[1])[None, :] < start[:, None]
        return Prefix(cache, start, logits, jnp.where(padding[:, :, None, None], -1, routes))

    # -- decode state and insert ------------------------------------------------------------------
    def decode_state(self, key: jax.Array | None = None) -> DecodeState:
        """A decode state with every slot free: the engine's one (made once, inside jit, on its
        shardings) when no session holds it, a second one only while two sessions run at once.
        Hand it back with `release` when done."""
        with self._states_lock:
            state = self._free_states.pop() if self._free_states else None
        key = jax.random.key(0) if key is None else key
        if state is None or state.cache.k.is_deleted():  # a session that failed mid-call may hand back donated buffers
            return self._new_state(key)
        return self._reset(state, key)

    def release(self, state: DecodeState) -> None:
        """Returns a decode state (its buffers) for the next session's `decode_state`."""
        with self._states_lock:
            self._free_states.append(state)

    def init_decode_state(self, key: jax.Array | None = None) -> DecodeState:
        """JetStream's name for `decode_state`."""
        return self.decode_state(key)

    def _new_state_impl(self, key) -> DecodeState:
        slots, vocab = self._slots, self.model_config.vocab_size
        draft = DraftContext.zeros(slots, self.model_config.hidden_size, jnp.dtype(self.model_config.dtype)) if self.speculative is not None else None
        return DecodeState(
            cache=KVCache.zeros(self._cache_config, slots, self.max_len),
            start=jnp.zeros((slots,), jnp.int32),
            index=jnp.full((slots,), self.max_len, jnp.int32),
            logits=jnp.zeros((slots, vocab), jnp.float32),
            generated=jnp.zeros((slots,), jnp.int32),
            done=jnp.ones((slots,), bool),
            key=key,
            step=jnp.int32(0),
            draft=draft,
        )

    def _reset_impl(self, state: DecodeState, key) -> DecodeState:
        # The cache is kept: `insert` writes a slot's prompt columns and decode each column before it is read.
        return dataclasses.replace(state, index=jnp.full_like(state.index, self.max_len), generated=jnp.zeros_like(state.generated),
                                   done=jnp.ones_like(state.done), key=key, step=jnp.zeros_like(state.step))

    def insert(self, prefix: Prefix, decode_state: DecodeState, slot: int) -> DecodeState:
        """JetStream's insert: row 0 of `prefix` into `slot`."""
        return self.insert_rows(prefix, decode_state, rows=[0], slots=[slot])

    def insert_rows(self, prefix: Prefix, decode_state: DecodeState, rows: Sequence[int], slots: Sequence[int]) -> DecodeState:
        """Copies prefix row `rows[i]` into slot `slots[i]` (one prefill can feed `n` samples)."""
        count = _padded_count(len(slots), self._slots)
        # Padding entries target slot index `slots` (out of range), which the scatter drops.
        padded_slots = np.full((count,), self._slots, np.int32)
        padded_rows = np.zeros((count,), np.int32)
        padded_slots[: len(slots)], padded_rows[: len(rows)] = slots, rows
        return self._insert(prefix, decode_state, padded_rows, padded_slots)

    def _insert_impl(self, prefix: Prefix, state: DecodeState, rows, slots):
        bucket = prefix.cache.k.shape[2]
        # Only the prompt's columns are written: a slot's later columns are written by decode
        # before any query reads them, so nothing of a slot's previous request is ever seen.
        put_cache = lambda old, new: old.at[:, slots, :bucket].set(new[:, rows], mode="drop")
        put = lambda old, new: old.at[slots].set(new, mode="drop")
        return dataclasses.replace(
            state,
            cache=KVCache(put_cache(state.cache.k, prefix.cache.k), put_cache(state.cache.v, prefix.cache.v)),
            start=put(state.start, prefix.start[rows]),
            index=put(state.index, jnp.full(rows.shape, bucket, jnp.int32)),
            logits=put(state.logits, prefix.logits[rows]),
            generated=put(state.generated, jnp.zeros(rows.shape, jnp.int32)),
            done=put(state.done, jnp.zeros(rows.shape, bool)),
            draft=None if state.draft is None else jax.tree.map(lambda old, new: put(old, new[rows]), state.draft, prefix.draft),
        )

    # -- generate ---------------------------------------------------------------------------------
    def kv_bucket(self, columns: int | None) -> int:
        """The compiled cache length that holds `columns` columns (None: all `max_len`)."""
        if columns is None or columns >= self.max_len:
            return self.max_len
        return next(b for b in self.kv_buckets if b >= columns)

    def generate(self, params: nnx.State, decode_state: DecodeState, sampling: SamplingParams = SamplingParams(),
                 columns: int | None = None, end_after: int = 0) -> tuple[DecodeState, ResultTokens]:
        """Runs `steps_per_generate` forwards on every slot; finished or empty slots emit invalid tokens.

        `columns`: how many cache columns any live slot holds at the end of this call (the
        caller tracks it: prompt bucket + tokens since insert); attention then reads only the
        smallest length bucket holding them. Too small a value gives wrong tokens; None reads all.
        `end_after` > 0: the call ends after the forward in which that many of the slots decoding at its
        start are done (`rlx.rollout.forward_loop`; `ResultTokens.forwards` says how many ran).
        """
        return self._generate[self.kv_bucket(columns)](params, decode_state, sampling, np.int32(end_after))

    def _generate_impl(self, params, state: DecodeState, sampling: SamplingParams, end_after, *, kv_len: int):
        model = nnx.merge(self._graphdef, params)
        stops = jnp.asarray(self.stop_tokens or (-1,), jnp.int32)
        if self.speculative is not None and drafts(sampling):  # `sampling` is static: one compiled variant each
            return speculative_generate(model, state, sampling, self.speculative, steps=self.steps_per_generate, end_after=end_after,
                                        kv_len=kv_len, max_len=self.max_len, stops=stops)

        def one_token(state: DecodeState):
            key = jax.random.fold_in(state.key, state.step)
            token, log_prob = sample_tokens(key, state.logits, sampling)
            valid = ~state.done & (state.index < self.max_len)
            column = jnp.minimum(state.index, self.max_len - 1)
            # Free slots may sit past kv_len: their queries see a wrong window, and their tokens are invalid.
            hidden, cache, routes = model.hidden_states_and_routes(token[:, None], start=state.start, cache=state.cache,
                                                                   cache_index=column, kv_len=kv_len)
            done = state.done | ~valid | jnp.isin(token, stops) | (state.index + 1 >= self.max_len)
            state = dataclasses.replace(state, cache=cache, index=state.index + 1, logits=model.logits(hidden[:, -1]),
                                        generated=state.generated + valid, done=done, step=state.step + 1)
            return state, (token, valid, log_prob, routes[:, 0] if self.route_shape is not None else None)

        state, (tokens, valid, log_probs, routes), ran = run_forwards(one_token, state, self.steps_per_generate, end_after)
        k = self.steps_per_generate
        data = jnp.concatenate([tokens.T, valid.T.astype(jnp.int32), state.generated[:, None]], axis=1)
        routes = None if routes is None else jnp.swapaxes(routes, 0, 1)  # [slots, k, moe_layers, top_k]
        return state, ResultTokens(data, log_probs.T, (0, k), (k, 2 * k), (2 * k, 2 * k + 1), routes=routes,
                                   forwards=jnp.full(state.done.shape, ran))

    # -- recompute and extend: tokens run onto the slots' own cache ------------------------------------
    def _chunked_width(self, width: int) -> int:
        """`width` columns, rounded up to whole chunks of `RECOMPUTE_COLUMNS` when it is wider than one."""
        chunk = self._recompute_columns
        return width if width <= chunk else -(-width // chunk) * chunk

    def recompute(self, params: nnx.State, decode_state: DecodeState, tokens: np.ndarray, slots: np.ndarray) -> DecodeState:
        """Rebuilds the KV cache and next-token logits of `slots` under `params` (after a weight swap).

        `tokens [slots, max_len]` holds each slot's sequence at its own columns (prompt from
        `start`, generated tokens up to `index`). One compiled shape whatever the slots'
        lengths; rows not in `slots` keep their state.
        """
        chosen = np.zeros((self._slots,), bool)
        chosen[np.asarray(slots, np.int64)] = True
        padded = np.full((self._slots, self._chunked_width(self.max_len)), self.pad_id, np.int32)
        padded[:, : self.max_len] = tokens
        return self._recompute(params, decode_state, padded, chosen)

    def _recompute_impl(self, params, state: DecodeState, tokens, chosen):
        model = nnx.merge(self._graphdef, params)
        lengths = jnp.where(chosen, state.index, 0)
        cache, logits, draft = self._run_onto_cache(model, state, tokens, lengths, jnp.zeros_like(lengths))
        return dataclasses.replace(state, cache=cache, logits=jnp.where(chosen[:, None], logits, state.logits), draft=draft)

    def extend(self, params: nnx.State, decode_state: DecodeState, slots: Sequence[int], tokens: Sequence[np.ndarray],
               columns: Sequence[int]) -> DecodeState:
        """Appends `tokens[i]` to slot `slots[i]` at cache columns `columns[i]` onwards (a prefill onto the
        slot's own cache: nothing before `columns[i]` is recomputed) and makes the logits after its last
        token the slot's next-token logits; the slot decodes again from column `columns[i] + len(tokens[i])`.

        For multi-turn rollouts: an observation inserted between policy turns. The tokens are padded
        to a length bucket (one compiled variant each); other slots keep their state.
        """
        longest = max(len(t) for t in tokens)
        if longest == 0 or any(c + len(t) > self.max_len for c, t in zip(columns, tokens)):
            raise ValueError(f"extend: every slot needs 1..{self.max_len} - column tokens, got lengths {[len(t) for t in tokens]} at columns {list(columns)}")
        padded = np.full((self._slots, self._chunked_width(self.kv_bucket(longest))), self.pad_id, np.int32)
        lengths = np.zeros((self._slots,), np.int32)  # slots not extended run no tokens
        starts = np.zeros((self._slots,), np.int32)
        for slot, appended, column in zip(slots, tokens, columns):
            padded[slot, : len(appended)], lengths[slot], starts[slot] = appended, len(appended), column
        return self._extend(params, decode_state, padded, lengths, starts)

    def _extend_impl(self, params, state: DecodeState, tokens, lengths, columns):
        model = nnx.merge(self._graphdef, params)
        chosen = lengths > 0
        cache, logits, draft = self._run_onto_cache(model, state, tokens, lengths, columns)
        return dataclasses.replace(state, cache=cache, index=jnp.where(chosen, columns + lengths, state.index),
                                   logits=jnp.where(chosen[:, None], logits, state.logits), done=state.done & ~chosen, draft=draft)

    def _run_onto_cache(self, model, state: DecodeState, tokens, lengths, columns) -> tuple[KVCache, jax.Array, DraftContext | None]:
        """Runs row s's `tokens[s, :lengths[s]]` at cache columns `columns[s]` onwards, written into the state's
        own cache in column chunks of RECOMPUTE_COLUMNS (no second cache, no `[slots, columns, vocab]`
        logits); returns the cache, the logits after each row's last token and (speculative engines) the draft
        context, whose MTP-layer columns are rewritten alongside (`rlx.rollout.speculative.refresh_mtp_chunk`).
        Rows of length 0 write nowhere; padding past a row's tokens is written too, and decode overwrites it
        before any query reads it."""
        width = min(tokens.shape[1], self._recompute_columns)
        last = lengths - 1
        following = jnp.pad(tokens, ((0, 0), (0, 1)), constant_values=self.pad_id)[:, 1:]  # the token after each column

        def at_offset(hidden, first, offset, otherwise):
            offset = offset - first
            here = (offset >= 0) & (offset < width)
            picked = jnp.take_along_axis(hidden, jnp.clip(offset, 0, width - 1)[:, None, None], axis=1)[:, 0]
            return jnp.where(here[:, None], picked, otherwise)

        def chunk(carry, first):
            cache, last_hidden, before_last = carry
            ids = jax.lax.dynamic_slice_in_dim(tokens, first, width, axis=1)
            index = jnp.where(lengths > 0, columns + first, self.max_len)  # column max_len and beyond: the write is dropped
            hidden, cache = model.hidden_states(ids, start=state.start, cache=cache, cache_index=index)
            if self.speculative is not None:
                cache = refresh_mtp_chunk(model, hidden, jax.lax.dynamic_slice_in_dim(following, first, width, axis=1), state.start, cache, index)
            return (cache, at_offset(hidden, first, last, last_hidden), at_offset(hidden, first, last - 1, before_last)), None

        if self.speculative is None:
            before = jnp.zeros((self._slots, self.model_config.hidden_size), jnp.dtype(self.model_config.dtype))
        else:  # the hidden state before an extension's first token: the slot's latest
            before = state.draft.hidden[:, 1]
        starts = jnp.arange(0, tokens.shape[1], width, dtype=jnp.int32)
        (cache, last_hidden, before_last), _ = jax.lax.scan(chunk, (state.cache, before, before), starts)
        if self.speculative is None:
            return cache, model.logits(last_hidden), None
        last_token = jnp.take_along_axis(tokens, jnp.maximum(last, 0)[:, None], axis=1)[:, 0]
        cache, draft = refreshed_context(model, state, cache, lengths, columns, tokens[:, 0], last_hidden, before_last, last_token)
        return cache, model.logits(last_hidden), draft

    # -- scoring ----------------------------------------------------------------------------------
    def score(self, params: nnx.State, tokens: np.ndarray, start: np.ndarray, prompt_len: int, sampling: SamplingParams) -> np.ndarray:
        """Behaviour log-probs (`rlx.rollout.sampling.token_log_probs`) of `tokens[:, prompt_len:]` by one teacher-forced pass.

        For generators that do not report them (JetStream's protocol returns token ids only);
        `tokens [B, P + R]` is a left-padded prompt then the response.
        """
        return np.asarray(self._score(params, jnp.asarray(tokens, jnp.int32), jnp.asarray(start, jnp.int32), prompt_len, sampling))

    def _score_impl(self, params, tokens, start, prompt_len, sampling):
        model = nnx.merge(self._graphdef, params)
        hidden, _ = model.hidden_states(tokens[:, :-1], start=start)
        return token_log_probs(model.logits(hidden[:, prompt_len - 1:]), tokens[:, prompt_len:], sampling)

    # -- compiled programs ------------------------------------------------------------------------
    def programs(self, sampling: SamplingParams = SamplingParams()) -> dict[str, tuple[Callable, tuple]]:
        """{name: (jitted program the engine runs, abstract arguments)} at the largest shapes it runs:
        prefill of `max_concurrent_decodes` prompts at the largest bucket, insert of as many rows,
        one decode call reading all `max_len` columns (with `sampling`, static), recompute, an extend of
        every slot by the longest observation (`max_decode_length` tokens, bucketed). Each
        entry lowers with `fn.lower(*args)`; nothing is allocated."""
        layout, slots = self._layout, self._slots
        shape = lambda dims, dtype, sharding: jax.ShapeDtypeStruct(dims, dtype, sharding=sharding)
        params, state = self._abstract_params, self._abstract_state()
        tokens, start = shape((slots, self._max_prefill), jnp.int32, layout.rows), shape((slots,), jnp.int32, layout.rows)
        prefix = abstract(jax.eval_shape(self._prefill_impl, params, tokens, start, None), layout.prefix())
        index = shape((slots,), jnp.int32, layout.replicated)
        sequences = shape((slots, self._chunked_width(self.max_len)), jnp.int32, layout.rows)
        appended = shape((slots, self._chunked_width(self.kv_bucket(self.max_len - self._max_prefill))), jnp.int32, layout.rows)
        return {
            "generator prefill": (self._prefill, (params, tokens, start, None)),
            "generator insert": (self._insert, (prefix, state, index, index)),
            "generator decode step": (self._generate[self.max_len], (params, state, sampling, shape((), jnp.int32, layout.replicated))),
            "generator recompute": (self._recompute, (params, state, sequences, shape((slots,), bool, layout.rows))),
            "generator extend": (self._extend, (params, state, appended, start, start)),
        }

    def _abstract_state(self) -> DecodeState:
        key = jax.eval_shape(lambda: jax.random.key(0))
        return abstract(jax.eval_shape(self._new_state_impl, key), self._layout.state())

    def compiled_variants(self) -> int:
        """Compiled variants of the engine's programs so far: bounded by buckets x sampling settings."""
        jitted = [self._prefill, self._insert, self._recompute, self._extend, self._new_state, self._reset, self._score, *self._generate.values()]
        return sum(fn._cache_size() for fn in jitted)
