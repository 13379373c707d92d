"""Prompt records: what a dataset row becomes before tokenization. Modality-aware from day one."""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

MODALITIES = ("image", "audio", "video")


@dataclasses.dataclass(frozen=True)
class PromptRecord:
    """One verifiable prompt.

    `media` maps a modality name to the items the prompt's `<image>`/`<audio>`/`<video>`
    placeholders refer to, in order of appearance: arrays, or paths of media files.
    """

    id: str
    prompt: str
    answer: str
    media: Mapping[str, tuple[np.ndarray | str, ...]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for field in ("id", "prompt", "answer"):
            if not isinstance(getattr(self, field), str):
                raise TypeError(f"PromptRecord.{field} must be a string, got {type(getattr(self, field)).__name__}")
        if not self.prompt:
            raise ValueError(f"record {self.id!r}: prompt is empty")
        unknown = set(self.media) - set(MODALITIES)
        if unknown:
            raise ValueError(f"record {self.id!r}: unknown modalities {sorted(unknown)}; supported: {MODALITIES}")
