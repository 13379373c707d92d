"""Media readers and preprocessing: images (PNG/JPEG), audio (WAV) and video (frame folders or .npy).

Everything here is numpy/Pillow and runs in grain's worker processes. A record's media item
is either an array (synthetic tasks) or a file path (JSONL datasets, relative paths already
resolved against the dataset's folder). Preprocessing turns an item into the fixed-shape
encoder input of its modality, as described by `MediaSpec`:

* image: RGB, resized to `image_size` square (bilinear), scaled to [-1, 1];
* audio: mono float waveform resampled to `sample_rate` (linear interpolation), then a
  log-mel spectrogram `[mel_frames, n_mels]` (Hann-windowed STFT, `n_fft = 2 * hop_length`),
  cropped or zero-padded in time;
* video: `video_frames` frames sampled uniformly over the clip, each processed like an image.
"""

from __future__ import annotations

import dataclasses
import functools
import wave
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from rlx.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
AUDIO_SUFFIXES = (".wav",)
VIDEO_FORMATS = ("a folder of PNG/JPEG frames", ".npy array [frames, H, W, 3]")
SUPPORTED = {"image": "PNG, JPEG", "audio": "WAV (PCM 8/16/32-bit)", "video": ", ".join(VIDEO_FORMATS)}

MediaItem = np.ndarray | str
MAX_IMAGE_PIXELS = 4096 * 4096  # `data.max_image_pixels`' default: larger images are skipped, never decoded every epoch
UNLIMITED = 2**62  # preprocessing reads files the loader already checked against the configured limit


class MediaReadError(ValueError):
    """A media file exists in the dataset but cannot be read or decoded."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot read media file {path}: {reason}")
        self.path = path


class UnsupportedMediaError(UserError):
    """A media file's format is not one rlx reads."""


@dataclasses.dataclass(frozen=True)
class MediaSpec:
    """Encoder input shapes and placeholder sizes; built from the model's encoder config."""

    image_size: int = 16
    video_frames: int = 4
    sample_rate: int = 8000
    n_mels: int = 16
    mel_frames: int = 32
    hop_length: int = 128
    tokens: tuple[tuple[str, int], ...] = ()  # (modality, encoder tokens per item) for each enabled modality

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.tokens)

    def token_count(self, modality: str) -> int:
        return dict(self.tokens)[modality]

    def empty(self, modality: str) -> np.ndarray:
        """Zeros in the shape of one preprocessed item: what a row without this modality carries."""
        shapes = {
            "image": (self.image_size, self.image_size, 3),
            "video": (self.video_frames, self.image_size, self.image_size, 3),
            "audio": (self.mel_frames, self.n_mels),
        }
        return np.zeros(shapes[modality], np.float32)


# -- reading files --------------------------------------------------------------------------
def read_image(path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """uint8 RGB `[H, W, 3]`; an image of more than `max_pixels` pixels is refused before it is decoded."""
    _check_suffix(path, "image", IMAGE_SUFFIXES)
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise MediaReadError(path, f"{width}x{height} = {width * height:,} pixels exceed the limit of {max_pixels:,} "
                                           "(data.max_image_pixels); downscale the file")
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError) as err:
        raise MediaReadError(path, str(err) or type(err).__name__) from None


def read_wav(path: str) -> tuple[np.ndarray, int]:
    """Mono float32 waveform in [-1, 1] and its sample rate."""
    _check_suffix(path, "audio", AUDIO_SUFFIXES)
    try:
        with wave.open(path, "rb") as handle:
            width, channels, rate = handle.getsampwidth(), handle.getnchannels(), handle.getframerate()
            raw = handle.readframes(handle.getnframes())
    except (OSError, EOFError, wave.Error) as err:
        raise MediaReadError(path, str(err) or type(err).__name__) from None
    dtypes = {1: np.uint8, 2: np.int16, 4: np.int32}
    if width not in dtypes:
        raise UnsupportedMediaError(f"{path}: {8 * width}-bit WAV samples; supported audio: {SUPPORTED['audio']}")
    samples = np.frombuffer(raw, dtypes[width]).astype(np.float32)
    if width == 1:
        samples = samples - 128.0
    samples /= float(2 ** (8 * width - 1))
    if len(samples) == 0:
        raise MediaReadError(path, "no audio samples")
    if rate <= 0:
        raise MediaReadError(path, f"sample rate {rate} Hz")
    return samples.reshape(-1, channels).mean(axis=1), rate


