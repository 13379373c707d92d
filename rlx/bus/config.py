"""How far generation may run ahead of training, and how much the bus may hold."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class BusConfig:
    """`max_staleness`: the generator may draw step `s`'s rollouts once the learner has finished
    step `s - 1 - max_staleness` (0: strictly on-policy, the synchronous loop; `k`: up to `k`
    policy versions ahead). `capacity`: prompt groups the bus holds before producers block
    (`null`: one step's groups per admitted step, `(max_staleness + 1) * data.prompts_per_step`).
    `interrupt`: `off` swaps published weights only between rollout batches; `keep_cache` also
    between generate calls of a batch, in-flight sequences continuing under the new weights with
    their KV cache kept (each token carries the version that produced it); `recompute_cache` swaps
    there too but first rebuilds every in-flight sequence's KV cache under the new weights (one
    forward pass over prompt + tokens so far), so later tokens are exactly what the new weights give.
    """

    max_staleness: int = 0
    capacity: int | None = None
    interrupt: Literal["off", "keep_cache", "recompute_cache"] = "off"

    def __post_init__(self) -> None:
        if self.max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0 (0 = strictly on-policy), got {self.max_staleness}")
        if self.capacity is not None and self.capacity < 1:
            raise ValueError(f"capacity must be >= 1 prompt groups or null (derive it), got {self.capacity}")

    def groups_held(self, prompts_per_step: int) -> int:
        return self.capacity if self.capacity is not None else (self.max_staleness + 1) * prompts_per_step
