"""Validation: greedy decoding scored by the same reward function that training uses."""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from rlx.data import CharTokenizer, PromptRecord, encode_prompts
from rlx.rewards import RewardFn, score_responses
from rlx.rollout import RolloutBackend, SamplingParams


def evaluate(
    backend: RolloutBackend,
    records: Sequence[PromptRecord],
    tokenizer: CharTokenizer,
    reward_fn: RewardFn,
    prompt_width: int,
    max_new_tokens: int,
) -> dict[str, float]:
    """`val/accuracy`: mean verifier reward of greedy responses over all validation records.

    All records go to the rollout backend at once: its slots are refilled as responses finish,
    so no batch shape has to be fixed here.
    """
    prompts = encode_prompts(list(records), tokenizer, prompt_width)
    rollout = backend.generate_groups(prompts, 1, jax.random.key(0), SamplingParams(temperature=0.0), max_new_tokens)
    responses = tokenizer.decode_batch(rollout.generation.tokens)
    rewards = score_responses(reward_fn, responses, rollout.records, on_error=0.0).rewards
    return {
        "val/accuracy": float(np.mean(rewards)),
        "val/response_length/mean": float(np.mean(rollout.generation.lengths)),
    }
