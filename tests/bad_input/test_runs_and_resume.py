"""Bad input that shows only while a run trains or resumes: failing rewards, updates that destroy the weights, raising hooks,
changed or corrupted checkpoints. Each case runs `rlx.launch` in-process on a tiny model (no warm-up) and checks the
exit code, the message, and that metrics.jsonl / rollouts.jsonl stay strict, finite JSON. The resume cases share one
trained run with checkpoints 0, 1, 2 (copied per case)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rlx import launch
from rlx.errors import EXIT_RUN_STOPPED, EXIT_USER_ERROR
from tests.bad_input.helpers import (assert_clean_failure, assert_outputs_valid, base, jsonl_overrides, run_command, strict_json,
                                     write_jsonl)
from tests.conftest import tiny_overrides


# -- runs that go bad stop with exit code 3, and write nothing non-finite ----------------------------------------------------
RUN = ["warmup.sft_steps=0", "run.steps=2", "data.val_size=4"]


def test_a_reward_that_always_fails_stops_the_run(tmp_path, capsys):
    argv = [*base(tmp_path), *RUN, "reward.fn=tests.bad_input.helpers:raising_reward"]
    code, output = run_command(launch.main, argv, capsys)
    assert_clean_failure(code, output, EXIT_RUN_STOPPED, "the reward function failed on 8 of the last 8 responses")
    assert "done:" not in output
    assert_outputs_valid(tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints" / "1").exists()


def test_an_update_that_destroys_the_weights_stops_before_checkpointing(tmp_path, capsys):
    argv = [*base(tmp_path), *RUN, "optimizer.learning_rate=1e39"]  # finite in the config, inf in float32
    code, output = run_command(launch.main, argv, capsys)
    assert_clean_failure(code, output, EXIT_RUN_STOPPED, "the update left parameters that are not finite")
    assert_outputs_valid(tmp_path / "run")
    metrics = [strict_json(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics == [0] and not (tmp_path / "run" / "checkpoints" / "1").exists()


def test_a_warm_up_that_destroys_the_weights_stops_before_storing_them(tmp_path, capsys):
    argv = [*base(tmp_path), "run.steps=1", "warmup.learning_rate=1e39", "warmup.cache=reuse", f"warmup.cache_dir={tmp_path / 'cache'}"]
    code, output = run_command(launch.main, argv, capsys)
    assert_clean_failure(code, output, EXIT_RUN_STOPPED, "the supervised warm-up left parameters that are not finite")
    assert not list((tmp_path / "cache").glob("*")) and not (tmp_path / "run" / "checkpoints" / "0").exists()


def test_a_hook_that_raises_at_step_0_leaves_a_checkpoint_so_the_rerun_does_not_repeat_it(tmp_path, capsys):
    argv = [*base(tmp_path), *RUN, "run.steps=1"]
    code, output = run_command(launch.main, [*argv, "run.hooks=[tests.bad_input.helpers:raising_hook]"], capsys)
    assert_clean_failure(code, output, EXIT_USER_ERROR, "hook tests.bad_input.helpers:raising_hook (run.hooks) raised at step 0")
    assert (tmp_path / "run" / "checkpoints" / "0").is_dir()
    code, output = run_command(launch.main, argv, capsys)
    assert code == 0, output
    steps = [strict_json(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1]


@pytest.mark.parametrize("metrics, message", [
    ({"actor/pg_loss": float("nan")}, "actor/pg_loss are not finite, 1 step(s) in a row"),
    ({"reward/errors": 5.0, "reward/scored": 8.0}, "failed on 5 of the last 8 responses"),
])
def test_run_guard_stops_on_the_first_bad_step_when_allowed_none(metrics, message):
    from rlx.config import load_config
    from rlx.errors import RunStopped
    from rlx.services.guards import RunGuard

    guard = RunGuard(load_config(None, ["optimizer.max_nonfinite_steps=1"]))
    with pytest.raises(RunStopped, match=message.replace("(", r"\(").replace(")", r"\)")):
        guard.check(1, metrics)


def test_run_guard_tolerates_rare_errors_over_its_window():
    from rlx.config import load_config
    from rlx.services.guards import RunGuard

    guard = RunGuard(load_config(None, ["reward.error_window=3"]))
    for step, errors in enumerate([2.0, 0.0, 0.0, 4.0, 0.0], start=1):  # at most 4 of 24 within any 3 steps
        guard.check(step, {"reward/errors": errors, "reward/scored": 8.0, "actor/pg_loss": 0.1})


def test_non_finite_metrics_are_written_as_null(tmp_path):
    from rlx.services.loggers import JsonlSink

    JsonlSink(tmp_path / "m.jsonl").log(3, {"a": float("nan"), "b": float("inf"), "c": 1.5})
    assert strict_json((tmp_path / "m.jsonl").read_text()) == {"step": 3, "a": None, "b": None, "c": 1.5}


# -- resume: one tiny JSONL run with checkpoints 0, 1, 2 shared by every case ----------------------------------------------
def arithmetic_rows(count: int, offset: int = 0) -> list[bytes]:
    return [json.dumps({"prompt": f"{i}+{i}=", "answer": str(2 * i)}).encode() for i in range(offset, offset + count)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    data = root / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", arithmetic_rows(32))
    write_jsonl(data / "val.jsonl", arithmetic_rows(4, offset=40))
    argv = resume_argv(root / "run", data) + ["run.steps=2"]
    assert launch.main(argv) == 0
    return root


def resume_argv(out: Path, data: Path) -> list[str]:
    return ["--config", "configs/demo.yaml", *tiny_overrides(out), *RUN, "run.checkpoint_every=1", "run.keep_checkpoints=3",
            *jsonl_overrides(data / "train.jsonl", data / "val.jsonl")]


def copy_of(trained: Path, tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(trained, tmp_path / "copy")
    return tmp_path / "copy" / "run", tmp_path / "copy" / "data"


def change_one_answer(data: Path) -> None:
    """Same characters (so the same tokenizer), different contents."""
    rows = (data / "train.jsonl").read_bytes().replace(b'"answer": "0"', b'"answer": "1"', 1)
    (data / "train.jsonl").write_bytes(rows)


def corrupt(checkpoint: Path) -> None:
    for path in checkpoint.rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


RESUME_REFUSED = [
    ("model.hidden_size=64", None, "model.hidden_size (checkpoint: 32, now: 64)"),
    ("model.num_layers=2", None, "model.num_layers (checkpoint: 1, now: 2)"),
    ("run.seed=5", None, "run.seed (checkpoint: 0, now: 5)"),
    ("run.steps=3", change_one_answer, "data.train_path (contents) (checkpoint: 'train.jsonl sha256:"),
    ("run.steps=3", lambda data: (data / "train.jsonl").write_bytes((data / "train.jsonl").read_bytes() + b'{"prompt": "x", "answer": "y"}\n'),
     "tokenizer vocabulary (checkpoint: 'sha256:"),
]


@pytest.mark.parametrize("override, change, message", RESUME_REFUSED, ids=["hidden_size", "num_layers", "seed", "data", "vocabulary"])
def test_resume_refuses_a_changed_fingerprint_naming_field_and_values(trained, tmp_path, capsys, override, change, message):
    out, data = copy_of(trained, tmp_path)
    if change is not None:
        change(data)
    code, output = run_command(launch.main, [*resume_argv(out, data), override], capsys)
    assert_clean_failure(code, output, EXIT_USER_ERROR, message)
    assert "run.resume_changes=allow" in output


def test_resume_changes_allow_resumes_and_warns(trained, tmp_path, capsys):
    out, data = copy_of(trained, tmp_path)
    change_one_answer(data)
    code, output = run_command(launch.main, [*resume_argv(out, data), "run.steps=3", "run.resume_changes=allow"], capsys)
    assert code == 0, output
    assert "although these changed (run.resume_changes: allow): data.train_path (contents)" in output
    history = (out / "config_history.yaml").read_text()
    assert "resume_changes" in history and "data.train_path (contents)" in history
    assert [strict_json(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3]


def test_a_corrupted_latest_checkpoint_falls_back_and_changed_settings_are_recorded(trained, tmp_path, capsys):
    out, data = copy_of(trained, tmp_path)
    corrupt(out / "checkpoints" / "2")
    code, output = run_command(launch.main, [*resume_argv(out, data), "optimizer.learning_rate=3e-4"], capsys)
    assert code == 0, output
    assert "checkpoint 2 under" in output and "cannot be read" in output and "at step 1" in output
    history = (out / "config_history.yaml").read_text()
    assert "resumed_at_step: 1" in history and "optimizer.learning_rate" in history and "now: 0.0003" in history
    assert "learning_rate: 0.0003" in (out / "config.yaml").read_text()
    assert_outputs_valid(out)


def test_no_intact_checkpoint_is_a_clear_error(trained, tmp_path, capsys):
    out, data = copy_of(trained, tmp_path)
    for step in ("0", "1", "2"):
        corrupt(out / "checkpoints" / step)
    code, output = run_command(launch.main, resume_argv(out, data), capsys)
    assert_clean_failure(code, output, EXIT_USER_ERROR, "no intact checkpoint under")

