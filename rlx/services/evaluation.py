"""Validation: greedy decoding scored by the same reward function that training uses."""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from flax import nnx

from rlx.data import CharTokenizer, PromptRecord, encode_prompts
from rlx.rewards import RewardFn, score_responses
from rlx.rollout import Sampler


def evaluate(
    sampler: Sampler,
    params: nnx.State,
    records: Sequence[PromptRecord],
    tokenizer: CharTokenizer,
    reward_fn: RewardFn,
    prompt_width: int,
    batch_size: int,
) -> dict[str, float]:
    """`val/accuracy`: mean verifier reward of greedy responses over all validation records."""
    rewards, lengths = [], []
    for begin in range(0, len(records), batch_size):
        chunk = list(records[begin : begin + batch_size])
        padded = chunk + [chunk[-1]] * (batch_size - len(chunk))  # one compiled shape for every chunk
        prompts = encode_prompts(padded, tokenizer, prompt_width)
        generation = sampler.generate(params, prompts.tokens, prompts.start, jax.random.key(0), temperature=0.0)
        responses = tokenizer.decode_batch(generation.tokens[: len(chunk)])
        rewards.append(score_responses(reward_fn, responses, chunk, on_error=0.0).rewards)
        lengths.append(generation.lengths[: len(chunk)])
    return {
        "val/accuracy": float(np.mean(np.concatenate(rewards))),
        "val/response_length/mean": float(np.mean(np.concatenate(lengths))),
    }
