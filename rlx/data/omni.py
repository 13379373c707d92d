"""Synthetic omni tasks with verifiable answers, generated on the fly:

* image: `<image>n?` -> how many squares the picture shows (1..max_shapes);
* audio: `<audio>h?` -> which of two successive tones is higher (`1` or `2`);
* video: `<video>d?` -> the direction a dot moves (`L`, `R`, `U`, `D`).

`warmup_flaw_rate` of the warm-up demonstrations write the answer twice (`3` -> `33`), a
format the exact-match verifier rejects, so the warmed-up policy perceives the media but
usually answers in the wrong format, which only the verifier-driven RL phase can fix.
`write_dataset` saves records as PNG / WAV / frame folders plus a JSONL file, the
format `source: jsonl` reads.
"""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
from PIL import Image

from rlx.data.config import OmniConfig
from rlx.data.media import MediaSpec
from rlx.data.placeholders import record_modality
from rlx.data.records import PromptRecord

ALPHABET = "0123456789LRUDnhd?"
PROMPTS = {"image": "<image>n?", "audio": "<audio>h?", "video": "<video>d?"}
DIRECTIONS = {"L": (0, -1), "R": (0, 1), "U": (-1, 0), "D": (1, 0)}
RAW_VIDEO_FRAMES = 8


def count_shapes(rng: np.random.Generator, spec: MediaSpec, max_shapes: int) -> tuple[np.ndarray, str]:
    """Bright squares in distinct cells of a 4 x 4 grid on a dark background."""
    size, cell = spec.image_size, spec.image_size // 4
    image = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
    count = int(rng.integers(1, max_shapes + 1))
    side = max(cell - 1, 1)
    for index in rng.choice(16, count, replace=False):
        row, col = divmod(int(index), 4)
        top, left = row * cell + int(rng.integers(0, cell - side + 1)), col * cell + int(rng.integers(0, cell - side + 1))
        image[top:top + side, left:left + side] = rng.integers(180, 256, 3)
    return image, str(count)


def higher_tone(rng: np.random.Generator, spec: MediaSpec) -> tuple[np.ndarray, str]:
    """Two 0.2 s tones an octave-ish apart; the answer says which one is higher."""
    low = float(rng.uniform(300, 900))
    high = low * float(rng.uniform(1.8, 3.0))
    first_higher = bool(rng.integers(0, 2))
    tones = (high, low) if first_higher else (low, high)
    length = int(0.2 * spec.sample_rate)
    times = np.arange(length) / spec.sample_rate
    wave_ = np.concatenate([np.sin(2 * np.pi * f * times) for f in tones]) * float(rng.uniform(0.3, 0.9))
    return wave_.astype(np.float32), "1" if first_higher else "2"


def moving_dot(rng: np.random.Generator, spec: MediaSpec) -> tuple[np.ndarray, str]:
    """A 3 x 3 dot crossing the frame in one direction over RAW_VIDEO_FRAMES frames."""
    size = spec.image_size
    direction = "LRUD"[int(rng.integers(0, 4))]
    dy, dx = DIRECTIONS[direction]
    travel = size - 4
    step = travel / (RAW_VIDEO_FRAMES - 1)
    fixed = int(rng.integers(0, size - 3))
    frames = np.zeros((RAW_VIDEO_FRAMES, size, size, 3), np.uint8)
    colour = rng.integers(180, 256, 3)
    for t in range(RAW_VIDEO_FRAMES):
        moving = int(round(t * step)) if (dy + dx) > 0 else int(round(travel - t * step))
        y, x = (moving, fixed) if dy else (fixed, moving)
        frames[t, y:y + 3, x:x + 3] = colour
    return frames, direction


def omni_records(config: OmniConfig, spec: MediaSpec, size: int, seed: int, prefix: str) -> list[PromptRecord]:
    """`size` records cycling through `config.modalities`."""
    rng = np.random.default_rng(seed)
    generators = {
        "image": lambda: count_shapes(rng, spec, config.max_shapes),
        "audio": lambda: higher_tone(rng, spec),
        "video": lambda: moving_dot(rng, spec),
    }
    records = []
    for i in range(size):
        modality = config.modalities[i % len(config.modalities)]
        item, answer = generators[modality]()
        records.append(PromptRecord(id=f"{prefix}-{i}", prompt=PROMPTS[modality], answer=answer, media={modality: (item,)}))
    return records


def omni_splits(config: OmniConfig, spec: MediaSpec, train_size: int, val_size: int, seed: int) -> tuple[list[PromptRecord], list[PromptRecord]]:
    return omni_records(config, spec, train_size, seed, "train"), omni_records(config, spec, val_size, seed + 10_000, "val")


def flawed_demonstrations(records: list[PromptRecord], flaw_rate: float, seed: int) -> list[PromptRecord]:
    """Copies of `records` whose answers are written twice with probability `flaw_rate`."""
    rng = np.random.default_rng(seed)
    return [
        PromptRecord(r.id, r.prompt, r.answer * 2 if rng.random() < flaw_rate else r.answer, r.media)
        for r in records
    ]


def write_dataset(records: list[PromptRecord], folder: Path, name: str, spec: MediaSpec) -> Path:
    """Saves each record's media under `folder/name/` (PNG, 16-bit WAV, frame folders) and a JSONL
    file referencing them by paths relative to it; returns the JSONL path."""
    media_dir = folder / name
    media_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for record in records:
        modality = record_modality(record)
        relative = f"{name}/{record.id}" + {"image": ".png", "audio": ".wav", "video": ""}[modality]
        _write_item(modality, record.media[modality][0], folder / relative, spec)
        rows.append({"id": record.id, "prompt": record.prompt, "answer": record.answer, "media": {modality: [relative]}})
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _write_item(modality: str, item: np.ndarray, path: Path, spec: MediaSpec) -> None:
    if modality == "image":
        Image.fromarray(item).save(path)
    elif modality == "audio":
        with wave.open(str(path), "wb") as handle:
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(spec.sample_rate)
            handle.writeframes((np.clip(item, -1, 1) * 32767).astype("<i2").tobytes())
    else:
        path.mkdir(parents=True, exist_ok=True)
        for index, frame in enumerate(item):
            Image.fromarray(frame).save(path / f"{index:04d}.png")
