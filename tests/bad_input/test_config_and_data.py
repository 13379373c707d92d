"""Bad input that is refused or skipped before any model is built (milliseconds a case): config values, keys and files,
plug-ins, output directories, model sizes, dataset rows and media files; the commands' error boundary itself.

Every case runs a command in-process and checks its exit code, that a user error prints one message naming the input and
no traceback, and that nothing is written. Cases that train are in `test_runs_and_resume.py`."""

from __future__ import annotations

import json
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rlx import eval as rlx_eval
from rlx import export as rlx_export
from rlx import launch, serve
from rlx.errors import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR
from tests.bad_input.helpers import GOOD_ROWS, assert_clean_failure, base, jsonl_overrides, run_command, write_jsonl
from tests.conftest import tiny_overrides


# -- config values and keys: refused at load ---------------------------------------------------------------------------
CONFIG_CASES = [
    ("run.steps=abc", "run.steps: expected an integer, got 'abc'"),
    ("run.steps=-1", "steps must be >= 1"),
    ("run.steps=1.5", "run.steps: expected an integer"),
    ("optimizer.learning_rate=.nan", "optimizer.learning_rate: expected a number, got nan"),
    ("optimizer.learning_rate=.inf", "optimizer.learning_rate: expected a finite number"),
    ("optimizer.learning_rate=-1", "learning_rate must be > 0"),
    ("optimizer.learning_rate=0", "learning_rate must be > 0"),
    ("optimizer.max_nonfinite_steps=0", "max_nonfinite_steps must be >= 1"),
    ("model.rope_theta=.nan", "model.rope_theta: expected a number, got nan"),
    ("reward.on_error_reward=.nan", "reward.on_error_reward: expected a number, got nan"),
    ("reward.on_error_reward=-.inf", "reward.on_error_reward: expected a finite number"),
    ("reward.max_error_rate=2", "max_error_rate must be in [0, 1]"),
    ("reward.error_window=0", "error_window must be >= 1"),
    ("reward.timeout_s=0", "timeout_s must be > 0"),
    ("reward.fn=1 +", "reward.fn '1 +': cannot read"),
    ("reward.workers=0", "workers must be >= 1 reward worker processes"),
    ("services.heartbeat_s=0", "services: heartbeat_s must be > 0 seconds"),
    ("services.max_restarts=-1", "services: max_restarts must be >= 0"),
    ("services.generators=0", "services: generators must be >= 1"),
    ("services.hang_timeout_s=10", "services: hang_timeout_s must be > 2 * heartbeat_s = 10 s"),
    ("services.generator_cpus=[0]", "services: generator_cpus pins generator processes: it needs backend process, got backend local"),
    ("rollout.n_samples=0", "n_samples"),
    ("rollout.max_new_tokens=0", "max_new_tokens must be >= 1"),
    ("data.prompts_per_step=0", "prompts_per_step must be >= 1"),
    ("data.max_prompt_len=100", "exceeds model.max_seq_len"),
    ("data.max_image_pixels=0", "max_image_pixels must be >= 1"),
    ("data.seed=-1", "data: seed must be >= 0"),
    ("data.source=jsonl", "source: jsonl needs data.train_path and data.val_path"),
    ("algorithm.minibatches=5", "8 rollouts do not split into algorithm.minibatches=5"),
    ("algorithm.minibatches=0", "minibatches and epochs must be >= 1"),
    ("parallel.device_memory_gib=0", "device_memory_gib must be > 0"),
    ("run.output_dir=", "output_dir is empty"),
    ("run.log_level=LOUD", "run.log_level: 'LOUD' is not one of"),
    ("run.resume_changes=maybe", "run.resume_changes: 'maybe' is not one of"),
    ("run.stepz=3", "did you mean 'run.steps'?"),
    ("nosection.key=1", "unknown key 'nosection'"),
    ("run.steps", "is not of the form section.key=value"),
    ("run.steps=[1,", "override 'run.steps=[1,': the value is not valid YAML"),
    ("run.steps.x=1", "run.steps is a value, not a section"),
]


@pytest.mark.parametrize("override, message", CONFIG_CASES, ids=[case[0] for case in CONFIG_CASES])
def test_bad_config_values_are_refused_at_load(tmp_path, capsys, override, message):
    code, output = run_command(launch.main, [*base(tmp_path), override], capsys)
    assert_clean_failure(code, output, EXIT_USER_ERROR, message)
    assert not (tmp_path / "run").exists()  # refused before anything is written


