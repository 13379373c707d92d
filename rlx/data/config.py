"""Where prompts come from and how they are batched."""

from __future__ import annotations

import dataclasses
from typing import Literal

from rlx.checks import require_positive
from rlx.data.media import MAX_IMAGE_PIXELS


@dataclasses.dataclass(frozen=True)
class ArithmeticConfig:
    """Synthetic `a+b=` prompts (`a*b=` for `source: calculator`); operands have `min_digits..max_digits` digits.

    `warmup_flaw` makes a fraction `warmup_flaw_rate` of the warm-up demonstrations
    systematically wrong: `no_carry` adds without carrying (157+291 -> 348), `reversed`
    writes the sum least-significant digit first (448 -> 844), `ramble` gives the right
    sum but keeps repeating its digits for a lognormal number of extra characters
    (median `ramble_median_chars`, cut at `rollout.max_new_tokens`: 448 -> 44844844;
    long-tailed response lengths). The warmed-up policy then knows the task but often answers in the flawed
    way, which only the verifier-driven RL phase can fix.
    """

    min_digits: int = 1
    max_digits: int = 3
    warmup_flaw: Literal["none", "no_carry", "reversed", "ramble"] = "none"
    warmup_flaw_rate: float = 0.0
    ramble_median_chars: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.min_digits <= self.max_digits <= 9:
            raise ValueError(f"need 1 <= min_digits <= max_digits <= 9, got {self.min_digits}..{self.max_digits}")
        if not 0.0 <= self.warmup_flaw_rate <= 1.0:
            raise ValueError(f"warmup_flaw_rate must be in [0, 1], got {self.warmup_flaw_rate}")
        if self.ramble_median_chars < 1:
            raise ValueError(f"ramble_median_chars must be >= 1, got {self.ramble_median_chars}")
        if (self.warmup_flaw == "none") != (self.warmup_flaw_rate == 0.0):
            raise ValueError(
                f"warmup_flaw={self.warmup_flaw!r} with warmup_flaw_rate={self.warmup_flaw_rate}: "
                "set both (a flaw and a rate > 0) or neither"
            )


@dataclasses.dataclass(frozen=True)
class OmniConfig:
    """Synthetic image / audio / video questions (`rlx.data.omni`), cycling through `modalities`.

    `warmup_flaw_rate` of the warm-up demonstrations write the answer twice (`3` -> `33`).
    """

    modalities: tuple[str, ...] = ("image", "audio", "video")
    max_shapes: int = 3
    warmup_flaw_rate: float = 0.0

    def __post_init__(self) -> None:
        unknown = [m for m in self.modalities if m not in ("image", "audio", "video")]
        if unknown or not self.modalities:
            raise ValueError(f"data.omni.modalities {list(self.modalities)}: choose a non-empty subset of image, audio, video")
        if not 1 <= self.max_shapes <= 9:
            raise ValueError(f"data.omni.max_shapes must be in [1, 9], got {self.max_shapes}")
        if not 0.0 <= self.warmup_flaw_rate <= 1.0:
            raise ValueError(f"data.omni.warmup_flaw_rate must be in [0, 1], got {self.warmup_flaw_rate}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """`source: arithmetic`, `calculator` or `omni` generates a built-in task; `source: jsonl` reads `train_path`/`val_path`.
    `calculator` is multiplication (`data.arithmetic`'s digits) for the agentic demo (`configs/demo_agent.yaml`),
    with a character tokenizer over printable ASCII so tool calls and results are text too.

    JSONL rows may reference media files (`"media": {"image": ["imgs/0.png"]}`, paths relative
    to the JSONL file); a record whose media cannot be read is skipped and counted
    (`data/skipped_media`), as is an image (or video frame) of more than `max_image_pixels` pixels, an empty
    video, a frame folder of mixed sizes or a WAV file without a sample rate. `media_workers` grain worker processes preprocess media ahead of use.

    JSONL data uses a character tokenizer built from its text, or the Hugging Face tokenizer
    in `tokenizer_path` (a directory with `tokenizer.json`; by default `model.init_from`'s, filled
    in by `rlx.config.load_config`); `chat_template: true` renders each prompt as a user turn
    through that tokenizer's chat template.
    """

    source: Literal["arithmetic", "calculator", "omni", "jsonl"] = "arithmetic"
    train_path: str | None = None
    val_path: str | None = None
    train_size: int = 20_000
    val_size: int = 256
    prompts_per_step: int = 32
    max_prompt_len: int = 16
    seed: int = 0
    on_bad_row: Literal["skip", "error"] = "skip"
    tokenizer_path: str | None = None
    chat_template: bool = False
    arithmetic: ArithmeticConfig = ArithmeticConfig()
    omni: OmniConfig = OmniConfig()
    media_workers: int = 0
    max_image_pixels: int = MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        require_positive(self, "train_size", "val_size", "prompts_per_step", "max_prompt_len", "max_image_pixels")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.source == "jsonl" and not (self.train_path and self.val_path):
            raise ValueError("source: jsonl needs data.train_path and data.val_path")
        if self.source != "jsonl" and self.tokenizer_path is not None:
            raise ValueError(f"the {self.source} task has its own character tokenizer; tokenizer_path needs source: jsonl")
        if self.source == "calculator" and self.arithmetic.warmup_flaw != "none":
            raise ValueError("data.arithmetic.warmup_flaw shapes the addition task's demonstrations; the calculator task's come from "
                             "env.demonstrations (e.g. rlx.envs.calculator:demonstrations with env.warmup_flaw_rate)")
        if self.media_workers < 0:
            raise ValueError(f"data.media_workers must be >= 0 (0 = preprocess in the main process), got {self.media_workers}")
        if self.chat_template and self.tokenizer_path is None:
            raise ValueError("chat_template: true needs a Hugging Face tokenizer: data.tokenizer_path, or model.init_from "
                             "(a directory with tokenizer.json and a chat template)")
