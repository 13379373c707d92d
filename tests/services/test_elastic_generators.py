"""Elastic generator processes (`services.generators`, `python -m rlx.scale`) at `bus.max_staleness: 0`.

One process run of 6 steps, rescaled by a `run.hooks` hook through the entry `rlx.scale` uses (`tests/services/elastic_plan.py`):
one generator draws steps 1-2; after step 1 it asks for two; `generator-1` (fewest steps drawn) draws step 3 and gets
step 4, where it is SIGKILLed mid-step by its reward plug-in (`tests/services/process_faults.py`), so `generator`
draws step 4 again and step 5 while `generator-1` restarts; after step 5 it asks for one generator while the restarted
`generator-1` holds step 6 (still compiling), which `generator` draws again. The run trains the same rollouts as a
`local` run with one generator thread: the same (step, prompt) rows, each `n_samples` times, with the same responses.
Two generators started together (the role alone, no learner) miss two publishes while starting and still draw with the
latest weights, each step from where it begins in the prompt stream. A ray run (local cluster of 2 CPUs, one per actor)
asks for two generator actors after step 1: `generator-1` draws step 3 with the latest weights; its reward plug-in
kills one of its workers mid-call and hangs one call past `reward.timeout_s`, both scored and counted.
"""

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from rlx.bus import StalenessGate, TransferQueue
from rlx.config import ConfigError
from rlx.data import PromptStream, load_task
from rlx.models import Qwen3
from rlx.scale import main as scale_main
from rlx.services import train
from rlx.services.generator_process import ProcessGeneratorRole
from rlx.services.tracking import read_metrics
from tests.services.test_process_backend import (PROMPTS, REWARD_FAULT_SETTINGS, REWARD_FAULTS, SAMPLES, assert_each_prompt_drawn_once,
                                                 assert_reward_faults_counted, config, inject_faults, messages_of, rollouts, signalled)

STEPS = 6
KILL_AT_CALL = 3 * SAMPLES * PROMPTS  # the first reward call of step 4 (calls are numbered from 0 in generator processes)
PLAN = "1:2,4:await,5:1"  # `elastic_plan`: after step 1 ask for 2 generators, after 4 await generator-1's restart, after 5 ask for 1


def elastic_config(out, *extra):
    return config(out, f"run.steps={STEPS}", "run.eval_every=100", "run.checkpoint_every=100", *extra)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "run"
    train(elastic_config(out))
    return out


@pytest.fixture(scope="module")
def elastic(tmp_path_factory):
    out, faults = tmp_path_factory.mktemp("elastic") / "run", tmp_path_factory.mktemp("faults")
    with pytest.MonkeyPatch.context() as patch:
        inject_faults(patch, faults, f"{KILL_AT_CALL}:SIGKILL")
        patch.setenv("RLX_TEST_SCALE_RUN", str(out))  # read by the hook
        patch.setenv("RLX_TEST_SCALE_PLAN", PLAN)
        with messages_of("rlx.services.generator_process", logging.INFO) as messages:
            train(elastic_config(out, "services.backend=process", "run.hooks=[tests.services.elastic_plan:rescale_on_cue]"))
    return out, signalled(faults), messages


def test_rescaled_and_killed_generators_train_what_one_generator_does(local, elastic):
    out, _, _ = elastic
    assert rollouts(out) == rollouts(local)  # same prompts, responses and rewards at the same steps
    assert_each_prompt_drawn_once(out, STEPS)
    rows = read_metrics(out / "metrics.jsonl")[1:]
    assert [row["services/generator_replica"] for row in rows] == [0, 0, 1, 0, 0, 0]  # who sealed each step
    assert [row["training/off_policy/staleness_max"] for row in rows] == [0] * STEPS  # every token of version step - 1


def test_a_replica_is_added_killed_restarted_and_removed_while_the_learner_trains(elastic):
    out, signals, log = elastic
    assert [(call, name) for call, name, _ in signals] == [(str(KILL_AT_CALL), "SIGKILL")]
    assert [line.split(" (")[0] for line in log if "goes back" in line] == ["step 4 goes back to be drawn again",  # killed
                                                                            "step 6 goes back to be drawn again"]  # removed
    rows = read_metrics(out / "metrics.jsonl")[1:]
    assert [row.get("services/restarts/generator-1") for row in rows] == [None, 0, 0, 1, 1, None]  # added after 1, removed after 5
    assert [row["services/restarts/generator"] for row in rows] == [0] * STEPS  # the other kept going
    roles = json.loads((out / "services.json").read_text())
    assert sorted(name for name in roles if name.startswith("generator")) == ["generator"]
    assert roles["generator"]["status"] == "done"
    killed = int(signals[0][2])
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)
    assert not list(Path("/dev/shm").glob(f"rlx-{os.getpid()}-*"))  # no shared memory left by removed or killed children


