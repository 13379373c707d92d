"""Rollout backends by name: the same engine driven by rlx's driver or by JetStream's orchestrator.

A backend has `update_weights(params, version)` and
`generate_groups(prompts, n, key, sampling, max_new_tokens) -> GroupRollout`. Multi-turn rollouts
(`turns`) run in rlx's driver only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import jax
from flax import nnx

from rlx.data import PromptBatch
from rlx.models import ModelConfig
from rlx.models.weights import abstract_model
from rlx.parallel.presets import Rules
from rlx.rollout.config import RolloutConfig
from rlx.rollout.driver import GroupRollout, RolloutDriver
from rlx.rollout.engine import Engine
from rlx.rollout.sampling import SamplingParams
from rlx.rollout.turns import MultiTurn


class RolloutBackend(Protocol):
    def update_weights(self, params: nnx.State, version: int) -> None: ...

    def generate_groups(self, prompts: PromptBatch, n: int, key: jax.Array, sampling: SamplingParams, max_new_tokens: int) -> GroupRollout: ...


def _jetstream_backend(engine: Engine, params: nnx.State, config: RolloutConfig, turns: MultiTurn | None) -> RolloutBackend:
    if turns is not None:
        raise ValueError("multi-turn rollouts (env.fn) run in rlx's driver: set rollout.backend: engine")
    from rlx.rollout.jetstream_compat import JetStreamRollout  # the extra is imported only when chosen

    return JetStreamRollout(engine, params, long_prompt=config.long_prompt)


ROLLOUT_BACKENDS: dict[str, Callable[[Engine, nnx.State, RolloutConfig, MultiTurn | None], RolloutBackend]] = {
    "engine": lambda engine, params, config, turns: RolloutDriver(engine, params, long_prompt=config.long_prompt,
                                                                  token_budget=config.token_budget, stop_strings=config.stop_strings,
                                                                  turns=turns),
    "jetstream": _jetstream_backend,
}


def build_engine(graphdef: nnx.GraphDef, params: nnx.State, model_config: ModelConfig, config: RolloutConfig,
                 prompt_len: int, *, eos_id: int, pad_id: int, tokenizer: Any = None, mesh: jax.sharding.Mesh | None = None,
                 rules: Rules | None = None, record_routes: bool = False) -> Engine:
    """The engine a run's rollout config describes; `prompt_len` is the default prefill limit.
    `params` (concrete or abstract) are published in the compute dtype (`rollout.dtype`, else
    `model.dtype`) onto `mesh` by `rules`; responses stop at the tokenizer's `stop_ids` (EOS alone
    without a tokenizer); `record_routes`: see `Engine`."""
    if config.dtype is not None and config.dtype != model_config.dtype:
        # Qwen3 computes in its config's dtype, a static part of the graph: the generator gets its own graph.
        model_config = dataclasses.replace(model_config, dtype=config.dtype)
        graphdef = abstract_model(model_config)[0]
    return Engine(
        graphdef, params, model_config,
        max_concurrent_decodes=config.max_concurrent_decodes,
        max_prefill_length=config.max_prefill_length or prompt_len,
        max_decode_length=config.max_new_tokens,
        stop_tokens=tokenizer.stop_ids if tokenizer is not None else (eos_id,),
        pad_id=pad_id,
        # JetStream checks a request's max tokens once per generate call: one token per call there.
        steps_per_generate=1 if config.backend == "jetstream" else config.steps_per_generate,
        tokenizer=tokenizer,
        mesh=mesh,
        rules=rules,
        record_routes=record_routes,
        speculative=config.speculation,
    )


def build_backend(engine: Engine, params: nnx.State, config: RolloutConfig, turns: MultiTurn | None = None) -> RolloutBackend:
    return ROLLOUT_BACKENDS[config.backend](engine, params, config, turns)


def sampling_params(config: RolloutConfig) -> SamplingParams:
    return SamplingParams(config.temperature, config.top_p, config.top_k)
