"""Sizes of the modality encoders. Disabled by default: a text-only model has no encoder weights."""

from __future__ import annotations

import dataclasses

from rlx.checks import require_positive


@dataclasses.dataclass(frozen=True)
class EncoderBlocksConfig:
    """The transformer stack shared by the vision and audio encoders (pre-norm, GELU MLP)."""

    width: int = 64
    layers: int = 1
    heads: int = 4
    mlp: int = 128
    trainable: bool = True  # false: encoder weights get no gradient (stop_gradient on the encoder output)

    def __post_init__(self) -> None:
        require_positive(self, "width", "layers", "heads", "mlp")
        if self.width % self.heads:
            raise ValueError(f"encoder width ({self.width}) must be a multiple of heads ({self.heads})")


@dataclasses.dataclass(frozen=True)
class VisionConfig(EncoderBlocksConfig):
    """Images `[image_size, image_size, 3]` cut into `patch_size` squares, one token per patch.

    After the transformer blocks, each `spatial_merge` x `spatial_merge` square of patch tokens
    is averaged into one token (fewer LLM tokens, as Qwen2-VL's patch merger does). Video is
    `video_frames` sampled frames of the same size; each frame is encoded like an image plus a
    learned temporal embedding, so a video gives `video_frames` x `image_tokens` tokens.
    `image_token_id` / `video_token_id` are the tokenizer's placeholder ids.
    """

    enabled: bool = False
    image_size: int = 16
    patch_size: int = 4
    video_frames: int = 4
    spatial_merge: int = 2
    image_token_id: int = 3
    video_token_id: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, "image_size", "patch_size", "video_frames")
        require_positive(self, "spatial_merge")
        if self.image_size % (self.patch_size * self.spatial_merge):
            raise ValueError(
                f"model.vision.image_size ({self.image_size}) must be a multiple of patch_size * spatial_merge "
                f"({self.patch_size} * {self.spatial_merge})"
            )

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def image_tokens(self) -> int:
        return self.patches // self.spatial_merge**2

    @property
    def video_tokens(self) -> int:
        return self.video_frames * self.image_tokens


@dataclasses.dataclass(frozen=True)
class AudioConfig(EncoderBlocksConfig):
    """Log-mel spectrograms `[mel_frames, n_mels]`, downsampled 4x in time by two stride-2 convolutions.

    The log-mel front end runs in the data workers (`rlx.data.media.log_mel`) at `sample_rate`
    with `hop_length`-sample hops; `audio_token_id` is the tokenizer's placeholder id.
    """

    enabled: bool = False
    sample_rate: int = 8000
    n_mels: int = 16
    mel_frames: int = 32
    hop_length: int = 128
    audio_token_id: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, "sample_rate", "n_mels", "mel_frames", "hop_length")
        if self.mel_frames % 4:
            raise ValueError(f"model.audio.mel_frames must be a multiple of 4 (two stride-2 convolutions), got {self.mel_frames}")

    @property
    def audio_tokens(self) -> int:
        return self.mel_frames // 4
