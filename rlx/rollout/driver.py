"""The RL rollout driver: continuous batching over the engine's decode slots.

A request is a prompt with `samples` responses to draw; its prompt is prefilled once and
inserted into `samples` slots. Every `generate` call advances all slots; a sequence that
emits a stop token or reaches its `max_tokens` frees its slot at once, the next waiting
sample takes it, and the finished sample streams out (`RolloutDriver.stream`), so
downstream work never waits for the longest sequence of a batch. Each token is stamped
with the policy version of the weights that produced it.

With a `weight_source` set (a callable returning newly published `(params, version)` or None),
the stream polls it between generate calls and swaps weights there (interruptible rollouts):
in-flight sequences continue under the new weights, their later tokens carry the new version,
and their KV cache is kept (computed by the older weights) or, with `interrupt="recompute_cache"`,
rebuilt under the new weights. The slots live in a `_Session`, which `rlx.rollout.partial` keeps
across steps so unfinished samples continue there.

With an engine that records routes (R3), every completion also carries the experts each of its
tokens went to (prompt tokens from their prefill, each generated token from the decode step that
fed it back), read with the step's tokens. A token keeps the routes of the weights that sampled
it, across swaps too: with `recompute_cache` the rebuilt cache routes the prefix under the new
weights, but the record keeps what the prefix's own sampling saw (the learner replays one route
per token, and a token's record then matches its version stamp).

With `turns` (`rlx.rollout.turns.MultiTurn`) a sample is a multi-turn trajectory: a slot whose
policy turn ends waits for its environment (off this loop) while the other slots decode, then
continues with the observation appended to its cache (`Engine.extend`).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal, Sequence

import jax
import numpy as np
from flax import nnx

from rlx.data import PromptBatch, PromptRecord
from rlx.rollout.engine import Engine
from rlx.rollout.forward_loop import DecodeCounts
from rlx.rollout.sampling import SamplingParams
from rlx.rollout.slot_buffers import SlotBuffers
from rlx.rollout.state import Prefix
from rlx.rollout.stops import StopStrings

if TYPE_CHECKING:
    from rlx.rollout.turns import MultiTurn

LongPrompt = Literal["error", "truncate"]
REFILL_SLOTS_FRACTION = 8  # while samples wait, a generate call ends once this fraction of the slots (at least one) is free


@dataclasses.dataclass(frozen=True)
class Generation:
    """Responses right-padded to `max_new_tokens`; `mask` is 1 on the policy's tokens (EOS included) and 0 on
    padding and on observation tokens a multi-turn environment inserted; `lengths` count both kinds."""

    tokens: np.ndarray  # [B, R] int32
    log_probs: np.ndarray  # [B, R] float32, behaviour log-probs
    mask: np.ndarray  # [B, R] float32
    lengths: np.ndarray  # [B] int32

    def clipped(self, stop_ids: Sequence[int]) -> np.ndarray:
        """[B] bool: responses that filled every column without ending on a stop token (cut at the length limit)."""
        return (self.mask[:, -1] > 0) & ~np.isin(self.tokens[:, -1], np.asarray(stop_ids))


@dataclasses.dataclass(frozen=True)
class GroupRollout:
    records: list[PromptRecord]  # one per row (a prompt repeated n times)
    prompt_tokens: np.ndarray  # [B * n, P]
    start: np.ndarray  # [B * n]
    group_ids: np.ndarray  # [B * n], row // n
    generation: Generation
    policy_version: np.ndarray  # [B * n, R] version of the weights that produced each token, -1 on padding
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    media: dict[str, np.ndarray] | None = None  # [B * n, ...] encoder inputs per row, for the learner to re-encode
    # [B * n, P + R, moe_layers, k] int32 experts each token (prompt columns, then response) went to; -1 where none
    routes: np.ndarray | None = None
    rewards: np.ndarray | None = None  # [B * n] from the environment (multi-turn rollouts); None: scored afterwards
    env_errors: np.ndarray | None = None  # [B * n] bool, with `rewards`: the environment failed (reward: on_error_reward)


@dataclasses.dataclass(frozen=True)
class Request:
    prompt: np.ndarray  # [P] token ids, no padding
    max_tokens: int  # capped at the engine's max_decode_length
    samples: int = 1
    tag: Any = None  # handed back on each Completion
    media: dict[str, np.ndarray] | None = None  # encoder inputs of this prompt, run in prefill
    record: PromptRecord | None = None  # what a multi-turn environment is reset with


@dataclasses.dataclass(frozen=True)
class Completion:
    tag: Any
    sample: int
    prompt: np.ndarray  # the prompt as prefilled (after truncation, if any)
    tokens: np.ndarray  # [L] int32, a stop token included
    log_probs: np.ndarray  # [L] float32 behaviour log-probs
    versions: np.ndarray  # [L] int32 policy version per token, -1 on observation tokens
    truncated_prompt: bool
    routes: np.ndarray | None = None  # [len(prompt) + L, moe_layers, k] int32 experts per token (routes recorded)
    mask: np.ndarray | None = None  # [L] 1 on policy tokens, 0 on observation tokens; None: all policy tokens
    reward: float | None = None  # a multi-turn trajectory's return from its environment
    stats: dict[str, float] | None = None  # a multi-turn trajectory's counters (`rlx.rollout.turns`)


@dataclasses.dataclass
class Admitted:
    """A request whose prompt is prefilled; `next_sample` samples of it already hold slots."""

    request: Request
    prompt: np.ndarray
    truncated: bool
    prefix: Prefix | None = None
    prefix_version: int = -1  # version of the weights that prefilled `prefix`
    row: int = 0
    prompt_routes: Any = None  # [N, bucket, moe_layers, k] of the prefill (on its way to the host), rows of `row`
    next_sample: int = 0


Interrupt = Literal["keep_cache", "recompute_cache"]  # how a swap treats in-flight sequences
OnSample = Callable[[PromptRecord, np.ndarray], None]  # (prompt record, response tokens) of a sample as it finishes


@dataclasses.dataclass
class _Session:
    """Decode slots between generate calls: what one stream (or a run of budgeted steps) holds."""

    state: Any
    sampling: SamplingParams
    buffers: SlotBuffers
    owner: list[tuple[Admitted, int] | None]
    pull: Callable[[], Request | None]  # the next request to admit, None when there is none now
    waiting: Admitted | None = None
    step: int = 0
    in_flight: tuple | None = None  # (to_numpy, step, version) of the generate call not read yet
    trajectories: Any = None  # multi-turn state (`rlx.rollout.turns`)
    drained: bool = False  # the latest `pull` returned None

    def refills_waiting(self) -> bool:
        """Whether samples may wait for a slot: a placed request's later samples, or `pull` not drained yet."""
        return not self.drained or (self.waiting is not None and self.waiting.next_sample < self.waiting.request.samples)

    def live_slots(self) -> list[int]:
        """Slots holding a sample: decoding, or (multi-turn) waiting for its environment."""
        return [slot for slot, entry in enumerate(self.owner) if entry is not None]

    def decoding_slots(self) -> list[int]:
        return [slot for slot in self.live_slots() if self.buffers.active[slot]]


