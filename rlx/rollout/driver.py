"""Rollouts for RL: `n` samples per prompt, each group's rows adjacent and tagged."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from rlx.data import PromptBatch, PromptRecord
from rlx.rollout.sampler import Generation, Sampler


@dataclasses.dataclass(frozen=True)
class GroupRollout:
    records: list[PromptRecord]  # one per row (a prompt repeated n times)
    prompt_tokens: np.ndarray  # [B * n, P]
    start: np.ndarray  # [B * n]
    group_ids: np.ndarray  # [B * n], row // n
    generation: Generation
    policy_version: np.ndarray  # [B * n, R] version of the weights that produced each token


def generate_groups(
    sampler: Sampler,
    params: nnx.State,
    prompts: PromptBatch,
    n: int,
    key: jax.Array,
    temperature: float,
    top_p: float,
    policy_version: int,
) -> GroupRollout:
    tokens = np.repeat(prompts.tokens, n, axis=0)
    start = np.repeat(prompts.start, n, axis=0)
    generation = sampler.generate(params, tokens, start, key, temperature, top_p)
    versions = np.where(generation.mask > 0, policy_version, -1).astype(np.int32)
    return GroupRollout(
        records=[record for record in prompts.records for _ in range(n)],
        prompt_tokens=tokens,
        start=start,
        group_ids=np.arange(len(tokens), dtype=np.int32) // n,
        generation=generation,
        policy_version=versions,
    )
