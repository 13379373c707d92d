"""How responses are sampled, and by which engine."""

from __future__ import annotations

import dataclasses
from typing import Literal

from rlx.checks import require_positive
from rlx.rollout.sampling import SamplingParams
from rlx.rollout.speculative import Speculation


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """`n_samples` responses per prompt; `temperature: 0` is greedy. Validation always decodes greedily.

    `backend`: `engine` (rlx's continuous-batching driver) or `jetstream` (JetStream's
    orchestrator driving the same engine; needs `pip install -e '.[jetstream]'`).
    `max_concurrent_decodes` decode slots; `max_prefill_length: null` takes `data.max_prompt_len`;
    a longer prompt is an error or, with `long_prompt: truncate`, keeps its last tokens
    (counted in `rollout/truncated_prompts`). `steps_per_generate` tokens per slot per engine call
    at most (fewer host round trips; `jetstream` uses 1): while samples wait for slots, a call ends once an
    eighth of the slots are free, so a freed slot is refilled after the step it ended in.
    `token_budget`: generated tokens per step (`null`: off). A step then ends once the budget is
    spent and `data.prompts_per_step` groups are complete; unfinished samples keep their slots
    and continue next step (partial rollouts, `rlx/rollout/partial.py`).
    `top_k`/`top_p` truncate the sampled distribution; behaviour log-probs are those of the
    truncated distribution (see `rlx/rollout/sampling.py` for how the learner compares).
    A response ends at a stop token (the tokenizer's `stop_ids`: EOS and end-of-turn) or at
    the token completing one of `stop_strings` (matched on decoded text; `backend: engine` only).
    `dtype`: the generator's compute dtype (its published weights and KV cache are in it; validation
    runs on the same engine); `null` takes `model.dtype`. `bfloat16` with `model.dtype: float32` is
    the production mix of a bfloat16 generator and a float32 learner (their log-probs then differ).
    With an environment (`env.fn`), a sample is a trajectory of at most `max_turns` policy turns,
    and `max_new_tokens` bounds its policy and observation tokens together (`rlx/rollout/turns.py`).
    `speculative: lossless` drafts a second token per forward with the model's MTP head (`model.mtp`) and keeps it
    by exact rejection sampling (`rlx/rollout/speculative.py`): the same samples' distribution and behaviour
    log-probs, 1 to 2 tokens per forward. `speculative: confidence` (PIPO) keeps the draft unverified when the
    model's confidence head rates it >= `spec_threshold`, and records its draft log-prob as its behaviour log-prob
    (the learner's off-policy correction then weighs it; the run config requires one). Both need untruncated
    sampling (`temperature > 0`, no `top_k`/`top_p`) and `backend: engine`; greedy validation decodes without drafts.
    """

    backend: Literal["engine", "jetstream"] = "engine"
    n_samples: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 8
    max_concurrent_decodes: int = 256
    max_prefill_length: int | None = None
    long_prompt: Literal["error", "truncate"] = "error"
    steps_per_generate: int = 2
    token_budget: int | None = None
    stop_strings: tuple[str, ...] = ()
    dtype: Literal["float32", "bfloat16"] | None = None
    max_turns: int = 4
    speculative: Literal["off", "lossless", "confidence"] = "off"
    spec_threshold: float = 0.8

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")
        SamplingParams(self.temperature, self.top_p, self.top_k)  # validates them
        require_positive(self, "max_new_tokens", "max_concurrent_decodes", "steps_per_generate", "max_turns")
        if self.token_budget is not None and self.token_budget < 1:
            raise ValueError(f"token_budget must be >= 1 generated tokens per step or null (off), got {self.token_budget}")
        if self.token_budget is not None and self.backend != "engine":
            raise ValueError(f"token_budget keeps sequences in rlx's driver across steps; it needs backend: engine, got backend: {self.backend}")
        if any(not s for s in self.stop_strings):
            raise ValueError(f"stop_strings must be non-empty strings, got {list(self.stop_strings)!r}")
        if self.stop_strings and self.backend != "engine":
            raise ValueError(f"stop_strings are matched by rlx's driver; they need backend: engine, got backend: {self.backend}")
        if not 0.0 <= self.spec_threshold <= 1.0:
            raise ValueError(f"spec_threshold is the least confidence (a probability in [0, 1]) of a kept draft, got {self.spec_threshold}")
        if self.speculative != "off" and (self.temperature == 0 or self.top_k or self.top_p < 1 or self.backend != "engine"):
            raise ValueError(f"speculative: {self.speculative} drafts from and scores against the untruncated sampled distribution: it needs "
                             f"temperature > 0, top_k: 0, top_p: 1 and backend: engine (got temperature {self.temperature}, "
                             f"top_k {self.top_k}, top_p {self.top_p}, backend {self.backend})")
        if self.max_prefill_length is not None and self.max_prefill_length < 1:
            raise ValueError(f"max_prefill_length must be >= 1 or null (take data.max_prompt_len), got {self.max_prefill_length}")

    @property
    def speculation(self) -> Speculation | None:
        """The engine's drafting (None: off)."""
        if self.speculative == "off":
            return None
        return Speculation(self.speculative, self.spec_threshold if self.speculative == "confidence" else None)
