"""Tool results as the text of an observation: the chat template's tool turn, or the tool format's plain one.

With a chat template, the observation is everything the template writes between the end of the
assistant's text (the policy stopped right after its call) and the next assistant turn's first
token: for Qwen, `<|im_end|>\\n<|im_start|>user\\n<tool_response>\\n...\\n</tool_response><|im_end|>\\n<|im_start|>assistant\\n`.
It is found by rendering a short chat with and without the tool messages. A character tokenizer
gets the format's `response` per result, with characters outside its alphabet replaced by `?`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from rlx.envs.parsing import ToolFormat

_ASSISTANT_TEXT = "\x00assistant text\x00"  # stands for the policy's turn in the probe chat


def tool_turn_renderer(tokenizer: Any, format_: ToolFormat) -> Callable[[Sequence[str]], str]:
    """`render(results) -> observation text` for this tokenizer (see the module docstring)."""
    if getattr(tokenizer, "chat_template", None):
        render_chat_tool_turn(tokenizer, ["probe"])  # a template that cannot render tool turns fails here, at load
        return lambda results: render_chat_tool_turn(tokenizer, results)
    alphabet = getattr(tokenizer, "alphabet", None)

    def render(results: Sequence[str]) -> str:
        text = "".join(format_.response.format(content=result) for result in results)
        return text if alphabet is None else "".join(ch if ch in alphabet else "?" for ch in text)

    return render


def render_chat_tool_turn(tokenizer: Any, results: Sequence[str]) -> str:
    chat = [{"role": "user", "content": "question"}, {"role": "assistant", "content": _ASSISTANT_TEXT}]
    before = tokenizer.apply_chat_template(chat, add_generation_prompt=False)
    after = tokenizer.apply_chat_template(chat + [{"role": "tool", "content": r} for r in results], add_generation_prompt=True)
    cut = before.find(_ASSISTANT_TEXT)
    if cut < 0 or not after.startswith(before[: cut + len(_ASSISTANT_TEXT)]):
        raise ValueError("the tokenizer's chat template does not render an assistant turn followed by tool turns as a continuation "
                         "of the same text; multi-turn tool use needs a template with a `tool` role (Qwen, Hermes)")
    return after[cut + len(_ASSISTANT_TEXT):]