# -- config files ------------------------------------------------------------------------------------------------------
FILE_CASES = [
    ("syntax.yaml", b"run:\n  steps: [1, 2\nmodel: {}\n", "syntax.yaml: line 3, column 6: expected ',' or ']'"),
    ("tabs.yaml", b"run:\n\tsteps: 3\n", "tabs.yaml: line 2"),
    ("binary.yaml", bytes(range(256)) * 4, "binary.yaml is not a UTF-8 text file"),
    ("list.yaml", b"- run\n- model\n", "the top level must be a mapping of sections"),
    ("missing.yaml", None, "config file not found"),
    ("cycle.yaml", b"base: cycle.yaml\n", "include each other in a cycle"),
    ("section.yaml", b"run: 3\n", "run must be a mapping"),
]


@pytest.mark.parametrize("name, content, message", FILE_CASES, ids=[case[0] for case in FILE_CASES])
def test_bad_config_files_name_the_file_and_line(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    code, output = run_command(launch.main, ["--config", str(path)], capsys)
    assert_clean_failure(code, output, EXIT_USER_ERROR, message)


def test_a_directory_as_config_file(tmp_path, capsys):
    code, output = run_command(launch.main, ["--config", str(tmp_path)], capsys)
    assert_clean_failure(code, output, EXIT_USER_ERROR, "config file not found")


# -- plug-ins, output directories, sizes: refused before any model is built ------------------------------------------------
PREFLIGHT_CASES = [
    ("reward.fn=nope", "unknown reward function 'nope'"),
    ("reward.fn=no_such_module_xyz:score", "cannot import module 'no_such_module_xyz'"),
    ("reward.fn=tests.bad_input.helpers:missing", "has no attribute 'missing'"),
    ("reward.fn=tests.bad_input.helpers:NOT_CALLABLE", "is not callable"),
    ("reward.fn=exact_match + 0.5 * no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    ("run.hooks=[no_such_module_xyz:hook]", "cannot import module 'no_such_module_xyz'"),
    ("run.hooks=[tests.bad_input.helpers:NOT_CALLABLE]", "run.hooks: 'tests.bad_input.helpers:NOT_CALLABLE' is not callable"),
    ("run.output_dir=/proc/rlx_cannot_write_here", "run.output_dir=/proc/rlx_cannot_write_here cannot be written"),
    ("model.hidden_size=1000000000", "more than parallel.device_memory_gib=16"),
    ("warmup.batch_size=1000", "warmup.batch_size=1000 but the warm-up demonstrations split has only 64 usable records"),
    ("data.prompts_per_step=100", "data.prompts_per_step=100 but the train split has only 64 usable records"),
]


@pytest.mark.parametrize("override, message", PREFLIGHT_CASES, ids=[case[0] for case in PREFLIGHT_CASES])
def test_preflight_refuses_before_building_a_model(tmp_path, capsys, monkeypatch, override, message):
    import rlx.services.trainer as trainer

    monkeypatch.setattr(trainer, "create_params", lambda *a, **k: pytest.fail("a model was built"))
    code, output = run_command(launch.main, [*base(tmp_path), override], capsys)
    assert_clean_failure(code, output, EXIT_USER_ERROR, message)


def test_an_output_dir_below_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    code, output = run_command(launch.main, [*base(tmp_path), f"run.output_dir={tmp_path / 'file' / 'run'}"], capsys)
    assert_clean_failure(code, output, EXIT_USER_ERROR, "cannot be written")


def test_processes_of_one_run_check_its_output_dir_at_the_same_time(tmp_path):
    """Every process of a multi-process run probes `run.output_dir` at start-up; one probe must not remove another's."""
    from concurrent.futures import ThreadPoolExecutor

    from rlx.services.preflight import check_output_dir

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: check_output_dir(tmp_path), range(400)))
    assert list(tmp_path.iterdir()) == []


# -- datasets: bad rows are skipped with file and line, or refused by name --------------------------------------------------
BAD_ROWS = [
    ("invalid_utf8", b'{"prompt": "1+1=", "answer": "2\xff"}', "not UTF-8 text"),
    ("latin1", '{"prompt": "caf\u00e9", "answer": "1"}'.encode("latin-1"), "not UTF-8 text"),
    ("not_json", b"{prompt: 1+1=}", "not valid JSON"),
    ("array", b'["1+1=", "2"]', "expected a JSON object, got list"),
    ("missing_answer", b'{"prompt": "1+1="}', "missing field(s) ['answer']"),
    ("media_not_a_map", b'{"prompt": "1+1=", "answer": "2", "media": "x.png"}', '"media" must map a modality'),
]



