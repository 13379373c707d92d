"""A character-level tokenizer for synthetic tasks. Special ids are explicit, never inferred."""

from __future__ import annotations

from typing import Iterable, Sequence

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<image>", "<audio>", "<video>")


class CharTokenizer:
    """Maps each character of `alphabet` to one id, after the special tokens.

    Ids: `<pad>`=0, `<bos>`=1, `<eos>`=2, modality placeholders 3..5, then the alphabet.
    """

    def __init__(self, alphabet: str):
        if len(set(alphabet)) != len(alphabet):
            raise ValueError(f"alphabet has repeated characters: {alphabet!r}")
        self.alphabet = alphabet
        self._to_id = {ch: len(SPECIAL_TOKENS) + i for i, ch in enumerate(alphabet)}
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
        self.placeholder_ids = {"image": 3, "audio": 4, "video": 5}

    @property
    def vocab_size(self) -> int:
        return len(SPECIAL_TOKENS) + len(self.alphabet)

    @property
    def vocabulary(self) -> str:
        """Text that changes iff an id would map to another token (what a resumed run must not change)."""
        return self.alphabet

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Ids that end a response: `<eos>`."""
        return (self.eos_id,)

    def encode(self, text: str, *, bos: bool = True) -> list[int]:
        ids = [self.bos_id] if bos else []
        for ch in text:
            if ch not in self._to_id:
                raise ValueError(f"character {ch!r} in {text!r} is not in the tokenizer alphabet {self.alphabet!r}")
            ids.append(self._to_id[ch])
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the alphabet ids, stopping at the first `<eos>`; other special ids are dropped."""
        chars = []
        for token in ids:
            token = int(token)
            if token == self.eos_id:
                break
            if token >= len(SPECIAL_TOKENS) and token - len(SPECIAL_TOKENS) < len(self.alphabet):
                chars.append(self.alphabet[token - len(SPECIAL_TOKENS)])
        return "".join(chars)

    def decode_batch(self, rows: Sequence[Sequence[int]]) -> list[str]:
        return [self.decode(row) for row in rows]
