"""Tool calls in the policy's text: how they are written and read back (a `ToolFormat`), and the built-in formats.

`hermes` (the default; Qwen and Hermes models): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.
`plain` (for tiny character-level models): `<name>argument text</name>`, the text going to the
tool's one required parameter. A turn may hold several calls; a call that cannot be read (bad
JSON, no name, no closing tag) is still a call, whose error goes back to the policy as its result.
A turn without any call is the policy's final answer. A format is pluggable: `env.tool_format`
names a built-in one or a `package.module:attribute` holding a `ToolFormat`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Callable, Sequence

from rlx.plugins import load_object


@dataclasses.dataclass(frozen=True)
class ToolCall:
    name: str | None
    arguments: dict[str, Any] | str  # a str is the `plain` format's one argument text
    error: str | None = None  # why the call could not be read; the policy gets it as the call's result


@dataclasses.dataclass(frozen=True)
class ToolFormat:
    """`parse(turn text) -> calls`; `stop_strings(tool names)` end a policy turn right after a call;
    `response` renders one result (`{content}`) where the tokenizer has no chat template."""

    parse: Callable[[str], list[ToolCall]]
    stop_strings: Callable[[Sequence[str]], tuple[str, ...]]
    response: str


HERMES_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def parse_hermes(text: str) -> list[ToolCall]:
    """Every `<tool_call>...</tool_call>` in `text`, and an unterminated one at its end."""
    calls = [_hermes_call(body) for body in HERMES_CALL.findall(text)]
    if "<tool_call>" in HERMES_CALL.sub("", text):
        calls.append(ToolCall(None, {}, "unterminated <tool_call>: close it with </tool_call>"))
    return calls


def _hermes_call(body: str) -> ToolCall:
    try:
        call = json.loads(body)
    except json.JSONDecodeError as err:
        return ToolCall(None, {}, f"the tool call is not valid JSON ({err.msg} at character {err.pos})")
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return ToolCall(None, {}, 'a tool call must be a JSON object {"name": ..., "arguments": {...}}')
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return ToolCall(call["name"], {}, "the arguments are a string that is not a JSON object")
    if not isinstance(arguments, dict):
        return ToolCall(call["name"], {}, f"the arguments must be a JSON object, got {type(arguments).__name__}")
    return ToolCall(call["name"], arguments)


PLAIN_CALL = re.compile(r"<([A-Za-z_][\w.-]*)>(.*?)</\1>", re.DOTALL)
PLAIN_OPENING = re.compile(r"<([A-Za-z_][\w.-]*)>")


def parse_plain(text: str) -> list[ToolCall]:
    """Every `<name>argument</name>` in `text`, and an unterminated `<name>` at its end."""
    calls = [ToolCall(name, argument) for name, argument in PLAIN_CALL.findall(text)]
    opened = PLAIN_OPENING.search(PLAIN_CALL.sub("", text))
    if opened:
        calls.append(ToolCall(opened.group(1), "", f"unterminated <{opened.group(1)}>: close it with </{opened.group(1)}>"))
    return calls


TOOL_FORMATS: dict[str, ToolFormat] = {
    "hermes": ToolFormat(parse_hermes, lambda names: ("</tool_call>",), "<tool_response>\n{content}\n</tool_response>\n"),
    "plain": ToolFormat(parse_plain, lambda names: tuple(f"</{name}>" for name in names), "<out>{content}</out>"),
}


def tool_format(name: str) -> ToolFormat:
    """A built-in format by name, or a `ToolFormat` by `package.module:attribute`."""
    if name in TOOL_FORMATS:
        return TOOL_FORMATS[name]
    if ":" not in name:
        raise ValueError(f"env.tool_format {name!r} is not one of {', '.join(TOOL_FORMATS)} or a 'package.module:attribute'")
    loaded = load_object(name)
    if not isinstance(loaded, ToolFormat):
        raise ValueError(f"env.tool_format {name!r} is a {type(loaded).__name__}, not an rlx.envs.ToolFormat")
    return loaded
