"""Media readers on real files the tests write, placeholder expansion, and bad-input handling."""

import json
import logging
import wave

import numpy as np
import pytest
from PIL import Image

from rlx.data import PromptRecord, PromptStream, encode_prompts
from rlx.data.config import DataConfig, OmniConfig
from rlx.data.media import MediaReadError, MediaSpec, UnsupportedMediaError, log_mel, preprocess
from rlx.data.omni import ALPHABET, higher_tone, omni_records, write_dataset
from rlx.data.placeholders import prompt_ids
from rlx.data.tasks import load_task
from rlx.data.tokenizer import CharTokenizer

SPEC = MediaSpec(image_size=16, video_frames=4, sample_rate=8000, n_mels=16, mel_frames=32, hop_length=128,
                 tokens=(("image", 4), ("video", 16), ("audio", 8)))
TOKENIZER = CharTokenizer(ALPHABET)


def write_wav(path, samples, rate, width=2):
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(width)
        handle.setframerate(rate)
        handle.writeframes((samples * 32767).astype("<i2").tobytes())


def test_png_and_jpeg_are_resized_and_scaled(tmp_path):
    pixels = np.zeros((32, 24, 3), np.uint8)
    pixels[:, :12] = 255
    for name in ("a.png", "a.jpg"):
        Image.fromarray(pixels).save(tmp_path / name)
        image = preprocess("image", str(tmp_path / name), SPEC)
        assert image.shape == (16, 16, 3) and image.dtype == np.float32
        assert image[:, :6].mean() > 0.9 and image[:, 10:].mean() < -0.9  # left half white, right half black, in [-1, 1]


def test_wav_is_resampled_and_a_higher_tone_lands_in_higher_mel_bands(tmp_path):
    times = np.arange(16000) / 16000 * 0.5
    bands = []
    for hz in (400.0, 2400.0):
        path = tmp_path / f"{int(hz)}.wav"
        write_wav(path, 0.5 * np.sin(2 * np.pi * hz * times), rate=16000)  # 16 kHz file, 8 kHz model rate
        mels = preprocess("audio", str(path), SPEC)
        assert mels.shape == (32, 16)
        bands.append(int(np.argmax(mels[5])))
    assert bands[1] > bands[0]


def test_frame_folder_and_npy_video_sample_frames_evenly(tmp_path):
    frames = np.stack([np.full((16, 16, 3), 30 * t, np.uint8) for t in range(8)])
    folder = tmp_path / "clip"
    folder.mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:03d}.png")
    np.save(tmp_path / "clip.npy", frames)
    for source in (folder, tmp_path / "clip.npy"):
        video = preprocess("video", str(source), SPEC)
        assert video.shape == (4, 16, 16, 3)
        np.testing.assert_allclose(video[:, 0, 0, 0], np.array([0, 60, 150, 210]) / 127.5 - 1, atol=1e-5)  # frames 0, 2, 5, 7


