"""The learner's programs on 8 simulated devices: shardings from the rules, work split by data parallelism,
the same update whatever the mesh or the micro-batch size, and no recompilation across steps."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from rlx.algorithms import AlgorithmConfig
from rlx.learner import Learner, LearnerConfig, OptimizerConfig, TrainBatch
from rlx.learner import memory
from rlx.learner.config import CriticConfig
from rlx.learner.memory import ProgramMemory
from rlx.learner.programs import abstract
from rlx.models import ModelConfig, Qwen3
from rlx.parallel import MeshConfig, make_mesh, rules_for

LEARNING_RATE = 1e-2
# Adam's first step moves a weight by about lr * g / |g|: for gradients near zero the summation order
# decides it, so weights are compared to 2% of one step, metrics (sums over the batch) tightly.
STEP_TOLERANCE = 0.02 * LEARNING_RATE
MODEL = ModelConfig(vocab_size=13, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
ROWS, PROMPT, RESPONSE = 16, 5, 4


def make_batch(rows: int = ROWS, seed: int = 0) -> TrainBatch:
    """`rows // 2` prompt groups of two, left-padded prompts, responses stopping at different lengths."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, RESPONSE + 1, rows)
    return TrainBatch(
        tokens=rng.integers(3, MODEL.vocab_size, (rows, PROMPT + RESPONSE)).astype(np.int32),
        start=rng.integers(0, 3, rows).astype(np.int32),
        mask=(np.arange(RESPONSE)[None] < lengths[:, None]).astype(np.float32),
        rewards=rng.integers(0, 2, rows).astype(np.float32),
        group_ids=np.repeat(np.arange(rows // 2), 2).astype(np.int32),
        behaviour_log_probs=rng.uniform(-3, -0.5, (rows, RESPONSE)).astype(np.float32),
        staleness=np.zeros((rows, RESPONSE), np.float32),
    )


def make_learner(mesh_shape: dict | None = None, algorithm=AlgorithmConfig(), learner=LearnerConfig(), **kwargs) -> Learner:
    mesh = make_mesh(MeshConfig(**mesh_shape), jax.devices()[: MeshConfig(**mesh_shape).size]) if mesh_shape else None
    return Learner(*nnx.split(Qwen3(MODEL, rngs=nnx.Rngs(0))), algorithm, OptimizerConfig(learning_rate=LEARNING_RATE), 1.0, learner=learner,
                   mesh=mesh, rules=rules_for("fsdp"), **kwargs)


def assert_same_trees(a, b, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), atol=atol, rtol=atol)


@pytest.fixture(scope="module")
def single_device_update():
    learner = make_learner()
    metrics = learner.update(make_batch())
    return learner, metrics


def test_batch_weights_and_optimizer_state_are_sharded_as_the_rules_say():
    learner = make_learner({"data": 2, "fsdp": 4}, AlgorithmConfig(kl_coef=0.1))
    batch = learner.layout.feed(make_batch())
    for leaf in jax.tree.leaves(batch):
        assert leaf.sharding.spec == P(("data", "fsdp"))  # rules "fsdp": batch -> (data, fsdp)
    compiled = learner.programs.update.lower(learner.params, learner.opt_state, batch, jax.eval_shape(
        lambda: learner.programs.prepare(batch, *(batch.behaviour_log_probs,) * 4)[0])).compile()
    assert all(s.spec == P(("data", "fsdp")) for s in jax.tree.leaves(compiled.input_shardings[0][2]))
    q_proj = learner.params["layers"][0]["layer"]["attn"]["q_proj"]
    assert q_proj.sharding.spec == P(None, "fsdp", None, None)  # (layers, embed, heads, head_dim): embed over fsdp
    mu = learner.opt_state[1][0].mu["layers"][0]["layer"]["attn"]["q_proj"]
    ref = learner.ref_params["layers"][0]["layer"]["attn"]["q_proj"]
    assert mu.sharding == q_proj.sharding and ref.sharding == q_proj.sharding
    assert not any(len(x.sharding.device_set) == 1 for x in jax.tree.leaves(learner.opt_state) if x.ndim)
    log_probs, _ = learner.log_probs(make_batch())
    assert log_probs.sharding.spec == P(("data", "fsdp"))


def test_per_device_flops_fall_with_data_parallel_devices():
    flops = {}
    for devices in (1, 2, 8):
        learner = make_learner({"fsdp": devices})
        batch = abstract(learner.layout.feed(make_batch()))
        _, args = learner.programs.programs(batch)["learner update"]
        flops[devices] = learner.programs.update.lower(*args).compile().cost_analysis()["flops"]
    for devices in (2, 8):
        assert flops[devices] == pytest.approx(flops[1] / devices, rel=0.15), flops


@pytest.mark.parametrize("mesh_shape", [{"fsdp": 2}, {"data": 2, "fsdp": 4}])
def test_update_is_the_same_on_any_mesh(single_device_update, mesh_shape):
    reference, reference_metrics = single_device_update
    learner = make_learner(mesh_shape)
    metrics = learner.update(make_batch())
    assert_same_trees(learner.params, reference.params, atol=STEP_TOLERANCE)
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy"):
        assert metrics[key] == pytest.approx(reference_metrics[key], rel=1e-4), key


@pytest.mark.parametrize("algorithm", [
    AlgorithmConfig(minibatches=2, epochs=2),
    AlgorithmConfig(minibatches=2, loss_agg_mode="seq-mean-token-mean", kl_coef=0.1, entropy_coef=0.01, policy_loss="gspo"),
], ids=["token-mean", "seq-mean-kl-gspo"])
def test_micro_batches_give_the_update_of_whole_minibatches(algorithm):
    whole = make_learner({"fsdp": 2}, algorithm)
    micro = make_learner({"fsdp": 2}, algorithm, LearnerConfig(micro_batch_rows=2))
    expected, got = whole.update(make_batch()), micro.update(make_batch())
    assert_same_trees(micro.params, whole.params, atol=STEP_TOLERANCE)
    assert_same_trees(micro.opt_state, whole.opt_state, atol=STEP_TOLERANCE)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key


def test_micro_batched_critic_update_matches():
    algorithm = AlgorithmConfig(adv_estimator="gae")
    critic = CriticConfig(enabled=True, learning_rate=1e-2)
    whole = make_learner({"fsdp": 2}, algorithm, critic=critic)
    micro = make_learner({"fsdp": 2}, algorithm, LearnerConfig(micro_batch_rows=4, remat="full"), critic=critic)
    for _ in range(2):  # the second update reads values the first critic update moved
        expected, got = whole.update(make_batch()), micro.update(make_batch())
    assert_same_trees(micro.critic.params, whole.critic.params, atol=STEP_TOLERANCE)
    assert got["critic/vf_loss"] == pytest.approx(expected["critic/vf_loss"], rel=1e-4)


def test_steps_reuse_one_compiled_update():
    learner = make_learner({"data": 2})
    for seed in range(3):
        learner.update(make_batch(seed=seed))
    assert learner.programs.update._cache_size() == 1
    assert learner.programs.log_probs._cache_size() == 1


def test_micro_batch_rows_must_split_rows_over_devices():
    learner = make_learner({"data": 4}, learner=LearnerConfig(micro_batch_rows=2))
    with pytest.raises(ValueError, match="do not split over the mesh's data-parallel axes"):
        learner.update(make_batch())
    with pytest.raises(ValueError, match="do not split into micro-batches of learner.micro_batch_rows=3"):
        make_learner(learner=LearnerConfig(micro_batch_rows=3)).update(make_batch())


def test_largest_fitting_bisects_to_the_largest_candidate_that_fits(monkeypatch):
    peaks = {16: 9.0, 8: 5.0, 4: 3.0, 2: 2.0, 1: 1.5}
    compiled = []

    def fake_measure(fn, *args):
        compiled.append(fn)
        return ProgramMemory(peaks[fn], 0.0, 0.0, 0.0, 0.0)

    monkeypatch.setattr(memory, "measure", fake_measure)
    programs_for = lambda rows: {"update": (rows, ())}
    assert memory.largest_fitting([16, 8, 4, 2, 1], programs_for, 4.0)[0] == 4
    assert len(compiled) <= 4  # 16 and 1 first, then 4 and 8 (or 2)
    assert memory.largest_fitting([16, 8, 4, 2, 1], programs_for, 1.0)[0] == 1  # none fits: the smallest, and the plan says so
    assert memory.micro_batch_candidates(16, 4) == [16, 8, 4]


@pytest.mark.parametrize("gib, rows", [(100.0, ROWS), (1e-6, 2)])
def test_auto_micro_batch_rows_resolves_at_the_first_batch(gib, rows):
    learner = make_learner({"fsdp": 2}, learner=LearnerConfig(micro_batch_rows="auto"), device_memory_gib=gib)
    assert np.isfinite(learner.update(make_batch())["actor/loss"])
    assert learner.micro_batch_rows == rows


def test_tensor_parallel_update_encodes_media_over_every_device(monkeypatch):
    """Rules fsdp_tp on {fsdp: 2, tensor: 2}: heads, MLP and vocabulary split over `tensor` (the fused log-prob
    combines its vocabulary shards), images encoded over all 4 devices; same result as on one device."""
    import rlx.parallel.layout as layout_module
    from rlx.models.encoder_config import VisionConfig

    model = ModelConfig(vocab_size=14, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8,
                        vision=VisionConfig(enabled=True, width=16, heads=2, mlp=32))
    batch = make_batch(8)
    batch.tokens[:, 1:5] = model.vision.image_token_id  # one image (4 tokens) per prompt
    batch.media = {"image": np.random.default_rng(1).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)}
    calls, encode = [], layout_module.encode_data_parallel
    monkeypatch.setattr(layout_module, "encode_data_parallel", lambda *args: calls.append(args[2].size) or encode(*args))
    results = []
    for mesh, rules in ((None, "fsdp"), (make_mesh(MeshConfig(fsdp=2, tensor=2), jax.devices()[:4]), "fsdp_tp")):
        learner = Learner(*nnx.split(Qwen3(model, rngs=nnx.Rngs(0))), AlgorithmConfig(), OptimizerConfig(learning_rate=LEARNING_RATE), 1.0,
                          mesh=mesh, rules=rules_for(rules))
        results.append((learner.log_probs(batch)[0], learner.update(batch)))
    assert 4 in calls  # the 4-device learner's forward ran its encoder through encode_data_parallel
    np.testing.assert_allclose(results[1][0], results[0][0], atol=2e-5)
    for key in ("actor/pg_loss", "actor/grad_norm"):
        assert results[1][1][key] == pytest.approx(results[0][1][key], rel=1e-4), key