def read_video(path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Frames `[F, H, W, 3]` from a folder of images (sorted by name, all of one size) or an .npy array."""
    source = Path(path)
    if source.is_dir():
        frames = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not frames:
            raise MediaReadError(path, "the frame folder holds no PNG/JPEG frames")
        images = [read_image(str(frame), max_pixels) for frame in frames]
        for frame, image in zip(frames, images):
            if image.shape != images[0].shape:
                raise MediaReadError(path, f"frames differ in size: {frames[0].name} is {images[0].shape[1]}x{images[0].shape[0]}, "
                                           f"{frame.name} is {image.shape[1]}x{image.shape[0]}")
        return np.stack(images)
    _check_suffix(path, "video", (".npy",))
    try:
        frames = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise MediaReadError(path, str(err) or type(err).__name__) from None
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise MediaReadError(path, f"expected an array [frames, H, W, 3] with at least one frame, got shape {list(frames.shape)}")
    if frames.shape[1] * frames.shape[2] > max_pixels:
        raise MediaReadError(path, f"{frames.shape[2]}x{frames.shape[1]} frames exceed the limit of {max_pixels:,} pixels (data.max_image_pixels)")
    return frames


def _check_suffix(path: str, modality: str, suffixes: tuple[str, ...]) -> None:
    if not Path(path).exists():
        raise MediaReadError(path, "no such file")
    if Path(path).suffix.lower() not in suffixes:
        raise UnsupportedMediaError(f"{path}: unsupported {modality} format {Path(path).suffix!r}; supported: {SUPPORTED[modality]}")


READERS = {"image": read_image, "video": read_video, "audio": read_wav}


# -- preprocessing --------------------------------------------------------------------------
def preprocess_image(pixels: np.ndarray, size: int) -> np.ndarray:
    """uint8 (or [0, 1] float) `[H, W, 3]` -> float32 `[size, size, 3]` in [-1, 1]."""
    if pixels.dtype != np.uint8:
        pixels = np.clip(np.asarray(pixels, np.float32) * 255.0, 0, 255).astype(np.uint8)
    if pixels.shape[:2] != (size, size):
        pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR))
    return pixels.astype(np.float32) / 127.5 - 1.0


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return samples.astype(np.float32)
    duration = len(samples) / rate
    times = np.arange(int(round(duration * target))) / target
    return np.interp(times, np.arange(len(samples)) / rate, samples).astype(np.float32)


@functools.lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular filters `[n_fft // 2 + 1, n_mels]` evenly spaced on the mel scale (HTK formula)."""
    to_mel = lambda hz: 2595.0 * np.log10(1.0 + hz / 700.0)
    to_hz = lambda mel: 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    edges = to_hz(np.linspace(0.0, to_mel(sample_rate / 2), n_mels + 2))
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising, falling = (bins - low) / (centre - low), (high - bins) / (high - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).T.astype(np.float32)


def log_mel(samples: np.ndarray, spec: MediaSpec) -> np.ndarray:
    """float32 `[mel_frames, n_mels]`: log(1e-5 + mel power), frames past the clip's end are zero."""
    n_fft, hop = 2 * spec.hop_length, spec.hop_length
    padded = np.pad(samples.astype(np.float32), (n_fft // 2, n_fft // 2 + hop * spec.mel_frames))
    starts = np.arange(spec.mel_frames) * hop
    windows = padded[starts[:, None] + np.arange(n_fft)] * np.hanning(n_fft).astype(np.float32)
    power = np.abs(np.fft.rfft(windows, axis=-1)) ** 2
    mels = np.log(1e-5 + power @ mel_filterbank(spec.sample_rate, n_fft, spec.n_mels))
    frames_in_clip = int(np.ceil(len(samples) / hop))
    mels[frames_in_clip:] = 0.0
    return mels.astype(np.float32)


def sample_frames(frames: np.ndarray, count: int) -> np.ndarray:
    """`count` frames spread evenly from the first to the last (repeats when the clip is shorter)."""
    index = np.round(np.linspace(0, len(frames) - 1, count)).astype(int)
    return frames[index]


def preprocess(modality: str, item: MediaItem, spec: MediaSpec) -> np.ndarray:
    """One media item (array or path) -> its encoder input. Raw audio arrays are at `spec.sample_rate`."""
    if modality == "image":
        return preprocess_image(read_image(item, UNLIMITED) if isinstance(item, str) else item, spec.image_size)
    if modality == "video":
        frames = sample_frames(read_video(item, UNLIMITED) if isinstance(item, str) else item, spec.video_frames)
        return np.stack([preprocess_image(frame, spec.image_size) for frame in frames])
    if modality == "audio":
        samples, rate = read_wav(item) if isinstance(item, str) else (item, spec.sample_rate)
        return log_mel(resample(samples, rate, spec.sample_rate), spec)
    raise UnsupportedMediaError(f"unknown modality {modality!r}; supported: {sorted(SUPPORTED)}")
