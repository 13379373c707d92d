"""How responses are sampled, and by which engine."""

from __future__ import annotations

import dataclasses
from typing import Literal

from rlx.checks import require_positive


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """`n_samples` responses per prompt; `temperature: 0` is greedy. Validation always decodes greedily.

    `backend`: `engine` (rlx's continuous-batching driver) or `jetstream` (JetStream's
    orchestrator driving the same engine; needs `pip install -e '.[jetstream]'`).
    `max_concurrent_decodes` decode slots; `max_prefill_length: null` takes `data.max_prompt_len`;
    a longer prompt is an error or, with `long_prompt: truncate`, keeps its last tokens
    (counted in `rollout/truncated_prompts`). `steps_per_generate` tokens per slot per engine call
    (fewer host round trips; a finished slot idles at most that many steps; `jetstream` uses 1).
    `token_budget`: generated tokens per step (`null`: off). A step then ends once the budget is
    spent and `data.prompts_per_step` groups are complete; unfinished samples keep their slots
    and continue next step (partial rollouts, `rlx/rollout/partial.py`).
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

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 keeps every token), got {self.top_k}")
        require_positive(self, "max_new_tokens", "max_concurrent_decodes", "steps_per_generate")
        if self.token_budget is not None and self.token_budget < 1:
            raise ValueError(f"token_budget must be >= 1 generated tokens per step or null (off), got {self.token_budget}")
        if self.token_budget is not None and self.backend != "engine":
            raise ValueError(f"token_budget keeps sequences in rlx's driver across steps; it needs backend: engine, got backend: {self.backend}")
        if self.max_prefill_length is not None and self.max_prefill_length < 1:
            raise ValueError(f"max_prefill_length must be >= 1 or null (take data.max_prompt_len), got {self.max_prefill_length}")
