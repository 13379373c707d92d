"""A generation engine with JetStream's Engine API: `prefill`, `insert`, `generate` over decode slots.

Each of `max_concurrent_decodes` slots holds one sequence's KV cache row. A prompt is
prefilled into a length bucket (left-padded, so its last token sits at the bucket's end),
inserted into a free slot, and then every `generate` call advances every slot by
`steps_per_generate` tokens: sample from the slot's next-token logits (greedy, temperature,
top-k, top-p), record the behaviour log-prob, feed the token back. Slots sit at different
lengths, so the cache is written at one column per row.

Weights are an argument of every jitted function (never baked in); `load_params` checks a
replacement has the tree structure, shapes and dtypes the programs were compiled for.
The engine imports nothing from JetStream: `rlx.rollout.jetstream_compat` adapts it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlx.models import KVCache, ModelConfig
from rlx.rollout.sampling import sample_tokens, scaled_log_probs

MIN_BUCKET = 8


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """`temperature: 0` is greedy; `top_k: 0` and `top_p: 1` keep the whole vocabulary."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


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
    temperature: jax.Array
    top_p: jax.Array
    top_k: jax.Array


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


def prefill_buckets(max_prefill_length: int) -> tuple[int, ...]:
    """Powers of two from MIN_BUCKET below `max_prefill_length`, then `max_prefill_length` itself."""
    buckets, size = [], MIN_BUCKET
    while size < max_prefill_length:
        buckets.append(size)
        size *= 2
    return (*buckets, max_prefill_length)


def _padded_count(count: int, limit: int) -> int:
    """Next power of two >= count (at most `limit`): batch sizes of jitted calls stay a few."""
    return min(1 << max(count - 1, 0).bit_length(), max(limit, count))


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
                "weights can only be replaced by weights of the same architecture and dtype"
            )


