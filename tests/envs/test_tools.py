"""Tools with JSON schemas, the built-in calculator and python tools, and the tool-calling environment."""

import pytest

from rlx.data import CharTokenizer, PromptRecord
from rlx.data.arithmetic import CALCULATOR_ALPHABET
from rlx.data.hf_tokenizer import HFTokenizer
from rlx.envs import EnvConfig, SandboxConfig, ToolError, calculator, load_environments, resolve_tools, tool
from rlx.envs.calculator import demonstrations, estimate
from rlx.rewards.verifiers import exact_match

RECORD = PromptRecord("r0", "12345*6789=", "83810205")


@tool
def scale(value: float, factor: int = 2, label: str = "") -> str:
    """Multiplies a value."""
    return f"{label}{value * factor}"


def test_schemas_come_from_signatures_and_arguments_are_checked():
    assert scale.schema["function"] == {"name": "scale", "description": "Multiplies a value.", "parameters": {
        "type": "object", "properties": {"value": {"type": "number"}, "factor": {"type": "integer"}, "label": {"type": "string"}},
        "required": ["value"]}}
    assert scale({"value": 1.5, "factor": 3}) == "4.5" and scale("2") == "4"  # a plain call's text goes to `value`, read as JSON
    for arguments, message in (({}, "missing \\['value'\\]"), ({"value": 1, "size": 2}, "unknown \\['size'\\]"),
                               ({"value": "1"}, "'value' must be a number, got str"), ({"value": 1, "factor": True}, "must be a integer")):
        with pytest.raises(ToolError, match=message):
            scale(arguments)
    with pytest.raises(TypeError, match="needs a type hint"):
        tool(lambda x: x)


def test_calculator_is_exact_and_refuses_anything_but_arithmetic():
    assert calculator("12345*6789") == "83810205" and calculator("(2+3)**2 - 7 // 2") == "22" and calculator("7/2") == "3.5"
    for expression, message in (("12345x6789", "bad expression"), ("__import__('os')", "bad expression"), ("1/0", "division by zero"),
                                ("9**9**9", "too large"), ("2.0**5000", "too large"), ("[1]*3", "bad expression")):
        with pytest.raises(ToolError, match=message):
            calculator(expression)


def test_python_tool_runs_in_the_sandbox_and_reports_errors():
    (python,) = resolve_tools(("python",), SandboxConfig(timeout_s=5, cpu_s=2)).values()
    assert python({"code": "print(sum(range(10)))"}) == "45"
    with pytest.raises(ToolError, match="NameError"):
        python({"code": "print(undefined)"})


def context(tool_format="plain", tokenizer=CharTokenizer(CALCULATOR_ALPHABET), tools=("calculator",), **overrides):
    config = EnvConfig(fn="rlx.envs:ToolEnvironment", tools=tools, tool_format=tool_format, **overrides)
    return load_environments(config, tokenizer, exact_match)


def test_tool_environment_runs_calls_reports_errors_and_scores_the_final_answer():
    environments = context(tools=("calculator", "tests.envs.test_tools:scale"))
    assert environments.stop_strings == ("</calculator>", "</scale>")
    env = environments.make()
    assert env.reset(RECORD) is None
    observation, reward, done, info = env.step("<calculator>12345*6789</calculator>")
    assert (observation, reward, done, info) == ("<out>83810205</out>", 0.0, False, {"tool_calls": 1, "tool_errors": 0})
    observation, _, done, info = env.step("<calculator>1x2</calculator><weather>x</weather><scale>3</scale><calculator>4*")
    assert observation == ("<out>error: bad expression</out><out>error: unknown tool 'weather'; tools: calculator, scale</out>"
                           "<out>6</out><out>error: unterminated <calculator>: close it with </calculator></out>")
    assert not done and info == {"tool_calls": 4, "tool_errors": 3}
    assert env.step("83810205") == (None, 1.0, True, {"tool_calls": 0, "tool_errors": 0})
    fresh = environments.make()  # one per trajectory
    fresh.reset(RECORD)
    assert fresh.step(" 83810205\n")[1] == 1.0 and fresh.step("8")[1] == 0.0  # scored by reward.fn (exact_match)


def test_hermes_calls_with_a_chat_template_come_back_as_its_tool_turn(tmp_path):
    from tests.data.test_hf_tokenizer import _write

    template = """{%- for message in messages %}
    {%- if message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\\n' }}{%- endif %}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"""  # Qwen3's tool-turn rendering
    config = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None, "chat_template": template}
    tokenizer = HFTokenizer.from_directory(_write(tmp_path, config))
    env = context("hermes", tokenizer).make()
    env.reset(RECORD)
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>'
    observation, _, _, _ = env.step(call + call)
    assert observation == ("<|im_end|>\n<|im_start|>user\n<tool_response>\n42\n</tool_response>\n<tool_response>\n42\n"
                           "</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_plain_results_outside_a_character_alphabet_are_replaced():
    env = context(tokenizer=CharTokenizer("0123456789<>/outer: "), tools=("tests.envs.test_tools:scale",)).make()
    env.reset(RECORD)
    assert env.step("<scale>1.5</scale>")[0] == "<out>3?0</out>"


def test_calculator_demonstrations_are_played_against_the_environment_with_the_flaws_asked_for():
    records = [PromptRecord(f"r{i}", f"{a}*{b}=", str(a * b)) for i, (a, b) in enumerate(zip(range(1000, 1400, 2), range(5000, 5200)))]
    played = demonstrations(records, context(demonstrations="rlx.envs.calculator:demonstrations", warmup_flaw_rate=0.6).context, seed=0)
    good = [r for r in played if r.answer.endswith(f"</out>{r.answer.split('</out>')[0].split('<out>')[-1]}") and "error" not in r.answer]
    bad_calls = [r for r in played if "x" in r.answer and "<out>error: bad expression</out>" in r.answer]
    no_call = [r for r in played if "<calculator>" not in r.answer]
    assert len(good) + len(bad_calls) + len(no_call) == len(records)
    assert 0.3 < len(good) / len(records) < 0.5 and len(bad_calls) > len(no_call) > 0  # flawed: 3 bad calls to 1 answer without
    first = played[records.index(next(r for r in records if r.id == good[0].id))]
    a, b = first.prompt.rstrip("=").split("*")
    assert first.answer == f"<calculator>{a}*{b}</calculator><out>{int(a) * int(b)}</out>{int(a) * int(b)}"
    assert all(r.answer == estimate(int(records[int(r.id[1:])].answer)) for r in no_call)
    assert estimate(83810205) == "84000000"