@pytest.mark.parametrize("name, row, reason", BAD_ROWS, ids=[case[0] for case in BAD_ROWS])
def test_bad_rows_are_skipped_and_counted_with_file_and_line(tmp_path, caplog, name, row, reason):
    from rlx.config import load_config
    from rlx.data import load_task

    train = write_jsonl(tmp_path / "train.jsonl", [r.encode() for r in GOOD_ROWS[:3]] + [row] + [r.encode() for r in GOOD_ROWS[3:]])
    val = write_jsonl(tmp_path / "val.jsonl", [r.encode() for r in GOOD_ROWS])
    task = load_task(load_config(None, [*tiny_overrides(tmp_path / "run"), *jsonl_overrides(train, val)]).data)
    assert len(task.train) == 8 and task.counts["data/skipped_bad_rows"] == 1
    assert f"{train}:4: {reason}" in caplog.text


@pytest.mark.parametrize("name, row, reason", BAD_ROWS[:2], ids=[case[0] for case in BAD_ROWS[:2]])
def test_bad_rows_with_on_bad_row_error_stop_naming_file_and_line(tmp_path, capsys, name, row, reason):
    train = write_jsonl(tmp_path / "train.jsonl", [GOOD_ROWS[0].encode(), row])
    val = write_jsonl(tmp_path / "val.jsonl", [r.encode() for r in GOOD_ROWS])
    argv = [*base(tmp_path), *jsonl_overrides(train, val), "data.on_bad_row=error"]
    code, output = run_command(launch.main, argv, capsys)
    assert_clean_failure(code, output, EXIT_USER_ERROR, f"{train}:2: {reason}")