def test_corrupt_and_unsupported_files(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(MediaReadError, match="bad.png"):
        preprocess("image", str(tmp_path / "bad.png"), SPEC)
    (tmp_path / "bad.wav").write_bytes(b"RIFF....garbage")
    with pytest.raises(MediaReadError, match="bad.wav"):
        preprocess("audio", str(tmp_path / "bad.wav"), SPEC)
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    with pytest.raises(UnsupportedMediaError, match="PNG, JPEG"):
        preprocess("image", str(tmp_path / "x.gif"), SPEC)
    (tmp_path / "x.mp3").write_bytes(b"ID3")
    with pytest.raises(UnsupportedMediaError, match="WAV"):
        preprocess("audio", str(tmp_path / "x.mp3"), SPEC)


def test_placeholders_expand_to_encoder_token_counts():
    record = PromptRecord("r", "<audio>h?", "1", media={"audio": (np.zeros(800, np.float32),)})
    ids = prompt_ids(record, TOKENIZER, SPEC)
    assert ids[0] == TOKENIZER.bos_id
    assert ids[1:9] == [TOKENIZER.placeholder_ids["audio"]] * 8
    assert TOKENIZER.decode(ids[9:]) == "h?"
    batch = encode_prompts([record], TOKENIZER, 12, SPEC)
    assert batch.media["audio"].shape == (1, 32, 16) and batch.media["image"].shape == (1, 16, 16, 3)
    assert not batch.media["image"].any()  # a row without an image carries zeros


@pytest.mark.parametrize("prompt, media, message", [
    ("<image><image>n?", {"image": (np.zeros((4, 4, 3), np.uint8),)}, "2 <image> placeholder"),
    ("n?", {"image": (np.zeros((4, 4, 3), np.uint8),)}, "0 <image> placeholder"),
])
def test_placeholder_and_media_counts_must_match(prompt, media, message):
    with pytest.raises(ValueError, match=f"record 'bad'.*{message}"):
        prompt_ids(PromptRecord("bad", prompt, "1", media=media), TOKENIZER, SPEC)


def test_media_without_encoders_is_a_clear_error():
    record = PromptRecord("r", "<video>d?", "L", media={"video": (np.zeros((2, 4, 4, 3), np.uint8),)})
    with pytest.raises(ValueError, match="model.vision.enabled"):
        prompt_ids(record, TOKENIZER, None)


def test_synthetic_tasks_have_verifiable_answers():
    records = omni_records(OmniConfig(), SPEC, 30, seed=0, prefix="t")
    assert [next(iter(r.media)) for r in records[:3]] == ["image", "audio", "video"]
    for record in records:
        item = record.media[next(iter(record.media))][0]
        if "image" in record.media:  # bright squares: count the 4x4 cells holding bright pixels
            bright = item.max(axis=-1) > 150
            assert str(bright.reshape(4, 4, 4, 4).any(axis=(1, 3)).sum()) == record.answer
        if "video" in record.media:  # the dot's centre of mass moves in the answer's direction
            (y0, x0), (y1, x1) = [np.argwhere(frame.max(axis=-1) > 150).mean(axis=0) for frame in (item[0], item[-1])]
            moved = {"L": x1 < x0, "R": x1 > x0, "U": y1 < y0, "D": y1 > y0}
            assert moved[record.answer] and sum(moved.values()) == 1
    wave_, answer = higher_tone(np.random.default_rng(0), SPEC)
    mels = log_mel(wave_, SPEC)
    first, second = np.argmax(mels[4]), np.argmax(mels[18])
    assert answer == ("1" if first > second else "2")


def test_jsonl_with_media_files_skips_and_counts_unreadable_ones(tmp_path, caplog):
    records = omni_records(OmniConfig(), SPEC, 9, seed=1, prefix="r")
    train = write_dataset(records, tmp_path, "train", SPEC)
    val = write_dataset(records[:3], tmp_path, "val", SPEC)
    (tmp_path / "train" / "r-0.png").write_bytes(b"\x89PNG corrupted")
    config = DataConfig(source="jsonl", train_path=str(train), val_path=str(val), max_prompt_len=24, prompts_per_step=4)
    with caplog.at_level(logging.WARNING):
        task = load_task(config, SPEC)
    assert task.counts["data/skipped_media"] == 1
    assert "r-0.png" in caplog.text
    assert [r.id for r in task.train] == [r.id for r in records[1:]]
    stream = PromptStream(task.train, task.tokenizer, 4, 24, seed=0, media=SPEC)
    batch = next(stream)
    rows = {r.id: i for i, r in enumerate(batch.records)}
    for record in batch.records:  # what came from the files equals what was generated in memory
        original = next(r for r in records if r.id == record.id)
        name = next(iter(original.media))
        expected = preprocess(name, original.media[name][0], SPEC)
        np.testing.assert_allclose(batch.media[name][rows[record.id]], expected, atol=2e-3 if name != "audio" else 5e-2)


def test_unsupported_format_in_a_dataset_is_an_error_listing_formats(tmp_path):
    (tmp_path / "a.bmp").write_bytes(b"BM")
    rows = [{"prompt": "<image>n?", "answer": "1", "media": {"image": ["a.bmp"]}}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    config = DataConfig(source="jsonl", train_path=str(tmp_path / "d.jsonl"), val_path=str(tmp_path / "d.jsonl"), max_prompt_len=24)
    with pytest.raises(UnsupportedMediaError, match="supported: PNG, JPEG"):
        load_task(config, SPEC)


def test_worker_processes_preprocess_the_same_batches_as_the_main_process():
    records = omni_records(OmniConfig(), SPEC, 12, seed=2, prefix="w")
    inline = PromptStream(records, TOKENIZER, 4, 24, seed=0, media=SPEC)
    workers = PromptStream(records, TOKENIZER, 4, 24, seed=0, media=SPEC, workers=1)
    for _ in range(2):
        a, b = next(inline), next(workers)
        assert [r.id for r in a.records] == [r.id for r in b.records]
        np.testing.assert_array_equal(a.tokens, b.tokens)
        for name in SPEC.modalities:
            np.testing.assert_array_equal(a.media[name], b.media[name])
