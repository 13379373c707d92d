"""Stop strings (`rollout.stop_strings`): a response ends at the token that completes one of them.

Matched on decoded text on the host, after each token; that token stays in the response
and its loss mask, as a stop token does. Stop *token ids* are the engine's (`stop_tokens`,
from the tokenizer's `stop_ids`) and end a slot on the device.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

UTF8_MAX_BYTES = 4  # a byte-level tokenizer may spend one token per byte of a character


class StopStrings:
    def __init__(self, tokenizer: Any, strings: Sequence[str]):
        if tokenizer is None:
            raise ValueError("rollout.stop_strings are matched on decoded text: build the engine with a tokenizer")
        if not strings or any(not s for s in strings):
            raise ValueError(f"rollout.stop_strings must be non-empty strings, got {list(strings)!r}")
        self.tokenizer, self.strings = tokenizer, tuple(strings)
        # Tokens that can hold a stop string ending at the last one: each character takes at most this many.
        self.window = UTF8_MAX_BYTES * max(len(s) for s in strings)

    def completed(self, tokens: np.ndarray) -> bool:
        """Whether the last of `tokens` (a response so far, checked after every token) completes a stop string.

        Only the last `window` tokens are decoded; an earlier completion would have ended the response then.
        """
        text = self.tokenizer.decode(tokens[-self.window:])
        return any(s in text for s in self.strings)
