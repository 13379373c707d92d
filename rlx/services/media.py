"""Wiring between the model's encoders and the data pipeline's media preprocessing."""

from __future__ import annotations

from typing import Any

from rlx.data.media import MediaSpec
from rlx.models import ModelConfig
from rlx.errors import UserError


def media_spec(model: ModelConfig) -> MediaSpec | None:
    """The encoder input shapes and placeholder sizes of `model`; None for a text-only model."""
    vision, audio = model.vision, model.audio
    tokens = []
    if vision.enabled:
        tokens += [("image", vision.image_tokens), ("video", vision.video_tokens)]
    if audio.enabled:
        tokens.append(("audio", audio.audio_tokens))
    if not tokens:
        return None
    return MediaSpec(
        image_size=vision.image_size, video_frames=vision.video_frames, sample_rate=audio.sample_rate,
        n_mels=audio.n_mels, mel_frames=audio.mel_frames, hop_length=audio.hop_length, tokens=tuple(tokens),
    )


def check_placeholder_ids(model: ModelConfig, tokenizer: Any) -> None:
    """The encoders' placeholder ids must be the tokenizer's, or features land on the wrong tokens."""
    if media_spec(model) is None:
        return
    ids = getattr(tokenizer, "placeholder_ids", None)
    if ids is None:
        raise UserError("modality encoders need a tokenizer with <image>/<audio>/<video> placeholder tokens (the character tokenizer has them)")
    expected = {
        "model.vision.image_token_id": (model.vision.image_token_id, ids["image"]),
        "model.vision.video_token_id": (model.vision.video_token_id, ids["video"]),
        "model.audio.audio_token_id": (model.audio.audio_token_id, ids["audio"]),
    }
    for key, (configured, actual) in expected.items():
        if configured != actual:
            raise UserError(f"{key} = {configured}, but the tokenizer's placeholder id is {actual}; set {key}={actual}")
