"""Tool-call parsing: well-formed, malformed, partial and multiple calls, in both built-in formats."""

import pytest

from rlx.envs import ToolCall, ToolFormat, parse_hermes, parse_plain, tool_format


def test_hermes_reads_every_call_in_order_with_text_around_them():
    text = ('Let me compute. <tool_call>\n{"name": "calculator", "arguments": {"expression": "2*3"}}\n</tool_call>'
            'and <tool_call>{"name": "python", "arguments": "{\\"code\\": \\"print(1)\\"}"}</tool_call> done')
    assert parse_hermes(text) == [ToolCall("calculator", {"expression": "2*3"}), ToolCall("python", {"code": "print(1)"})]


def test_hermes_malformed_calls_become_calls_with_errors():
    (bad_json,) = parse_hermes('<tool_call>{"name": "calculator", "arguments": {expression: 1}}</tool_call>')
    assert bad_json.name is None and "not valid JSON" in bad_json.error
    (no_name,) = parse_hermes('<tool_call>{"arguments": {}}</tool_call>')
    assert no_name.error.startswith("a tool call must be a JSON object")
    (not_object,) = parse_hermes('<tool_call>["calculator"]</tool_call>')
    assert not_object.error is not None
    (list_arguments,) = parse_hermes('<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call>')
    assert list_arguments.name == "f" and "must be a JSON object, got list" in list_arguments.error
    (string_arguments,) = parse_hermes('<tool_call>{"name": "f", "arguments": "not json"}</tool_call>')
    assert "not a JSON object" in string_arguments.error


def test_hermes_partial_call_at_the_end_is_reported_and_complete_ones_kept():
    calls = parse_hermes('<tool_call>{"name": "f", "arguments": {}}</tool_call><tool_call>{"name": "g", "argu')
    assert calls[0] == ToolCall("f", {}) and calls[1].name is None and "unterminated <tool_call>" in calls[1].error
    assert parse_hermes("the answer is 42") == []  # no call: a final answer
    assert parse_hermes('<tool_call>{"name": "f"}</tool_call>') == [ToolCall("f", {})]  # arguments may be left out


def test_plain_reads_name_and_argument_text_and_partial_calls():
    assert parse_plain("<calculator>12345*6789</calculator>") == [ToolCall("calculator", "12345*6789")]
    two = parse_plain("<calculator>1+1</calculator> then <python>print(2)\n</python>")
    assert two == [ToolCall("calculator", "1+1"), ToolCall("python", "print(2)\n")]
    (partial,) = parse_plain("<calculator>12*")
    assert partial.name == "calculator" and "unterminated <calculator>" in partial.error
    (mismatched,) = parse_plain("<calculator>12</calc>")
    assert mismatched.error is not None
    assert parse_plain("83810205") == [] and parse_plain("1 < 2 > 0") == []


def test_formats_by_name_or_dotted_path_with_their_stop_strings():
    assert tool_format("hermes").stop_strings(["calculator"]) == ("</tool_call>",)
    assert tool_format("plain").stop_strings(["calculator", "python"]) == ("</calculator>", "</python>")
    assert tool_format("tests.envs.test_parsing:BANG") is BANG
    assert tool_format("tests.envs.test_parsing:BANG").parse("!f x") == [ToolCall("f", "x")]
    with pytest.raises(ValueError, match="not an rlx.envs.ToolFormat"):
        tool_format("rlx.envs.parsing:parse_hermes")
    with pytest.raises(ValueError, match="is not one of hermes, plain"):
        tool_format("json")


# A pluggable format: `!name argument` on a line.
BANG = ToolFormat(lambda text: [ToolCall(*line[1:].split(" ", 1)) for line in text.splitlines() if line.startswith("!")],
                  lambda names: ("\n",), "> {content}\n")
