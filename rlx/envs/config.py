"""Which environment a multi-turn run plays, its tools, and how they run."""

from __future__ import annotations

import dataclasses

from rlx.checks import require_positive
from rlx.envs.sandbox import SandboxConfig


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """`fn`: `package.module:attribute` of an environment class or factory, called with an
    `rlx.envs.EnvContext` once per trajectory (null: single-turn rollouts scored by `reward.fn`).
    `rlx.envs:ToolEnvironment` runs `tools` (built-in `calculator`, `python`, or `package.module:attribute`)
    called in `tool_format` (`hermes`, `plain`, or a `package.module:attribute` `ToolFormat`) and scores the
    final answer with `reward.fn`. `workers` threads run environment calls off the decode loop.
    `demonstrations`: `package.module:attribute` of a function `(records, context, seed) -> records`
    whose answers are whole trajectories for the supervised warm-up (e.g. `rlx.envs.calculator:demonstrations`),
    of which a share `warmup_flaw_rate` use the tools badly. `sandbox`: limits of the `python` tool.
    The turn and token limits are `rollout.max_turns` and `rollout.max_new_tokens`.
    """

    fn: str | None = None
    tools: tuple[str, ...] = ()
    tool_format: str = "hermes"
    workers: int = 8
    demonstrations: str | None = None
    warmup_flaw_rate: float = 0.0
    sandbox: SandboxConfig = SandboxConfig()

    def __post_init__(self) -> None:
        require_positive(self, "workers")
        if self.fn is None and (self.tools or self.demonstrations):
            raise ValueError("env.tools and env.demonstrations need an environment: set env.fn (e.g. rlx.envs:ToolEnvironment)")
        if not 0.0 <= self.warmup_flaw_rate <= 1.0:
            raise ValueError(f"env.warmup_flaw_rate must be in [0, 1], got {self.warmup_flaw_rate}")
        if self.warmup_flaw_rate > 0 and self.demonstrations is None:
            raise ValueError("env.warmup_flaw_rate shapes env.demonstrations: set env.demonstrations too, or the rate to 0")
