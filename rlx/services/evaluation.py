"""Validation: greedy decoding, and sampled evaluation with pass@k, scored by the reward function training uses."""

from __future__ import annotations

import logging
from typing import Callable, Mapping, Sequence

import jax
import numpy as np

from rlx.data import CharTokenizer, PromptRecord, encode_prompts
from rlx.data.media import MediaSpec
from rlx.data.placeholders import prompt_ids, record_modality
from rlx.rewards import EarlyScores, RewardFn, Scores, score_responses
from rlx.rollout import GroupRollout, RolloutBackend, SamplingParams

log = logging.getLogger(__name__)

# A sample counts as solved when its reward reaches this: verifiers score a correct answer 1.0
# (with a weighted sum such as `math_verify + 0.1 * format`, give the verifier weight 1).
SOLVED_AT = 1.0

# Per-record results of this process -> those of every process, joined (a multi-process run's
# processes each evaluate a part of the records; `rlx.parallel.Processes.gather_rows`).
Gather = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


def this_process(rows: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    return rows


def rollout_scores(rollout: GroupRollout, responses: Sequence[str], reward_fn: RewardFn, on_error: float,
                   early: EarlyScores | None = None) -> Scores:
    """The rewards of `rollout`: its environment's (multi-turn rollouts; a trajectory whose environment failed scores
    `on_error`), else `reward_fn` of each response (those `early` started as their samples finished, read from it)."""
    if rollout.rewards is not None:
        return Scores(np.where(rollout.env_errors, np.float32(on_error), rollout.rewards), int(rollout.env_errors.sum()))
    return score_responses(reward_fn, responses, rollout.records, on_error, early)


def policy_tokens(rollout: GroupRollout) -> np.ndarray:
    """[rows] tokens the policy wrote (multi-turn observations not counted)."""
    return rollout.generation.mask.sum(axis=1)


def _scored_rows(backend: RolloutBackend, records: Sequence[PromptRecord], tokenizer: CharTokenizer, reward_fn: RewardFn,
                 prompt_width: int, max_new_tokens: int, sampling: SamplingParams, samples: int, key: jax.Array,
                 media: MediaSpec | None, gather: Gather) -> tuple[Mapping[str, np.ndarray], GroupRollout]:
    """`samples` scored responses per record, gathered from every process: `rewards` and `lengths` [records, samples]
    (policy tokens), `modalities` [records], `errors` [processes]; and this process's rollout."""
    prompts = encode_prompts(list(records), tokenizer, prompt_width, media)
    rollout = backend.generate_groups(prompts, samples, key, sampling, max_new_tokens)
    responses = tokenizer.decode_batch(rollout.generation.tokens)
    scores = rollout_scores(rollout, responses, reward_fn, on_error=0.0)
    rows = gather({"rewards": scores.rewards.reshape(len(records), samples),  # rows are prompt-major
                   "lengths": policy_tokens(rollout).reshape(len(records), samples),
                   "modalities": np.array([record_modality(record) for record in rollout.records[::samples]]),
                   "errors": np.array([scores.errors])})  # one per process
    return rows, rollout


def evaluate(
    backend: RolloutBackend,
    records: Sequence[PromptRecord],
    tokenizer: CharTokenizer,
    reward_fn: RewardFn,
    prompt_width: int,
    max_new_tokens: int,
    media: MediaSpec | None = None,
    gather: Gather = this_process,
) -> dict[str, float]:
    """`val/accuracy`: mean verifier reward of greedy responses over all validation records.

    With modality encoders (`media`), `val/accuracy/<modality>` is the same mean over the
    records of each modality (`text` for records without media).
    All records go to the rollout backend at once: its slots are refilled as responses finish,
    so no batch shape has to be fixed here. With `gather`, the metrics cover every process's records.
    """
    rows, rollout = _scored_rows(backend, records, tokenizer, reward_fn, prompt_width, max_new_tokens, SamplingParams(temperature=0.0),
                                 1, jax.random.key(0), media, gather)
    rewards = rows["rewards"][:, 0]
    metrics = {
        "val/accuracy": float(np.mean(rewards)),
        "val/response_length/mean": float(np.mean(rows["lengths"])),
        **{f"val/{name}": value for name, value in rollout.metrics.items() if name.startswith("agent/")},
    }
    if media is not None:
        modalities = rows["modalities"]
        for name in sorted(set(modalities)):
            metrics[f"val/accuracy/{name}"] = float(np.mean(rewards[modalities == name]))
    return metrics


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from `n` samples of which `c` are correct (Chen et al. 2021, "Evaluating Large
    Language Models Trained on Code"): 1 - C(n - c, k) / C(n, k), computed as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def reported_ks(samples: int) -> list[int]:
    """1, 2, 4, ... below `samples`, and `samples` itself."""
    return sorted({2**i for i in range(samples.bit_length()) if 2**i < samples} | {samples})


def sampled_evaluation(
    backend: RolloutBackend,
    records: Sequence[PromptRecord],
    tokenizer: CharTokenizer,
    reward_fn: RewardFn,
    prompt_width: int,
    max_new_tokens: int,
    sampling: SamplingParams,
    samples: int,
    key: jax.Array,
    media: MediaSpec | None = None,
    gather: Gather = this_process,
) -> dict[str, float]:
    """`samples` responses per prompt at `sampling`: `pass@k` (unbiased, per prompt, averaged) for k in
    `reported_ks(samples)`, `avg@<samples>` (mean reward over every sample), `response_length/mean`,
    and with media `pass@1/<modality>`. A sample is correct when its reward reaches `SOLVED_AT`.
    With `gather`, the metrics cover every process's records."""
    rows, _ = _scored_rows(backend, records, tokenizer, reward_fn, prompt_width, max_new_tokens, sampling, samples, key, media, gather)
    rewards = rows["rewards"]
    correct = (rewards >= SOLVED_AT).sum(axis=1)
    metrics = {f"pass@{k}": float(np.mean([pass_at_k(samples, int(c), k) for c in correct])) for k in reported_ks(samples)}
    metrics[f"avg@{samples}"] = float(rewards.mean())
    metrics["response_length/mean"] = float(np.mean(rows["lengths"]))
    metrics["reward/errors"] = float(rows["errors"].sum())
    if media is not None:
        modalities = rows["modalities"]
        for name in sorted(set(modalities)):
            metrics[f"pass@1/{name}"] = float(np.mean(correct[modalities == name]) / samples)
    return metrics


def usable_records(records: Sequence[PromptRecord], tokenizer: CharTokenizer, prompt_width: int, media: MediaSpec | None) -> list[PromptRecord]:
    """The records this run's tokenizer can encode within `prompt_width` tokens; others are skipped and logged."""
    kept = []
    for record in records:
        try:
            fits = len(prompt_ids(record, tokenizer, media)) <= prompt_width
        except ValueError as err:
            log.warning("skipping record %r: %s", record.id, err)
            continue
        if fits:
            kept.append(record)
        else:
            log.warning("skipping record %r: its prompt is longer than data.max_prompt_len=%d tokens", record.id, prompt_width)
    return kept
