"""Warm starts: stored once, reused only for exactly the same warm-up, and the shipped demo one matches a fresh warm-up."""

import dataclasses
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from rlx.config import load_config
from rlx.data import load_task
from rlx.models import Qwen3
from rlx.services import warmstart
from rlx.services.trainer import Trainer
from rlx.services.tracking import read_metrics
from rlx.warmstart import main as warmstart_main
from tests.conftest import REPO, default_compile_env, tiny_overrides


def warmed_up(out, cache_dir, *extra):
    """The weights and step-0 metrics of a fresh run with warmup.cache on."""
    config = load_config(None, [*tiny_overrides(out), "warmup.sft_steps=3", f"warmup.cache_dir={cache_dir}", *extra])
    trainer = Trainer(config)
    try:
        trainer.resume_or_warm_start()
        params = jax.device_get(trainer.learner.params)
    finally:
        trainer.close()
    return params, read_metrics(out / "metrics.jsonl")[0]


def assert_same_weights(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_reuse_stores_once_then_loads_the_same_weights_refresh_retrains_none_stores_nothing(tmp_path):
    cache = tmp_path / "cache"
    first, first_metrics = warmed_up(tmp_path / "a", cache, "warmup.cache=reuse")
    (stored,) = cache.glob("*.safetensors")
    assert first_metrics["warmup/reused"] == 0.0
    again, again_metrics = warmed_up(tmp_path / "b", cache, "warmup.cache=reuse")
    assert again_metrics["warmup/reused"] == 1.0
    assert_same_weights(first, again)
    for key in ("val/accuracy", "warmup/sft_loss_first", "warmup/sft_loss_last"):
        assert again_metrics[key] == first_metrics[key]
    before = stored.stat().st_mtime_ns
    _, metrics = warmed_up(tmp_path / "c", cache, "warmup.cache=refresh")
    assert metrics["warmup/reused"] == 0.0 and stored.stat().st_mtime_ns > before
    _, metrics = warmed_up(tmp_path / "d", cache, "warmup.cache=none", "warmup.learning_rate=0.01")
    assert metrics["warmup/reused"] == 0.0 and list(cache.glob("*.safetensors")) == [stored]


def key_of(overrides):
    config = load_config(None, [*tiny_overrides("unused"), "warmup.sft_steps=3", *overrides])
    task = load_task(config.data)
    _, params = nnx.split(Qwen3(config.model.with_vocab(task.tokenizer.vocab_size), rngs=nnx.Rngs(config.run.seed)))
    return warmstart.warmup_key(config, params, task.demonstrations, task.tokenizer)


def test_the_key_covers_every_input_of_the_warm_up_and_nothing_else():
    base = key_of([])
    changed = [["model.hidden_size=48"], ["model.attention_impl=xla"], ["data.seed=1"], ["data.arithmetic.max_digits=2"],
               ["warmup.sft_steps=4"], ["warmup.batch_size=4"], ["warmup.learning_rate=0.01"], ["run.seed=1"],
               ["rollout.max_new_tokens=4"], ["learner.logprob_impl=reference"]]
    for overrides in changed:
        assert key_of(overrides) != base, overrides
    for overrides in (["warmup.cache=reuse"], ["warmup.cache_dir=/elsewhere"], ["run.steps=9"], ["optimizer.learning_rate=0.1"]):
        assert key_of(overrides) == base, overrides


def test_a_warm_start_of_another_model_is_refused(tmp_path):
    config = load_config(None, [*tiny_overrides(tmp_path), "warmup.sft_steps=3"])
    _, params = nnx.split(Qwen3(config.model.with_vocab(20), rngs=nnx.Rngs(0)))
    path = tmp_path / "w.safetensors"
    warmstart.save_warm_start(path, params, [1.0], "k")
    _, wider = nnx.split(Qwen3(dataclasses.replace(config.model, hidden_size=48).with_vocab(20), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="rebuild it"):
        warmstart.load_warm_start(path, wider)
    loaded, losses = warmstart.load_warm_start(path, params)
    assert losses == [1.0]
    assert_same_weights(params, loaded)


@pytest.mark.parametrize("demo_config", ["configs/demo.yaml", "configs/demo_moe.yaml"])
def test_the_shipped_demo_warm_start_is_what_this_code_warms_up(demo_config):
    """The demos' 800 warm-up steps ship in rlx/warmstarts/ (the dense demo's and the MoE demo's). Each one's key is this
    code's key for its demo config (same settings, initial weights, demonstrations, tokenizer), and the Trainer's own
    warm-up path reproduces its stored losses (same data order, loss and optimizer): the first 25 steps, run afresh, match them.
    Checked as a user's run compiles (the tests' faster compile changes initial weights' last bits, hence the key).
    If this fails after a deliberate change, rebuild: python -m rlx.warmstart --config <the demo config> --ship"""
    done = subprocess.run([sys.executable, "-m", "rlx.warmstart", "--config", demo_config, "--check", "25"], cwd=REPO,
                          env=default_compile_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert f"is this code's warm start for {demo_config} (25 steps reproduce its losses)" in done.stdout


def test_a_warm_start_check_names_the_missing_key_and_the_rebuild(capsys):
    assert warmstart_main(["--config", "configs/demo.yaml", "--check", "0", "warmup.sft_steps=7"]) == 1
    out = capsys.readouterr().out
    assert "no shipped warm start for configs/demo.yaml under this code's key" in out
    assert "python -m rlx.warmstart --config configs/demo.yaml --ship" in out
