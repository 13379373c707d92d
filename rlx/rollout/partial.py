"""Partial rollouts under a per-step token budget (C3PO++ style): long sequences do not hold a step back.

Slots stay busy: when one frees and nothing waits, the next prompt batch is drawn (`draw`),
up to one step's prompts ahead. A step ends once it has generated `token_budget` tokens *and* as many
prompt groups as its batch has are complete; the oldest complete groups form the step's batch.
Unfinished samples keep their decode slots and KV cache and continue in the next step, under
newer weights if some were published (each token keeps the version that produced it).
A step's batch is always whole groups, `prompts_per_step` of them: the learner's shapes never
change (no recompiles) and group statistics (GRPO) see every sample of a prompt, where padding
with masked rows would spend learner compute on nothing and split groups. So the budget can be
overrun while too few groups are complete; `rollout/step_tokens` reports what a step generated.

A carried-over sample holding a token older than `min_version` (the staleness bound) is
restarted from its prompt and counted (`rollout/restarted_stale_samples`), never trained on.

Between steps the carried work is a `Carried` (`snapshot`), which a checkpoint saves; `resume` gives it to a fresh
driver, whose first step puts each unfinished sample back in its decode slot (its prompt prefilled and its tokens so
far run onto the cache under the current weights) with its tokens, versions and log-probs as they were, and restores
the decode step counter, so the sampling keys go on where they stood.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from typing import TYPE_CHECKING, Callable

import jax
import numpy as np

from rlx.data import PromptBatch, PromptRecord
from rlx.rollout.driver import Completion, GroupRollout, Request, Admitted, assemble_groups
from rlx.rollout.engine import stack_media
from rlx.rollout.sampling import SamplingParams

if TYPE_CHECKING:
    from rlx.rollout.driver import OnSample, RolloutDriver, _Session


@dataclasses.dataclass
class HeldPrompt:
    """A prompt whose group is not trained yet, and its finished samples so far."""

    record: PromptRecord
    request: Request
    done: list[Completion] = dataclasses.field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.done) == self.request.samples


@dataclasses.dataclass(frozen=True)
class Carried:
    """The work partial rollouts carry between two steps: every prompt group not handed out yet (oldest first, with
    its finished samples), the samples not placed in a slot yet (`queue`: (request tag, samples), in order), each slot's
    unfinished sample (its tokens so far, as `RolloutDriver.sample_so_far`), the decode step counter (the sampling keys'
    position) and whether the prompt source had run dry."""

    groups: tuple[HeldPrompt, ...]
    queue: tuple[tuple[int, int], ...]
    in_flight: dict[int, Completion]  # by slot
    decode_step: int
    drained: bool


class PartialRollouts:
    def __init__(self, driver: "RolloutDriver", token_budget: int):
        if token_budget < 1:
            raise ValueError(f"rollout.token_budget must be >= 1 generated tokens per step or null (off), got {token_budget}")
        self.driver, self.token_budget = driver, token_budget
        self.session: "_Session | None" = None
        self.queue: deque[Request] = deque()
        self.held: dict[int, HeldPrompt] = {}  # by tag, oldest first
        self._tags = itertools.count()
        self.draw: Callable[[], PromptBatch] | None = None  # more prompts, when slots would idle
        self._shape = (1, 1)  # (samples, max_new_tokens) of the current step's requests
        self._backlog = 1  # prompt groups held before `draw` is not called any more
        self._resumed: Carried | None = None  # placed in the slots of the next session opened

    def snapshot(self) -> Carried:
        """The carried work as it stands between steps (later steps leave it as it is)."""
        session = self.session
        groups = tuple(dataclasses.replace(held, done=list(held.done)) for held in self.held.values())
        queue = [(request.tag, request.samples) for request in self.queue]
        if session is None:
            return Carried(groups, tuple(queue), {}, decode_step=0, drained=False)
        waiting = session.waiting
        unplaced = waiting is not None and waiting.next_sample < waiting.request.samples
        if unplaced:  # its samples first, as the session would place them
            queue.insert(0, (waiting.request.tag, waiting.request.samples - waiting.next_sample))
        in_flight = {slot: self.driver.sample_so_far(session, slot) for slot in session.live_slots()}
        return Carried(groups, tuple(queue), in_flight, int(session.state.step), session.drained and not unplaced)

    def resume(self, carried: Carried) -> None:
        """Takes up `carried` (from `snapshot`, maybe of another process) before the first step: its groups and queue
        now, its unfinished samples in the slots of the first step's session."""
        if self.session is not None or self.held:
            raise RuntimeError("partial rollouts resume carried work before their first step only")
        # Copies: until a later step is sealed, a checkpoint saves `carried` itself, as it was.
        self.held = {held.request.tag: dataclasses.replace(held, done=list(held.done)) for held in carried.groups}
        self.queue = deque(dataclasses.replace(self.held[tag].request, samples=samples) for tag, samples in carried.queue)
        self._tags = itertools.count(max(self.held, default=-1) + 1)
        self._resumed = carried

    def step(self, prompts: PromptBatch, n: int, key: jax.Array, sampling: SamplingParams, max_new_tokens: int,
             min_version: int | None, on_sample: "OnSample | None" = None) -> GroupRollout:
        """One step's batch: `len(prompts)` complete groups, the oldest first; `on_sample` as `generate_groups`."""
        wanted = len(prompts.records)
        # One step's prompts drawn ahead at most: more would only grow stale before the learner gets to them.
        self._shape, self._backlog = (n, max_new_tokens), 2 * wanted
        self._enqueue(prompts)
        if self.session is None:
            self.session = self.driver.open_session(key, sampling, self._pull)
            if self._resumed is not None:
                self._place(self._resumed)
                self._resumed = None
        else:  # a fresh key per step, as without a budget: sampling keys are never reused
            self.session.state = dataclasses.replace(self.session.state, key=jax.random.clone(key))
            self.session.sampling = sampling
        restarted = self._restart_stale(min_version) if min_version is not None else 0
        truncated_before, began, drafting_before = self.driver.truncated_prompts, self.session.buffers.appended, list(self.driver.drafting)
        spent = lambda: self.session.buffers.appended - began >= self.token_budget
        enough = lambda: sum(held.complete for held in self.held.values()) >= wanted
        for completion in self.driver.run(self.session, stop=lambda: spent() and enough()):
            held = self.held[completion.tag]
            held.done.append(completion)
            if on_sample is not None:
                on_sample(held.record, completion.tokens)
        ready = [tag for tag, held in self.held.items() if held.complete][:wanted]
        batch, completions = self._batch([self.held.pop(tag) for tag in ready])
        rollout = assemble_groups(batch, completions, n, max_new_tokens, pad_id=self.driver.engine.pad_id, metrics={})
        rollout.metrics.update(self._metrics(rollout, self.session.buffers.appended - began, restarted))
        rollout.metrics["rollout/truncated_prompts"] = float(self.driver.truncated_prompts - truncated_before)
        rollout.metrics["rollout/compiles"] = float(self.driver.engine.compiled_variants())
        rollout.metrics.update(self.driver.drafting_metrics(drafting_before))
        return rollout

    def _place(self, carried: Carried) -> None:
        """Puts `carried`'s unfinished samples back in their slots: prompts prefilled in one batch, tokens so far run onto
        the cache (`Engine.extend`), each keeping its tokens' versions and log-probs; the decode step counter as it was.
        A sample whose slot this engine lacks (fewer `max_concurrent_decodes` now) starts over from its prompt."""
        session, driver, engine = self.session, self.driver, self.driver.engine
        session.drained = carried.drained
        session.state = dataclasses.replace(session.state, step=jax.device_put(np.int32(carried.decode_step), session.state.step.sharding))
        fits = {slot: sample for slot, sample in carried.in_flight.items() if slot < len(session.owner)}
        for slot in carried.in_flight.keys() - fits.keys():
            self.queue.appendleft(dataclasses.replace(self.held[carried.in_flight[slot].tag].request, samples=1))
        if not fits:
            return
        slots, samples = list(fits), list(fits.values())
        requests = [self.held[sample.tag].request for sample in samples]
        prefix = driver.prefill([sample.prompt for sample in samples], requests)
        session.state = engine.insert_rows(prefix, session.state, list(range(len(slots))), slots)
        origin = prefix.cache.k.shape[2]
        for slot, sample, request in zip(slots, samples, requests):
            prompt_routes = None if sample.routes is None else sample.routes[None, :len(sample.prompt)]
            admitted = Admitted(request, sample.prompt, sample.truncated_prompt, prefix_version=driver.version,
                                 prompt_routes=prompt_routes, next_sample=request.samples)
            session.owner[slot] = (admitted, sample.sample)
            session.buffers.restore(slot, sample, request.max_tokens, session.step, origin, logits_version=driver.version)
        begun = [(slot, sample.tokens) for slot, sample in fits.items() if len(sample.tokens)]
        if begun:
            session.state = engine.extend(driver.params, session.state, [slot for slot, _ in begun], [tokens for _, tokens in begun],
                                          [origin] * len(begun))

    def _enqueue(self, prompts: PromptBatch) -> None:
        n, max_new_tokens = self._shape
        for row, (tokens, start) in enumerate(zip(prompts.tokens, prompts.start)):
            tag = next(self._tags)
            request = Request(tokens[start:], max_new_tokens, samples=n, tag=tag, media=prompts.row_media(row))
            self.held[tag] = HeldPrompt(prompts.records[row], request)
            self.queue.append(request)

    def _pull(self) -> Request | None:
        """The next request for a free slot; draws the next prompt batch rather than let slots idle."""
        if not self.queue and self.draw is not None and len(self.held) < self._backlog:
            self._enqueue(self.draw())
        return self.queue.popleft() if self.queue else None

    def _restart_stale(self, min_version: int) -> int:
        """Samples (in flight or finished, not handed out) holding a token older than `min_version`,
        or whose next token would come from older logits, start over from their prompt, ahead of the
        queue; samples not placed yet whose shared prefill is older are prefilled again."""
        session, buffers = self.session, self.session.buffers
        waiting = session.waiting
        if waiting is not None and waiting.prefix is not None and waiting.prefix_version < min_version:
            self.queue.appendleft(dataclasses.replace(waiting.request, samples=waiting.request.samples - waiting.next_sample))
            session.waiting = None
        restarted = 0
        for slot in session.live_slots():
            held_versions = buffers.versions[slot, :buffers.count[slot]]
            if buffers.logits_version[slot] < min_version or (held_versions.size and held_versions.min() < min_version):
                admitted, _ = session.owner[slot]
                session.owner[slot], buffers.active[slot] = None, False
                self.queue.appendleft(dataclasses.replace(admitted.request, samples=1))
                restarted += 1
        for held in self.held.values():
            fresh = [c for c in held.done if c.versions.min() >= min_version]
            for _ in range(len(held.done) - len(fresh)):
                self.queue.appendleft(dataclasses.replace(held.request, samples=1))
            restarted += len(held.done) - len(fresh)
            held.done = fresh
        return restarted

    @staticmethod
    def _batch(groups: list[HeldPrompt]) -> tuple[PromptBatch, list[Completion]]:
        """The groups' prompts as one left-padded batch, and their completions tagged by its rows."""
        width = max(len(held.request.prompt) for held in groups)
        tokens = np.zeros((len(groups), width), np.int32)
        start = np.array([width - len(held.request.prompt) for held in groups], np.int32)
        for row, held in enumerate(groups):
            tokens[row, start[row]:] = held.request.prompt
        media = stack_media([held.request.media for held in groups], len(groups)) if groups[0].request.media else None
        batch = PromptBatch([held.record for held in groups], tokens, start, media)
        completions = [dataclasses.replace(c, tag=row) for row, held in enumerate(groups) for c in held.done]
        return batch, completions

    def _metrics(self, rollout: GroupRollout, step_tokens: int, restarted: int) -> dict[str, float]:
        session = self.session
        live = session.live_slots()
        versions = rollout.policy_version
        spans = [len(np.unique(row[row >= 0])) for row in versions]
        return {
            "rollout/step_tokens": float(step_tokens),
            "rollout/carried_over_samples": float(len(live)),
            "rollout/partial_tokens": float(session.buffers.count[live].sum()) if live else 0.0,
            "rollout/carried_over_groups": float(len(self.held)),
            "rollout/multi_version_samples": float(sum(span > 1 for span in spans)),
            "rollout/restarted_stale_samples": float(restarted),
        }
