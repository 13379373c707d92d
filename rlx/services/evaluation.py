"""Validation: greedy decoding scored by the same reward function that training uses."""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from rlx.data import CharTokenizer, PromptRecord, encode_prompts
from rlx.data.media import MediaSpec
from rlx.data.placeholders import record_modality
from rlx.rewards import RewardFn, score_responses
from rlx.rollout import RolloutBackend, SamplingParams


def evaluate(
    backend: RolloutBackend,
    records: Sequence[PromptRecord],
    tokenizer: CharTokenizer,
    reward_fn: RewardFn,
    prompt_width: int,
    max_new_tokens: int,
    media: MediaSpec | None = None,
) -> dict[str, float]:
    """`val/accuracy`: mean verifier reward of greedy responses over all validation records.

    With modality encoders (`media`), `val/accuracy/<modality>` is the same mean over the
    records of each modality (`text` for records without media).
    All records go to the rollout backend at once: its slots are refilled as responses finish,
    so no batch shape has to be fixed here.
    """
    prompts = encode_prompts(list(records), tokenizer, prompt_width, media)
    rollout = backend.generate_groups(prompts, 1, jax.random.key(0), SamplingParams(temperature=0.0), max_new_tokens)
    responses = tokenizer.decode_batch(rollout.generation.tokens)
    rewards = score_responses(reward_fn, responses, rollout.records, on_error=0.0).rewards
    metrics = {
        "val/accuracy": float(np.mean(rewards)),
        "val/response_length/mean": float(np.mean(rollout.generation.lengths)),
    }
    if media is not None:
        modalities = np.array([record_modality(record) for record in rollout.records])
        for name in sorted(set(modalities)):
            metrics[f"val/accuracy/{name}"] = float(np.mean(rewards[modalities == name]))
    return metrics
