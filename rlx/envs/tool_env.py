"""A tool-calling environment: each policy turn's tool calls run, their results come back as one observation;
a turn without a call is the final answer, scored by the run's reward function."""

from __future__ import annotations

from typing import Any

from rlx.data import PromptRecord
from rlx.envs.base import EnvContext
from rlx.envs.parsing import ToolCall
from rlx.envs.tools import ToolError


class ToolEnvironment:
    """`env.fn: rlx.envs:ToolEnvironment` with `env.tools` and `env.tool_format`.

    `info` counts `tool_calls` and `tool_errors` (calls that could not be read, named an unknown
    tool, had wrong arguments, or failed inside the tool) per step. Tool descriptions are not added
    to prompts: the prompt (or the warm-up) must teach the calls.
    """

    def __init__(self, context: EnvContext):
        self.context = context
        self.record: PromptRecord | None = None

    @staticmethod
    def stop_strings(context: EnvContext) -> tuple[str, ...]:
        return context.format.stop_strings(tuple(context.tools))

    def reset(self, record: PromptRecord) -> None:
        self.record = record
        return None  # the prompt as the data pipeline rendered it

    def step(self, action: str) -> tuple[str | None, float, bool, dict[str, Any]]:
        calls = self.context.format.parse(action)
        if not calls:
            return None, float(self.context.reward_fn(action, self.record)), True, {"tool_calls": 0, "tool_errors": 0}
        results = [self.run(call) for call in calls]
        errors = sum(not ok for _, ok in results)
        return self.context.render([text for text, _ in results]), 0.0, False, {"tool_calls": len(calls), "tool_errors": errors}

    def run(self, call: ToolCall) -> tuple[str, bool]:
        """(the call's result, True), or (`error: <why>`, False)."""
        if call.error is not None:
            return f"error: {call.error}", False
        tool = self.context.tools.get(call.name)
        if tool is None:
            return f"error: unknown tool {call.name!r}; tools: {', '.join(self.context.tools)}", False
        try:
            return tool(call.arguments), True
        except ToolError as err:
            return f"error: {err}", False