def test_a_split_with_no_usable_rows_says_why_per_cause(tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", [row for _, row, _ in BAD_ROWS])
    val = write_jsonl(tmp_path / "val.jsonl", [r.encode() for r in GOOD_ROWS])
    code, output = run_command(launch.main, [*base(tmp_path), *jsonl_overrides(train, val)], capsys)
    assert_clean_failure(code, output, EXIT_USER_ERROR, "no usable records left (train=0, val=8); rows skipped by cause: bad_rows: 6")


def test_a_missing_dataset_file(tmp_path, capsys):
    val = write_jsonl(tmp_path / "val.jsonl", [r.encode() for r in GOOD_ROWS])
    code, output = run_command(launch.main, [*base(tmp_path), *jsonl_overrides(tmp_path / "nope.jsonl", val)], capsys)
    assert_clean_failure(code, output, EXIT_USER_ERROR, "dataset file not found")


# -- media files: pathological ones are skipped at load, with their path ------------------------------------------------------
def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_bomb_png(path: Path) -> None:
    """A valid PNG header claiming 30000 x 30000 pixels: Pillow refuses to open it (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))


def make_zero_rate_wav(path: Path) -> None:
    samples = np.zeros(100, np.int16).tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, 0, 0, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(samples)) + samples
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def make_mixed_frames(path: Path) -> None:
    path.mkdir()
    Image.new("RGB", (8, 8)).save(path / "0.png")
    Image.new("RGB", (9, 8)).save(path / "1.png")


MEDIA_CASES = [
    ("bomb.png", "image", make_bomb_png, "decompression bomb"),
    ("big.png", "image", lambda p: Image.new("RGB", (100, 100)).save(p), "10,000 pixels exceed the limit of 5,000"),
    ("truncated.png", "image", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\0\0"), "cannot read media file"),
    ("missing.png", "image", lambda p: None, "no such file"),
    ("empty.npy", "video", lambda p: np.save(p, np.zeros((0, 4, 4, 3), np.uint8)), "with at least one frame"),
    ("flat.npy", "video", lambda p: np.save(p, np.zeros((4, 4), np.uint8)), "expected an array [frames, H, W, 3]"),
    ("frames", "video", make_mixed_frames, "frames differ in size: 0.png is 8x8, 1.png is 9x8"),
    ("silent.wav", "audio", make_zero_rate_wav, "sample rate 0 Hz"),
    ("garbage.wav", "audio", lambda p: p.write_bytes(b"RIFFxxxx"), "cannot read media file"),
]


@pytest.mark.parametrize("name, modality, make, reason", MEDIA_CASES, ids=[case[0] for case in MEDIA_CASES])
def test_pathological_media_is_skipped_at_load_with_its_path(tmp_path, caplog, name, modality, make, reason):
    from rlx.config import load_config
    from rlx.data import load_task

    make(tmp_path / name)
    bad = json.dumps({"prompt": "1+1=", "answer": "2", "media": {modality: [name]}}).encode()
    train = write_jsonl(tmp_path / "train.jsonl", [bad] + [r.encode() for r in GOOD_ROWS])
    val = write_jsonl(tmp_path / "val.jsonl", [r.encode() for r in GOOD_ROWS])
    config = load_config(None, [*tiny_overrides(tmp_path / "run"), *jsonl_overrides(train, val), "data.max_image_pixels=5000"])
    task = load_task(config.data)
    assert len(task.train) == 8 and task.counts["data/skipped_media"] == 1
    assert str(tmp_path / name) in caplog.text and reason in caplog.text


def test_an_unsupported_media_format_is_a_user_error(tmp_path, capsys):
    (tmp_path / "clip.gif").write_bytes(b"GIF89a")
    bad = json.dumps({"prompt": "1+1=", "answer": "2", "media": {"image": ["clip.gif"]}}).encode()
    train = write_jsonl(tmp_path / "train.jsonl", [bad] + [r.encode() for r in GOOD_ROWS])
    val = write_jsonl(tmp_path / "val.jsonl", [r.encode() for r in GOOD_ROWS])
    code, output = run_command(launch.main, [*base(tmp_path), *jsonl_overrides(train, val)], capsys)
    assert_clean_failure(code, output, EXIT_USER_ERROR, "unsupported image format '.gif'")


# -- other commands and the boundary itself --------------------------------------------------------------------------------------
def test_serve_on_a_port_in_use_exits_at_once(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        argv = ["--config", "configs/demo.yaml", "--port", str(taken.getsockname()[1]), f"run.output_dir={tmp_path}"]
        code, output = run_command(serve.main, argv, capsys)
    assert_clean_failure(code, output, EXIT_USER_ERROR, "cannot serve on 127.0.0.1:")


@pytest.mark.parametrize("argv, message", [
    (["--config", "configs/demo.yaml", "--port", "70000"], "--port 70000 is not a port number"),
    (["--config", "configs/demo.yaml", "run.steps=x"], "run.steps: expected an integer"),
])
def test_serve_bad_arguments(capsys, argv, message):
    code, output = run_command(serve.main, argv, capsys)
    assert_clean_failure(code, output, EXIT_USER_ERROR, message)


@pytest.mark.parametrize("main, message", [(rlx_eval.main, "is not a run directory"), (rlx_export.main, "config file not found")])
def test_eval_and_export_of_a_missing_run(tmp_path, capsys, main, message):
    code, output = run_command(main, ["--run", str(tmp_path / "nope")], capsys)
    assert_clean_failure(code, output, EXIT_USER_ERROR, message)


def test_an_internal_error_keeps_its_traceback(tmp_path, capsys, monkeypatch):
    import rlx.services

    monkeypatch.setattr(rlx.services, "train", lambda config: 1 / 0)
    code, output = run_command(launch.main, base(tmp_path), capsys)
    assert code == EXIT_INTERNAL_ERROR
    assert "Traceback" in output and "ZeroDivisionError" in output and "bug in rlx" in output


def test_debug_shows_the_traceback_of_a_user_error(tmp_path, capsys):
    code, output = run_command(launch.main, [*base(tmp_path), "run.steps=abc", "--debug"], capsys)
    assert code == EXIT_USER_ERROR and "Traceback" in output and "run.steps: expected an integer" in output


def test_rlx_info_lines_appear_although_the_root_logger_was_configured(tmp_path, capsys):
    from rlx.logs import configure_logging
    import logging

    logging.getLogger().setLevel(logging.WARNING)  # as absl leaves it
    configure_logging("INFO")
    logging.getLogger("rlx.services.trainer").info("resumed from somewhere")
    assert "INFO rlx.services.trainer: resumed from somewhere" in capsys.readouterr().err
    configure_logging("WARNING")  # run.log_level
    logging.getLogger("rlx.services.trainer").info("not shown")
    assert "not shown" not in capsys.readouterr().err