def test_generators_that_missed_publishes_draw_with_the_latest_weights_from_where_their_steps_begin(tmp_path):
    """Two generator processes start while versions 1 and 2 are published: the publishes skip them, and each is caught
    up when it is ready. At `bus.max_staleness: 1` steps 3 and 4 are both admitted, so they are drawn concurrently (step
    4 from where step 3 begins, one batch on, when it is handed out before step 3 is sealed): each draws the prompts one
    stream draws for it, every token of version 2."""
    run_config = elastic_config(tmp_path / "run", "services.backend=process", "services.generators=2", "bus.max_staleness=1")
    task = load_task(run_config.data, None)
    weights = nnx.split(Qwen3(run_config.model.with_vocab(task.tokenizer.vocab_size), rngs=nnx.Rngs(0)))[1]
    publishes = [(weights, 0)]
    bus, gate = TransferQueue(2 * PROMPTS), StalenessGate(1)
    stream = PromptStream(task.train, task.tokenizer, PROMPTS, run_config.data.max_prompt_len, run_config.data.seed)
    role = ProcessGeneratorRole(run_config, bus, gate, 3, 4, lambda: publishes.pop() if publishes else None, stream.get_state(),
                                max_restarts=0, heartbeat_s=1.0)
    role.start()
    try:
        for version in (1, 2):
            publishes.append((weights, version))
            role.advance(version)
        assert [replica.version for replica in role.replicas.values()] == [0, 0]  # starting: the publishes skipped them
        steps = [bus.take_batch(step, ("versions",), timeout=60) for step in (3, 4)]
    finally:
        role.stop()
    for groups, _ in steps:
        versions = np.concatenate([group.fields["versions"][group.fields["versions"] >= 0] for group in groups])
        assert versions.size and set(versions.tolist()) == {2}
        assert [record.id for group in groups for record in group.meta["records"][::SAMPLES]] == [record.id for record in next(stream).records]
    assert role.error is None


def test_a_ray_run_scaled_to_two_actors_hands_the_second_a_step(tmp_path):
    """Ray actors ask for `services.ray_generator_cpus: 1` each (the default): two fit the local cluster of 2 CPUs."""
    pytest.importorskip("ray")
    out, faults, steps = tmp_path / "run", tmp_path / "faults", 3
    faults.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        inject_faults(patch, faults, REWARD_FAULTS)
        patch.setenv("RLX_TEST_SCALE_RUN", str(out))
        patch.setenv("RLX_TEST_SCALE_PLAN", "1:2")  # after step 1 ask for 2 generators and wait until generator-1 is ready
        train(config(out, f"run.steps={steps}", "services.backend=ray", "services.heartbeat_s=5",
                     "run.hooks=[tests.services.elastic_plan:rescale_on_cue]", *REWARD_FAULT_SETTINGS))
    assert_each_prompt_drawn_once(out, steps)
    rows = read_metrics(out / "metrics.jsonl")[1:]
    assert [row["services/generator_replica"] for row in rows] == [0, 0, 1]  # step 2 was handed out before the request
    assert [row.get("services/restarts/generator-1") for row in rows] == [None, 0, 0]
    assert [row["training/off_policy/staleness_max"] for row in rows] == [0] * steps  # generator-1 had the latest weights
    roles = json.loads((out / "services.json").read_text())
    assert {name: roles[name]["status"] for name in roles if name.startswith("generator")} == {"generator": "done", "generator-1": "done"}
    assert_reward_faults_counted(out, signalled(faults))


def test_scaling_is_refused_without_a_live_process_run(tmp_path, local, capsys):
    assert scale_main(["--run", str(local), "--generators", "2"]) == 2  # a local run
    assert "services.generators=2 runs generator processes; it needs services.backend: process" in capsys.readouterr().err
    assert scale_main(["--run", str(tmp_path), "--generators", "1"]) == 2
    assert "holds no config.yaml" in capsys.readouterr().err
    assert scale_main(["--run", str(local), "--generators", "0"]) == 2
    assert "at least 1 generator" in capsys.readouterr().err


def test_scaling_a_finished_process_run_is_refused(elastic, capsys):
    out, _, _ = elastic
    assert scale_main(["--run", str(out), "--generators", "2"]) == 2
    assert "no live run in" in capsys.readouterr().err
    assert not (out / "scale_request.json").exists()


def test_several_generators_need_the_process_backend_and_known_positions(tmp_path):
    with pytest.raises(ConfigError, match="services.generators=2 runs generator processes; it needs services.backend: process"):
        config(tmp_path, "services.generators=2")
    with pytest.raises(ConfigError, match="algorithm.dynamic_sampling"):
        config(tmp_path, "services.backend=process", "services.generators=2", "algorithm.dynamic_sampling=true")
