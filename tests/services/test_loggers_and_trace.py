"""run.loggers (jsonl, tensorboard, wandb offline) and run.trace (a Chrome trace of each role's phases per step)."""

import json

import pytest

from rlx.config import load_config
from rlx.services import train
from rlx.services.timeline import plot_timeline, read_spans
from tests.conftest import tiny_overrides


def test_only_the_chosen_loggers_write_and_wandb_logs_offline_without_an_api_key(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login either
    out = tmp_path / "run"
    curve = train(load_config(None, [*tiny_overrides(out), "run.steps=2", "run.loggers=[wandb]", "run.wandb_project=rlx-test"]))
    assert not (out / "metrics.jsonl").exists() and not (out / "tensorboard").exists()
    assert curve.stat().st_size > 1000  # drawn from the steps held in memory
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    logged = run_file.read_bytes()
    for name in (b"reward/mean", b"val/accuracy", b"actor/pg_loss", b"rlx-test"):
        assert name in logged, name
    run_id = (out / "wandb_run_id").read_text()
    assert run_file.name == f"run-{run_id}.wandb"  # a resumed run continues this W&B run


@pytest.fixture(scope="module")
def traced_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("trace") / "run"
    train(load_config(None, [*tiny_overrides(out), "run.trace=true", "bus.max_staleness=1"]))
    return out


def test_trace_holds_each_roles_phases_for_every_step(traced_run):
    trace = json.loads((traced_run / "trace.json").read_text())
    names = {e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M"}
    spans = read_spans(traced_run / "trace.json")
    phases = {(names[e["tid"]], e["name"], e["args"]["step"]) for e in spans}
    for step in range(1, 5):
        for role, phase in [("generator", "wait_admission"), ("generator", "generate"), ("generator", "reward"), ("generator", "bus_put"),
                            ("learner", "wait_batch"), ("learner", "learn"), ("learner", "publish")]:
            assert (role, phase, step) in phases, (role, phase, step)
    assert {("learner", "evaluate", 2), ("learner", "save", 4)} <= phases
    for role in ("learner", "generator"):  # a role does one thing at a time
        mine = sorted((e["ts"], e["ts"] + e["dur"]) for e in spans if names[e["tid"]] == role)
        assert all(end <= next_start + 1 for (_, end), (next_start, _) in zip(mine, mine[1:]))
    assert (traced_run / "timeline.png").stat().st_size > 1000


def test_timeline_of_a_window_of_steps(traced_run, tmp_path):
    window = read_spans(traced_run / "trace.json", steps=(2, 3))
    assert {e["args"]["step"] for e in window} == {2, 3}
    assert plot_timeline(traced_run / "trace.json", tmp_path / "w.png", steps=(2, 3)).stat().st_size > 1000