class RolloutDriver:
    """Continuous batching (or, with `refill=False`, static batching) over an `Engine`.

    `interrupt`: how a weight swap treats in-flight sequences: `keep_cache` (their KV cache stays,
    computed by the older weights) or `recompute_cache` (prompt + tokens so far are run again
    under the new weights, one chunked pass). `token_budget`: see `rlx.rollout.partial`.
    `stop_strings`: see `rlx.rollout.stops` (the engine's tokenizer decodes). `turns`: multi-turn
    trajectories with an environment (`rlx.rollout.turns`); its turn-ending strings are stop strings too.
    """

    def __init__(self, engine: Engine, params: nnx.State, *, long_prompt: LongPrompt = "error", version: int = 0,
                 interrupt: Interrupt = "keep_cache", token_budget: int | None = None, stop_strings: Sequence[str] = (),
                 turns: "MultiTurn | None" = None):
        if turns is not None and token_budget is not None:
            raise ValueError("multi-turn rollouts (env.fn) do not carry trajectories across steps yet: set rollout.token_budget: null")
        self.engine = engine
        self.turns = turns
        stop_strings = (*stop_strings, *(turns.stop_strings if turns is not None else ()))
        self.stop_strings = StopStrings(engine.tokenizer, stop_strings) if stop_strings else None
        self.params = engine.load_params(params)
        self.version = version
        self.long_prompt = long_prompt
        self.interrupt = interrupt
        self.truncated_prompts = 0
        self.drafting = [0, 0, 0.0]  # speculative engines: target forwards of held slots, the drafts they kept, sum of log q(d) - log p(d)
        self.counts = DecodeCounts()
        self.weight_source: Callable[[], tuple[nnx.State, int] | None] | None = None
        self.mid_batch_swaps = 0
        from rlx.rollout.partial import PartialRollouts  # it builds on this module

        self.partial = PartialRollouts(self, token_budget) if token_budget is not None else None

    def update_weights(self, params: nnx.State, version: int) -> None:
        """Swaps in new weights (same structure, shapes, dtypes: nothing recompiles) and their version.
        Sequences held across steps (`token_budget`) continue under them, recomputed if so configured."""
        self.params = self.engine.load_params(params)
        self.version = version
        if self.partial is not None and self.interrupt == "recompute_cache":
            self._recompute(self.partial.session)

    def stream(self, requests: Iterable[Request], key: jax.Array, sampling: SamplingParams = SamplingParams(), *, refill: bool = True) -> Iterator[Completion]:
        """Yields each sample as soon as it finishes. With `refill=False`, a new batch of slots is
        admitted only when every slot is free (static batching, kept for comparison)."""
        pending = iter(requests)
        session = self.open_session(key, sampling, lambda: next(pending, None))
        try:
            yield from self.run(session, refill=refill)
        finally:
            self.engine.release(session.state)  # the next stream decodes in the same buffers

    def open_session(self, key: jax.Array, sampling: SamplingParams, pull: Callable[[], Request | None]) -> _Session:
        slots = self.engine.max_concurrent_decodes
        max_new = max(self.engine.max_len - self.engine.max_prefill_length, 1)
        buffers = SlotBuffers(slots, max_new, self.engine.route_shape)
        session = _Session(self.engine.decode_state(key), sampling, buffers, [None] * slots, pull)
        if self.turns is not None:
            self.turns.attach(session)
        return session

    def run(self, session: _Session, *, refill: bool = True, stop: Callable[[], bool] = lambda: False) -> Iterator[Completion]:
        """Generates until every request is done or, checked between generate calls, `stop()`;
        the session can be run again later (its in-flight call is read before returning)."""
        slots = self.engine.max_concurrent_decodes
        # While no sample waits for a slot, one generate call is kept in flight: step t + 1 is dispatched
        # before step t's tokens are read, so host work overlaps device work (a slot freed at step t would
        # idle through step t + 1, whose tokens for it are ignored: `since` in `SlotBuffers`). While samples
        # wait, each call ends once an eighth of the slots are done (`Engine.generate(end_after=)`) and is read
        # at once, so the slots it freed are refilled before the next call.
        end_after = -(-slots // REFILL_SLOTS_FRACTION)
        while True:
            stopping = stop()
            if self.turns is not None:
                yield from self.turns.resume(self, session)  # trajectories whose environment answered continue or end
            free = [slot for slot in range(slots) if session.owner[slot] is None]
            if free and not stopping and (refill or len(free) == slots):
                self._admit(session, free)
            dispatched = None
            if session.decoding_slots() and not stopping:
                yield from self._swap_if_published(session)
                refilling = session.refills_waiting()
                columns = session.buffers.advance(session.decoding_slots(), self.engine.columns_per_generate)
                session.state, result = self.engine.generate(self.params, session.state, session.sampling, columns,
                                                             end_after if refilling else 0)
                result.copy_to_host_async()
                dispatched, session.step = (result.convert_to_numpy, session.step, self.version), session.step + 1
            elif session.in_flight is None:
                if stopping or not session.live_slots():
                    return
                self.turns.wait(session)  # every held slot waits for its environment
                continue
            yield from self._read_in_flight(session, ahead=0 if dispatched is None else self.engine.columns_per_generate)
            session.in_flight = dispatched
            if dispatched is not None and refilling:
                yield from self._read_in_flight(session, ahead=0)

    def _read_in_flight(self, session: _Session, ahead: int) -> Iterator[Completion]:
        """Reads the call in flight; `ahead`: the most cache columns the calls dispatched since then may add."""
        if session.in_flight is None:
            return
        (to_numpy, at, version), session.in_flight = session.in_flight, None
        result = to_numpy()
        held = session.buffers.active & (session.buffers.since <= at)
        self.counts.add(result, held)
        if result.drafts:
            forwards = result.valid[held, 0::2]
            self.drafting[0] += int(forwards.sum())
            self.drafting[1] += int(result.valid[held, 1::2].sum())
            self.drafting[2] += float(np.sum(result.draft_kl[held] * forwards))
        finished = session.buffers.append(result, at, version, self.engine.stop_tokens, self.stop_strings)
        # What was emitted (1 or 2 tokens per forward, maybe fewer forwards) bounds the columns better than `advance`.
        session.buffers.settle(held, ahead)
        for slot in finished:
            if self.turns is None:
                yield self.complete(session, slot)
            elif (ended := self.turns.turn_ended(self, session, slot)) is not None:
                yield ended

    def complete(self, session: _Session, slot: int, reward: float | None = None, stats: dict[str, float] | None = None) -> Completion:
        """Frees `slot` and hands out its sample."""
        completion = self.sample_so_far(session, slot, reward, stats)
        session.owner[slot] = None
        return completion

    @staticmethod
    def sample_so_far(session: _Session, slot: int, reward: float | None = None, stats: dict[str, float] | None = None) -> Completion:
        """`slot`'s sample as it stands (the slot keeps it): its tokens so far, their log-probs, versions and routes."""
        admitted, sample = session.owner[slot]
        tokens, log_probs, versions, mask, routes = session.buffers.take(slot)
        if routes is not None:  # the prefill's copy finished long ago: no wait here
            routes = np.concatenate([np.asarray(admitted.prompt_routes)[admitted.row, -len(admitted.prompt):], routes])
        return Completion(admitted.request.tag, sample, admitted.prompt, tokens, log_probs, versions, admitted.truncated,
                          routes=routes, mask=mask, reward=reward, stats=stats)

    def _swap_if_published(self, session: _Session) -> Iterator[Completion]:
        """Interruptible rollouts: new weights from `weight_source` are swapped in between generate calls."""
        published = self.weight_source() if self.weight_source is not None else None
        if published is None:
            return
        if self.interrupt == "recompute_cache":
            yield from self._read_in_flight(session, ahead=0)  # the host then holds every token the slots hold
        self.params, self.version = self.engine.load_params(published[0]), published[1]
        self.mid_batch_swaps += 1
        if self.interrupt == "recompute_cache":
            self._recompute(session)

    def _recompute(self, session: _Session | None) -> None:
        """Rebuilds every live slot's KV cache under the current weights from prompt + tokens so far."""
        live = session.live_slots() if session is not None else []
        if not live:
            return
        assert session.in_flight is None, "recompute needs every generated token on the host"
        start = np.asarray(session.state.start)
        tokens = np.full((len(session.owner), self.engine.max_len), self.engine.pad_id, np.int32)
        for slot in live:
            admitted, _ = session.owner[slot]
            sequence = np.concatenate([admitted.prompt, session.buffers.tokens[slot, :session.buffers.count[slot]]])
            tokens[slot, start[slot]:start[slot] + len(sequence)] = sequence
        session.state = self.engine.recompute(self.params, session.state, tokens, np.array(live))
        session.buffers.logits_version[live] = self.version

    def _admit(self, session: _Session, free: list[int]) -> None:
        """Fills free slots with waiting samples; prefills newly pulled requests in one batch."""
        placements: list[tuple[Admitted, int, int]] = []  # (request, sample, slot)
        fresh: list[Admitted] = []
        waiting, owner, buffers = session.waiting, session.owner, session.buffers
        for slot in free:
            if waiting is None or waiting.next_sample == waiting.request.samples:
                request = session.pull()
                session.drained = request is None
                if request is None:
                    break
                waiting = self._accept(request)
                fresh.append(waiting)
            placements.append((waiting, waiting.next_sample, slot))
            buffers.reset(slot, waiting.request.max_tokens, session.step)
            owner[slot] = (waiting, waiting.next_sample)
            waiting.next_sample += 1
        if fresh:
            prefix = self.prefill([admitted.prompt for admitted in fresh], [admitted.request for admitted in fresh])
            for row, admitted in enumerate(fresh):
                admitted.prefix, admitted.prefix_version, admitted.row = prefix, self.version, row
                admitted.prompt_routes = prefix.routes
        for _, group in itertools.groupby(placements, key=lambda p: id(p[0].prefix)):
            group = list(group)
            prefix, slots = group[0][0].prefix, [slot for _, _, slot in group]
            session.state = self.engine.insert_rows(prefix, session.state, [a.row for a, _, _ in group], slots)
            # A prefix kept for later samples may predate a weight swap: its logits keep their version.
            buffers.logits_version[slots] = group[0][0].prefix_version
            buffers.columns[slots] = buffers.origin[slots] = prefix.cache.k.shape[2]
        for admitted in [*fresh, waiting]:
            if admitted is not None and admitted.next_sample == admitted.request.samples:
                admitted.prefix = None  # every sample is placed: let the prefix's buffers go
        session.waiting = waiting

    def prefill(self, prompts: list[np.ndarray], requests: list[Request]):
        """One prefill of `prompts` (with their `requests`' media), counted; its routes start their way to the host."""
        media = [request.media for request in requests] if requests[0].media else None
        prefix = self.engine.prefill_batch(self.params, prompts, media)
        self.counts.prefills += 1
        if prefix.routes is not None:
            prefix.routes.copy_to_host_async()
        return prefix

    def _accept(self, request: Request) -> Admitted:
        if request.samples < 1 or request.max_tokens < 1:
            raise ValueError(f"request {request.tag!r}: samples and max_tokens must be >= 1, got {request.samples}, {request.max_tokens}")
        prompt, truncated = check_prompt(request.prompt, self.engine.max_prefill_length, self.long_prompt, request.tag)
        self.truncated_prompts += truncated
        return Admitted(request, prompt, truncated)

    def generate_groups(self, prompts: PromptBatch, n: int, key: jax.Array, sampling: SamplingParams, max_new_tokens: int,
                        *, min_version: int | None = None, on_sample: OnSample | None = None) -> GroupRollout:
        """`n` samples of every prompt, rows ordered prompt-major, as the trainer consumes them.
        With a `token_budget`, as many complete groups, possibly of earlier prompts (`rlx.rollout.partial`);
        `min_version` is then the oldest policy version a carried-over sample may hold. `on_sample(record, tokens)`
        is called as each sample finishes (not for multi-turn trajectories, scored by their environment)."""
        if self.turns is not None:
            on_sample = None
        if self.partial is not None:
            return self.partial.step(prompts, n, key, sampling, max_new_tokens, min_version, on_sample)
        truncated_before, drafting_before = self.truncated_prompts, list(self.drafting)
        requests = [
            Request(tokens[start:], max_new_tokens, samples=n, tag=row, media=prompts.row_media(row), record=prompts.records[row])
            for row, (tokens, start) in enumerate(zip(prompts.tokens, prompts.start))
        ]
        completions = []
        for completion in self.stream(requests, key, sampling):
            if on_sample is not None:
                on_sample(prompts.records[completion.tag], completion.tokens)
            completions.append(completion)
        completions.sort(key=lambda c: (c.tag, c.sample))
        metrics = {"rollout/truncated_prompts": float(self.truncated_prompts - truncated_before)}
        if self.turns is not None:
            metrics.update(self.turns.metrics(completions))
        metrics["rollout/compiles"] = float(self.engine.compiled_variants())
        metrics.update(self.drafting_metrics(drafting_before))
        return assemble_groups(prompts, completions, n, max_new_tokens, pad_id=self.engine.pad_id, metrics=metrics)

    def drafting_metrics(self, before: list) -> dict[str, float]:
        """`spec/*` since `before` (a copy of `drafting`), none without drafts: kept drafts per target forward
        (`spec/accept_rate` when verified, `spec/confidence_kept` when kept by the confidence head), tokens per
        forward, and KL(q || p) of the draft distribution from the target's at drafted positions (estimated by the mean
        of log q(d) - log p(d) over drafts d ~ q)."""
        forwards, kept, kl = (now - then for now, then in zip(self.drafting, before))
        if not forwards:
            return {}
        kept_name = "spec/accept_rate" if self.engine.speculative.mode == "lossless" else "spec/confidence_kept"
        return {kept_name: kept / forwards, "spec/tokens_per_forward": (forwards + kept) / forwards, "spec/draft_kl": kl / forwards}


def check_prompt(prompt: np.ndarray, limit: int, long_prompt: LongPrompt, tag: Any) -> tuple[np.ndarray, bool]:
    """The prompt to prefill and whether it was truncated; an empty or (with `error`) too long prompt raises."""
    prompt = np.asarray(prompt, np.int32)
    if prompt.ndim != 1 or len(prompt) == 0:
        raise ValueError(f"request {tag!r}: empty prompt; a prompt needs at least one token (e.g. BOS)")
    if len(prompt) <= limit:
        return prompt, False
    if long_prompt == "error":
        raise ValueError(
            f"request {tag!r}: prompt has {len(prompt)} tokens, more than rollout.max_prefill_length={limit}; "
            "raise it, shorten the prompt, or set rollout.long_prompt=truncate (keeps the last tokens)"
        )
    return prompt[-limit:], True  # the end of a prompt holds the question


def assemble_groups(prompts: PromptBatch, completions: list[Completion], n: int, width: int, *, pad_id: int, metrics: dict[str, float]) -> GroupRollout:
    """Right-pads completions (sorted by prompt row, then sample) into the trainer's arrays."""
    rows = len(completions)
    prompt_width = max([prompts.tokens.shape[1], *(len(c.prompt) for c in completions)])
    tokens = np.full((rows, width), pad_id, np.int32)
    log_probs = np.zeros((rows, width), np.float32)
    versions = np.full((rows, width), -1, np.int32)
    prompt_tokens = np.full((rows, prompt_width), pad_id, np.int32)
    mask = np.zeros((rows, width), np.float32)
    start = np.zeros((rows,), np.int32)
    for row, completion in enumerate(completions):
        length = len(completion.tokens)
        tokens[row, :length], log_probs[row, :length], versions[row, :length] = completion.tokens, completion.log_probs, completion.versions
        mask[row, :length] = 1.0 if completion.mask is None else completion.mask
        prompt_tokens[row, prompt_width - len(completion.prompt):] = completion.prompt
        start[row] = prompt_width - len(completion.prompt)
    lengths = np.array([len(c.tokens) for c in completions], np.int32)
    routes = None
    if completions and completions[0].routes is not None:  # aligned with prompt_tokens ++ tokens; -1 on padding
        routes = np.full((rows, prompt_width + width, *completions[0].routes.shape[1:]), -1, np.int32)
        for row, completion in enumerate(completions):
            routes[row, start[row]:start[row] + len(completion.routes)] = completion.routes
    multi_turn = bool(completions) and completions[0].reward is not None
    rewards = np.array([c.reward for c in completions], np.float32) if multi_turn else None
    env_errors = np.array([c.stats["env_errors"] > 0 for c in completions]) if multi_turn else None
    return GroupRollout(
        records=[prompts.records[c.tag] for c in completions],
        prompt_tokens=prompt_tokens,
        start=start,
        group_ids=np.arange(rows, dtype=np.int32) // n,
        generation=Generation(tokens, log_probs, mask, lengths),
        policy_version=versions,
        metrics=metrics,
        media=prompts.take([c.tag for c in completions]),
        routes=routes,
        rewards=rewards,
        env_errors=env_errors,
    )
