"""Hugging Face tokenizers (`tokenizer.json`) behind the `CharTokenizer` interface, with chat templates.

Special tokens come from `tokenizer_config.json` (`bos_token`, `eos_token`, `pad_token`) and
are looked up by name; an id of 0 is a real id. The chat template (the `chat_template` key,
or `chat_template.jinja` beside it) is rendered with jinja2 in a sandbox, as
`transformers` does, so prompts match what the model was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer
from rlx.errors import MissingInputError

Message = dict[str, Any]


class HFTokenizer:
    """`encode`, `decode`, `decode_batch`, `vocab_size`, `pad_id`, `bos_id`, `eos_id` like `CharTokenizer`.

    `bos_id` is None when the model has no BOS token (Qwen3); `encode(..., bos=True)` then adds none.
    `pad_id` falls back to `eos_id` when the tokenizer defines no pad token.
    """

    def __init__(self, tokenizer: Tokenizer, config: dict[str, Any], chat_template: str | None, end_of_turn_ids: Sequence[int] = ()):
        self._tokenizer = tokenizer
        self._config = config
        self.eos_id = self._special_id("eos_token")
        if self.eos_id is None:
            raise ValueError("tokenizer_config.json names no eos_token; generation could never stop")
        self.bos_id = self._special_id("bos_token")
        pad = self._special_id("pad_token")
        self.pad_id = self.eos_id if pad is None else pad
        self.placeholder_ids: dict[str, int] = {}
        self.chat_template = chat_template
        self._stop_ids = tuple(dict.fromkeys([self.eos_id, *(int(i) for i in end_of_turn_ids)]))

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Ids that end a response: EOS, then the `eos_token_id`s of `generation_config.json` (Qwen3: `<|im_end|>`, `<|endoftext|>`)."""
        return self._stop_ids

    @classmethod
    def from_directory(cls, path: str | Path) -> "HFTokenizer":
        """Reads `tokenizer.json`, `tokenizer_config.json` and, if present, `chat_template.jinja` and `generation_config.json`."""
        path = Path(path)
        if not (path / "tokenizer.json").is_file():
            raise MissingInputError(f"{path}: no tokenizer.json (only fast Hugging Face tokenizers are supported)")
        config_file = path / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        template_file = path / "chat_template.jinja"
        template = template_file.read_text() if template_file.is_file() else config.get("chat_template")
        generation_file = path / "generation_config.json"
        end_of_turn = json.loads(generation_file.read_text()).get("eos_token_id", []) if generation_file.is_file() else []
        end_of_turn = [end_of_turn] if isinstance(end_of_turn, int) else end_of_turn
        return cls(Tokenizer.from_file(str(path / "tokenizer.json")), config, template, end_of_turn)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def vocabulary(self) -> str:
        """Text that changes iff an id would map to another token (what a resumed run must not change)."""
        vocab = self._tokenizer.get_vocab(with_added_tokens=True)
        return "\n".join(sorted(f"{index}\t{token}" for token, index in vocab.items()))

    def encode(self, text: str, *, bos: bool = True) -> list[int]:
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        return [self.bos_id] + ids if bos and self.bos_id is not None else ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text up to the first EOS, special tokens dropped."""
        kept = []
        for token in ids:
            if int(token) == self.eos_id:
                break
            kept.append(int(token))
        return self._tokenizer.decode(kept, skip_special_tokens=True)

    def decode_batch(self, rows: Sequence[Sequence[int]]) -> list[str]:
        return [self.decode(row) for row in rows]

    def apply_chat_template(self, messages: Sequence[Message], *, add_generation_prompt: bool = True, **variables: Any) -> str:
        """The chat rendered as the model's prompt text (`messages` as [{"role": ..., "content": ...}])."""
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat_template (tokenizer_config.json or chat_template.jinja)")
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = _raise
        context = {k: v for k, v in self._config.items() if k.endswith("_token") and isinstance(v, str)}
        return environment.from_string(self.chat_template).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, **context, **variables
        )

    def encode_chat(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the rendered chat; the template writes its own special tokens, so no BOS is added."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt), bos=False)

    def _special_id(self, key: str) -> int | None:
        value = self._config.get(key)
        if isinstance(value, dict):  # older configs store {"content": "<|im_end|>", ...}
            value = value.get("content")
        if value is None:
            return None
        token_id = self._tokenizer.token_to_id(value)
        if token_id is None:
            raise ValueError(f"tokenizer_config.json: {key} {value!r} is not a token of tokenizer.json")
        return token_id


def _raise(message: str) -> None:
    raise TemplateError(message)
