"""Rollout routing replay (R3), the learner's side: recorded routes are replayed in every forward, the router still
learns, replaying the learner's own routes changes nothing, padding replays nothing, and agreement is counted."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlx.algorithms import AlgorithmConfig
from rlx.learner import Learner, OptimizerConfig, TrainBatch
from rlx.models import ModelConfig, Qwen3
from rlx.parallel import MeshConfig, make_mesh, rules_for

MODEL = ModelConfig(vocab_size=16, hidden_size=32, intermediate_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                    num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, moe_impl="scan")
ROWS, PROMPT, RESPONSE = 8, 5, 4


def make_learner(replay="replay", mesh_shape=None, preset="fsdp") -> Learner:
    mesh = make_mesh(MeshConfig(**mesh_shape), jax.devices()[: MeshConfig(**mesh_shape).size]) if mesh_shape else None
    return Learner(*nnx.split(Qwen3(MODEL, rngs=nnx.Rngs(0))), AlgorithmConfig(routing_replay=replay), OptimizerConfig(learning_rate=1e-2),
                   1.0, mesh=mesh, rules=rules_for(preset))


def real_columns(batch: TrainBatch) -> np.ndarray:
    """[B, P + R] True on real prompt and response tokens."""
    columns = np.arange(PROMPT + RESPONSE)[None, :]
    return (columns >= batch.start[:, None]) & (columns < PROMPT + batch.mask.sum(axis=1)[:, None])


@pytest.fixture(scope="module")
def batch() -> TrainBatch:
    """Rows with the routes the learner's own router chooses recorded on real tokens (-1 elsewhere)."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, RESPONSE + 1, ROWS)
    batch = TrainBatch(
        tokens=rng.integers(3, MODEL.vocab_size, (ROWS, PROMPT + RESPONSE)).astype(np.int32),
        start=rng.integers(0, 3, ROWS).astype(np.int32),
        mask=(np.arange(RESPONSE)[None] < lengths[:, None]).astype(np.float32),
        rewards=rng.integers(0, 2, ROWS).astype(np.float32),
        group_ids=np.repeat(np.arange(ROWS // 2), 2).astype(np.int32),
        behaviour_log_probs=rng.uniform(-3, -0.5, (ROWS, RESPONSE)).astype(np.float32),
    )
    graphdef, params = nnx.split(Qwen3(MODEL, rngs=nnx.Rngs(0)))
    forward = jax.jit(lambda params, tokens, start: nnx.merge(graphdef, params).hidden_states_and_routes(tokens, start=start)[2])
    own = forward(params, jnp.asarray(batch.tokens), jnp.asarray(batch.start))
    routes = np.where(real_columns(batch)[:, :, None, None], np.asarray(own), -1).astype(np.int32)
    return dataclasses.replace(batch, routes=routes)


def forced(batch: TrainBatch, rows=slice(None)) -> TrainBatch:
    """Every recorded route of `rows` moved to other experts: a generator that routed differently."""
    routes = batch.routes.copy()
    moved = np.where(routes >= 0, (routes + 3) % MODEL.num_experts, -1)
    routes[rows] = moved[rows]
    return dataclasses.replace(batch, routes=routes)


def scores(learner: Learner, batch: TrainBatch):
    return learner.programs.log_probs(learner.params, learner.layout.feed(batch))


def test_replaying_the_learners_own_routes_changes_nothing(batch):
    replayed, plain = make_learner(), make_learner("off")
    own = scores(replayed, batch)
    np.testing.assert_allclose(own.log_probs, scores(plain, dataclasses.replace(batch, routes=None)).log_probs, atol=1e-6)
    agreed, recorded = np.asarray(own.route_agreement).sum(axis=0)
    assert agreed == recorded == real_columns(batch)[:, :-1].sum() * MODEL.moe_layers
    metrics = replayed.update(batch)
    plain_metrics = plain.update(dataclasses.replace(batch, routes=None))
    assert metrics["moe/route_agreement"] == 1.0 and "moe/route_agreement" not in plain_metrics
    assert metrics["actor/grad_norm"] == pytest.approx(plain_metrics["actor/grad_norm"], rel=1e-5)
    for a, b in zip(jax.tree.leaves(replayed.params), jax.tree.leaves(plain.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_recorded_routes_are_replayed_and_the_router_still_learns(batch):
    learner = make_learner()
    other = forced(batch)
    moved = scores(learner, other)
    assert np.abs(np.asarray(moved.log_probs - scores(learner, batch).log_probs) * batch.mask).max() > 1e-3
    agreed, recorded = np.asarray(moved.route_agreement).sum(axis=0)
    assert agreed < 0.05 * recorded  # the learner's router rarely picks the moved routes itself (later layers see replayed inputs)
    routers = lambda params: [np.asarray(params["layers"][stack]["layer"]["mlp"]["router"][...]) for stack in params["layers"]]
    before = routers(learner.params)
    metrics = learner.update(other)
    assert metrics["moe/route_agreement"] == pytest.approx(agreed / recorded) and np.isfinite(metrics["actor/pg_loss"])
    # Adam moves a weight only where its gradient is nonzero: gradients reached every MoE layer's router through the
    # gate weights recomputed at the replayed experts.
    for old, new in zip(before, routers(learner.params)):  # [layers of the stack, hidden, experts]
        assert (np.abs(new - old).max(axis=(1, 2)) > 1e-4).all()


def test_padding_rows_replay_nothing(batch):
    """Rows recorded as -1 (nothing recorded) route themselves; the other rows' moved routes still apply."""
    learner = make_learner()
    half = forced(batch, rows=slice(0, ROWS // 2))
    half.routes[ROWS // 2:] = -1
    own = np.asarray(scores(learner, batch).log_probs)
    mixed = scores(learner, half)
    np.testing.assert_allclose(np.asarray(mixed.log_probs)[ROWS // 2:], own[ROWS // 2:], atol=1e-6)
    assert not np.allclose(np.asarray(mixed.log_probs)[: ROWS // 2] * batch.mask[: ROWS // 2], own[: ROWS // 2] * batch.mask[: ROWS // 2])
    assert (np.asarray(mixed.route_agreement)[ROWS // 2:] == 0).all()  # no record, nothing counted


def test_record_only_compares_without_replaying(batch):
    learner = make_learner("record")
    moved = scores(learner, forced(batch))
    np.testing.assert_allclose(moved.log_probs, scores(learner, batch).log_probs, atol=1e-6)
    assert np.asarray(moved.route_agreement)[:, 0].sum() == 0 < np.asarray(moved.route_agreement)[:, 1].sum()


def test_replay_needs_recorded_routes(batch):
    with pytest.raises(ValueError, match="routing_replay=replay needs TrainBatch.routes"):
        make_learner().update(dataclasses.replace(batch, routes=None))


def test_replay_under_expert_parallelism_equals_one_device(batch):
    other = forced(batch, rows=slice(0, ROWS // 2))
    want = scores(make_learner(), other)
    got = scores(make_learner(mesh_shape={"fsdp": 2, "tensor": 2, "expert": 2}, preset="fsdp_tp_ep"), other)
    np.testing.assert_allclose(np.asarray(got.log_probs), np.asarray(want.log_probs), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got.route_agreement), np.asarray(want.route_agreement))