class Engine:
    """JetStream Engine API over an NNX model (see the module docstring)."""

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
    ):
        if max_prefill_length + max_decode_length > model_config.max_seq_len:
            raise ValueError(
                f"max_prefill_length ({max_prefill_length}) + max_decode_length ({max_decode_length}) exceeds "
                f"model.max_seq_len ({model_config.max_seq_len}); shorten them or raise model.max_seq_len"
            )
        self._graphdef = graphdef
        self._params = params
        self._abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
        self.model_config = model_config
        self._slots = max_concurrent_decodes
        self._max_prefill = max_prefill_length
        self.max_len = max_prefill_length + max_decode_length
        self.stop_tokens = tuple(stop_tokens)
        self.pad_id = pad_id
        self.steps_per_generate = steps_per_generate
        self.buckets = prefill_buckets(max_prefill_length)
        self.tokenizer = tokenizer
        self._mesh = mesh if mesh is not None else jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
        self._prefill = jax.jit(self._prefill_impl)
        self._insert = jax.jit(self._insert_impl, donate_argnums=(1,))
        self._generate = jax.jit(self._generate_impl, donate_argnums=(1,))
        self._recompute = jax.jit(self._recompute_impl, donate_argnums=(1,))
        self._score = jax.jit(self._score_impl, static_argnums=(3,))

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
    def mesh(self) -> jax.sharding.Mesh:
        return self._mesh

    @property
    def colocated_cpus(self) -> None:
        return None  # prefixes move device to device; no host staging

    def get_prefix_destination_sharding(self) -> jax.sharding.Sharding:
        return jax.sharding.NamedSharding(self._mesh, jax.sharding.PartitionSpec())

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def free_resource(self, slot: int) -> None:
        """Slots own dense cache rows that `insert` overwrites whole, so a finished slot holds nothing to release."""
        del slot

    # -- weights ----------------------------------------------------------------------------------
    def load_params(self, params: nnx.State | None = None) -> nnx.State:
        """Returns the weights to pass to `prefill`/`generate`: the engine's own, or `params` once checked."""
        if params is None:
            return self._params
        check_same_structure(self._abstract_params, params)
        return params

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
        rows = _padded_count(len(prompts), self._slots)
        tokens = np.full((rows, bucket), self.pad_id, np.int32)
        start = np.full((rows,), bucket - 1, np.int32)  # padding rows: one pad token
        for row, prompt in enumerate(prompts):
            tokens[row, bucket - len(prompt):] = prompt
            start[row] = bucket - len(prompt)
        return self._prefill(params, jnp.asarray(tokens), jnp.asarray(start), stack_media(media, rows))

    def _prefill_impl(self, params, tokens, start, media):
        model = nnx.merge(self._graphdef, params)
        cache = KVCache.zeros(self.model_config, tokens.shape[0], tokens.shape[1])
        logits, cache = model(tokens, start=start, cache=cache, cache_index=0, media=media)
        return Prefix(cache, start, logits[:, -1])

    # -- decode state and insert ------------------------------------------------------------------
    def init_decode_state(self, key: jax.Array | None = None, sampling: SamplingParams = SamplingParams()) -> DecodeState:
        slots, vocab = self._slots, self.model_config.vocab_size
        return DecodeState(
            cache=KVCache.zeros(self.model_config, slots, self.max_len),
            start=jnp.zeros((slots,), jnp.int32),
            index=jnp.full((slots,), self.max_len, jnp.int32),
            logits=jnp.zeros((slots, vocab), jnp.float32),
            generated=jnp.zeros((slots,), jnp.int32),
            done=jnp.ones((slots,), bool),
            key=jax.random.key(0) if key is None else jax.random.clone(key),  # the state is donated; the caller's key survives
            step=jnp.int32(0),
            temperature=jnp.float32(sampling.temperature),
            top_p=jnp.float32(sampling.top_p),
            top_k=jnp.int32(sampling.top_k),
        )

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
        return self._insert(prefix, decode_state, jnp.asarray(padded_rows), jnp.asarray(padded_slots))

    def _insert_impl(self, prefix: Prefix, state: DecodeState, rows, slots):
        bucket = prefix.cache.k.shape[2]
        # The whole row is overwritten (zeros past the prompt), so nothing of a slot's
        # previous request survives, whatever the mask would let through.
        def whole_rows(kv):
            new = jnp.zeros((kv.shape[0], rows.shape[0], self.max_len) + kv.shape[3:], kv.dtype)
            return new.at[:, :, :bucket].set(kv[:, rows])

        def put(old, new, axis=0):
            return old.at[(slice(None),) * axis + (slots,)].set(new, mode="drop")

        return dataclasses.replace(
            state,
            cache=KVCache(put(state.cache.k, whole_rows(prefix.cache.k), 1), put(state.cache.v, whole_rows(prefix.cache.v), 1)),
            start=put(state.start, prefix.start[rows]),
            index=put(state.index, jnp.full(rows.shape, bucket, jnp.int32)),
            logits=put(state.logits, prefix.logits[rows]),
            generated=put(state.generated, jnp.zeros(rows.shape, jnp.int32)),
            done=put(state.done, jnp.zeros(rows.shape, bool)),
        )

    # -- generate ---------------------------------------------------------------------------------
    def generate(self, params: nnx.State, decode_state: DecodeState) -> tuple[DecodeState, ResultTokens]:
        """Advances every slot by `steps_per_generate` tokens; finished or empty slots emit invalid tokens."""
        return self._generate(params, decode_state)

    def _generate_impl(self, params, state: DecodeState):
        model = nnx.merge(self._graphdef, params)
        stops = jnp.asarray(self.stop_tokens or (-1,), jnp.int32)

        def one_token(state: DecodeState, _):
            key = jax.random.fold_in(state.key, state.step)
            token, log_prob = sample_tokens(key, state.logits, state.temperature, state.top_p, state.top_k)
            valid = ~state.done & (state.index < self.max_len)
            column = jnp.minimum(state.index, self.max_len - 1)
            logits, cache = model(token[:, None], start=state.start, cache=state.cache, cache_index=column)
            generated = state.generated + valid
            done = state.done | ~valid | jnp.isin(token, stops) | (state.index + 1 >= self.max_len)
            state = dataclasses.replace(
                state, cache=cache, index=state.index + 1, logits=logits[:, -1], generated=generated, done=done, step=state.step + 1,
            )
            return state, (token, valid, log_prob)

        state, (tokens, valid, log_probs) = jax.lax.scan(one_token, state, length=self.steps_per_generate)
        k = self.steps_per_generate
        data = jnp.concatenate([tokens.T, valid.T.astype(jnp.int32), state.generated[:, None]], axis=1)
        return state, ResultTokens(data, log_probs.T, (0, k), (k, 2 * k), (2 * k, 2 * k + 1))

    # -- recompute ----------------------------------------------------------------------------------
    def recompute(self, params: nnx.State, decode_state: DecodeState, tokens: np.ndarray, slots: np.ndarray) -> DecodeState:
        """Rebuilds the KV cache and next-token logits of `slots` under `params` (after a weight swap).

        `tokens [slots, max_len]` holds each slot's sequence at its own columns (prompt from
        `start`, generated tokens up to `index`); one full-width forward pass, one compiled
        shape whatever the slots' lengths. Rows not in `slots` keep their state.
        """
        chosen = np.zeros((self._slots,), bool)
        chosen[np.asarray(slots, np.int64)] = True
        return self._recompute(params, decode_state, jnp.asarray(tokens, jnp.int32), jnp.asarray(chosen))

    def _recompute_impl(self, params, state: DecodeState, tokens, chosen):
        model = nnx.merge(self._graphdef, params)
        cache = KVCache.zeros(self.model_config, self._slots, self.max_len)
        # Columns past `index` hold padding; decode overwrites each before any query can see it.
        logits, cache = model(tokens, start=state.start, cache=cache, cache_index=0)
        last = jnp.clip(state.index - 1, 0, self.max_len - 1)
        keep = lambda new, old: jnp.where(chosen.reshape((1, -1) + (1,) * (old.ndim - 2)), new, old)
        return dataclasses.replace(
            state,
            cache=KVCache(keep(cache.k, state.cache.k), keep(cache.v, state.cache.v)),
            logits=jnp.where(chosen[:, None], logits[jnp.arange(self._slots), last], state.logits),
        )

    # -- scoring ----------------------------------------------------------------------------------
    def score(self, params: nnx.State, tokens: np.ndarray, start: np.ndarray, prompt_len: int, temperature: float) -> np.ndarray:
        """log softmax(logits / T) of `tokens[:, prompt_len:]` by one teacher-forced forward pass.

        For generators that do not report behaviour log-probs (JetStream's protocol returns
        token ids only); `tokens [B, P + R]` is a left-padded prompt then the response.
        """
        return np.asarray(self._score(params, jnp.asarray(tokens, jnp.int32), jnp.asarray(start, jnp.int32), prompt_len, jnp.float32(temperature)))

    def _score_impl(self, params, tokens, start, prompt_len, temperature):
        logits, _ = nnx.merge(self._graphdef, params)(tokens[:, :-1], start=start)
        log_probs = scaled_log_probs(logits[:, prompt_len - 1:], temperature)
        return jnp.take_along_axis(log_probs, tokens[:, prompt_len:, None], axis=-1)[..., 0]
