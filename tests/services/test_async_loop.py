"""The loop with look-ahead: staleness 0 is the synchronous step, versions and counts are exact,
weights reach the generator's slice without recompiling, and shutdown leaves no thread behind."""

import json
import threading

import jax
import numpy as np
import pytest

from rlx.config import load_config
from rlx.rollout import sampling_params
from rlx.services import train
from rlx.services.feed import RolloutFeed
from rlx.services.trainer import Trainer
from rlx.services.tracking import read_metrics
from tests.conftest import tiny_overrides


def parity_reward(response, record):
    """A reward with variance on an untrained tiny model, so the first update is not zero."""
    return float(len(response.strip()) % 2)


SIGNAL = ["reward.fn=tests.services.test_async_loop:parity_reward"]
SYNC_KEYS = ["actor/pg_loss", "actor/grad_norm", "actor/entropy", "reward/mean", "val/accuracy", "val/response_length/mean"]


def tiny(out, *extra):
    return load_config(None, [*tiny_overrides(out), *SIGNAL, *extra])


def test_colocated_staleness_0_reproduces_the_synchronous_step(tmp_path):
    trainer = Trainer(tiny(tmp_path / "sync"))
    try:
        trainer.resume_or_warm_start()
        expected = {**trainer.rl_step(1), **trainer.evaluate()}
    finally:
        trainer.close()
    train(tiny(tmp_path / "loop", "run.steps=1", "bus.max_staleness=0"))
    got = read_metrics(tmp_path / "loop" / "metrics.jsonl")[1]
    assert expected["actor/grad_norm"] > 0
    assert {k: got[k] for k in SYNC_KEYS} == {k: expected[k] for k in SYNC_KEYS}
    assert got["training/off_policy/staleness_max"] == 0


def test_async_run_keeps_the_bound_and_loses_no_group(tmp_path):
    out = tmp_path / "async"
    train(tiny(out, "run.steps=4", "bus.max_staleness=2"))
    rows = read_metrics(out / "metrics.jsonl")[1:]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(0 <= r["training/off_policy/staleness_max"] <= 2 for r in rows)
    last = rows[-1]
    assert last["bus/groups_in"] == last["bus/groups_taken"] + last.get("bus/groups_dropped_stale", 0) == 4 * 4
    consumed = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    prompt_ids = [(row["step"], row["prompt_id"]) for row in consumed[::2]]
    assert len({p for _, p in prompt_ids}) == len(prompt_ids) == 16  # no prompt lost or trained twice


@pytest.fixture(scope="module")
def ahead_trainer(tmp_path_factory):
    trainer = Trainer(tiny(tmp_path_factory.mktemp("ahead") / "run", "bus.max_staleness=2"))
    trainer.resume_or_warm_start()
    yield trainer
    trainer.close()


def test_stale_samples_carry_the_versions_that_produced_them(ahead_trainer):
    trainer = ahead_trainer
    with RolloutFeed(trainer, first=1, last=4, take_timeout_s=60) as feed:
        batches = [feed.take(step) for step in (1, 2, 3)]  # the learner has published only version 0
        for step, (batch, metrics) in enumerate(batches, start=1):
            versions = batch.rollout.policy_version[batch.rollout.generation.mask > 0]
            assert (versions == 0).all()
            assert metrics["training/off_policy/staleness_max"] == step - 1
        with pytest.raises(TimeoutError):
            feed.bus.take_batch(4, ["tokens"], timeout=1.0)  # step 4 would be 3 versions stale: not admitted
        trainer.learn(1, batches[0][0])
        feed.advance(1)
        batch, metrics = feed.take(4)
        assert (batch.rollout.policy_version[batch.rollout.generation.mask > 0] == 1).all()
        assert metrics["training/off_policy/staleness_max"] == 2


def test_shutdown_mid_step_joins_the_generator(ahead_trainer):
    with RolloutFeed(ahead_trainer, first=2, last=50, take_timeout_s=60) as feed:
        feed.take(2)  # the generator is now ahead: blocked on admission or mid-rollout
    assert not feed.generator._thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name == "rlx-generator"]


def test_a_failing_generator_stops_the_learner_with_its_error(ahead_trainer, monkeypatch):
    def broken(step):
        raise RuntimeError("reward service down")

    monkeypatch.setattr(ahead_trainer, "produce", broken)
    with pytest.raises(RuntimeError, match="reward service down"):
        with RolloutFeed(ahead_trainer, first=3, last=4, take_timeout_s=30) as feed:
            feed.take(3)


def test_disaggregated_publish_reaches_the_generator_slice_without_recompiling(tmp_path, no_persistent_cache):
    config = tiny(tmp_path / "run", "parallel.placement=disaggregated", "parallel.learner.fsdp=4", "parallel.generator.data=4")
    trainer = Trainer(config)
    learner_devices, generator_devices = set(jax.devices()[:4]), set(jax.devices()[4:8])
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, *_, **__: compiles.append(event) if event == "/jax/core/compile/backend_compile_duration" else None)
    try:
        trainer.resume_or_warm_start()
        assert np.isfinite(trainer.rl_step(1)["actor/loss"])
        prompts = next(trainer.prompts)
        generate = lambda: trainer.rollout.generate_groups(prompts, 2, jax.random.key(1), sampling_params(config.rollout), 5)
        generate()
        trainer.learn(2, trainer.produce(2)[0])  # publishes version 2
        trainer.rollout.update_weights(*trainer.mailbox.take())
        compiles.clear()
        assert (generate().policy_version[:, 0] == 2).all()
        assert compiles == []
        for learned, served in zip(jax.tree.leaves(trainer.learner.params), jax.tree.leaves(trainer.rollout.params)):
            np.testing.assert_array_equal(np.asarray(learned), np.asarray(served))
            assert set(learned.devices()) <= learner_devices and set(served.devices()) == generator_devices
    finally:
        jax.monitoring.clear_event_listeners()
        trainer.close()

