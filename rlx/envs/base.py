"""The environment interface, what an environment is made with, and loading one by dotted path (`env.fn`).

An environment is any object with

    reset(record) -> observation        # None: the prompt as the data pipeline rendered it
    step(action) -> (observation, reward, done, info)

either may be `async def`. `record` is the prompt's `PromptRecord` (media included); `action` is the
text of one policy turn; an observation is text (encoded as is: render turns yourself, or use
`EnvContext.render` for tool results) or token ids; `info` values that are numbers are averaged
per trajectory into `agent/<name>` metrics. One environment is made per trajectory by calling
`env.fn(context)`; a class may also define `stop_strings(context) -> tuple[str, ...]` (a static or
class method): strings that end a policy turn. How trajectories run is `rlx.rollout.turns`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, Sequence

from rlx.data import PromptRecord
from rlx.envs.config import EnvConfig
from rlx.envs.parsing import ToolFormat, tool_format
from rlx.envs.rendering import tool_turn_renderer
from rlx.envs.tools import Tool, resolve_tools
from rlx.plugins import load_object

RewardFn = Callable[[str, PromptRecord], float]


class Environment(Protocol):
    def reset(self, record: PromptRecord) -> Any: ...

    def step(self, action: str) -> tuple[Any, float, bool, dict[str, Any]]: ...


@dataclasses.dataclass(frozen=True)
class EnvContext:
    """What `env.fn` is called with: the settings, the tokenizer, the run's reward function (so final
    answers are scored as validation scores them), the tools, their call format, and `render`, which
    turns tool results into the observation text (the chat template's tool turn, or the format's)."""

    config: EnvConfig
    tokenizer: Any
    reward_fn: RewardFn
    tools: dict[str, Tool]
    format: ToolFormat
    render: Callable[[Sequence[str]], str]


@dataclasses.dataclass(frozen=True)
class Environments:
    """A loaded `env.fn`: `make()` gives a fresh environment; `stop_strings` end a policy turn."""

    context: EnvContext
    factory: Callable[[EnvContext], Environment]
    stop_strings: tuple[str, ...]

    def make(self) -> Environment:
        return self.factory(self.context)


def load_environments(config: EnvConfig, tokenizer: Any, reward_fn: RewardFn) -> Environments | None:
    """`env.fn` with its context, or None for single-turn runs (`env.fn: null`)."""
    if config.fn is None:
        return None
    factory = load_object(config.fn)
    if not callable(factory):
        raise ValueError(f"env.fn {config.fn!r} is a {type(factory).__name__}; it must be a class or function taking an EnvContext")
    format_ = tool_format(config.tool_format)
    context = EnvContext(config, tokenizer, reward_fn, resolve_tools(config.tools, config.sandbox), format_,
                         tool_turn_renderer(tokenizer, format_))
    stop = getattr(factory, "stop_strings", None)
    return Environments(context, factory, tuple(stop(context)) if callable(stop) else ())
