"""DAPO dynamic sampling (Yu et al. 2025): keep drawing rollouts until the batch holds enough
prompt groups whose rewards differ; groups that all scored the same are dropped and counted.

The batch keeps its shape (`groups_needed` groups) so the learner never recompiles: when
`max_rounds` draws do not yield enough varied groups, dropped groups fill the rest (their
group-relative advantage is zero) and `dapo/filled_groups` says how many.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from rlx.algorithms import groups_with_signal
from rlx.rollout import GroupRollout


@dataclasses.dataclass(frozen=True)
class ScoredRollout:
    rollout: GroupRollout
    responses: list[str]
    scores: np.ndarray  # [rows] verifier reward


def take_rows(value: Any, index: np.ndarray) -> Any:
    """Rows `index` of every per-row field (arrays with a batch axis, lists, dicts of them: media) of a nested dataclass."""
    if dataclasses.is_dataclass(value):
        return dataclasses.replace(value, **{f.name: take_rows(getattr(value, f.name), index) for f in dataclasses.fields(value) if f.init})
    if isinstance(value, dict):
        return {key: take_rows(item, index) for key, item in value.items()}
    if isinstance(value, np.ndarray) and value.ndim:
        return value[index]
    if isinstance(value, list):
        return [value[i] for i in index]
    return value  # per-batch values (e.g. metrics) are not rows


def concat_rows(values: list[Any]) -> Any:
    """Row-wise concatenation of nested dataclasses of the same type; per-batch values come from the first."""
    first = values[0]
    if dataclasses.is_dataclass(first):
        fields = [f.name for f in dataclasses.fields(first) if f.init]
        return dataclasses.replace(first, **{name: concat_rows([getattr(v, name) for v in values]) for name in fields})
    if isinstance(first, dict):
        return {key: concat_rows([value[key] for value in values]) for key in first}
    if isinstance(first, np.ndarray) and first.ndim:
        return np.concatenate(values, axis=0)
    if isinstance(first, list):
        return [item for value in values for item in value]
    return first


def fill_with_varied_groups(
    first: ScoredRollout, draw: Callable[[int], ScoredRollout], group_size: int, groups_needed: int, max_rounds: int,
) -> tuple[ScoredRollout, dict[str, float]]:
    """`first`, then `draw(1)`, `draw(2)`, ... until `groups_needed` varied groups or `max_rounds` draws."""
    varied, flat, dropped = [], [], 0
    drawn, rounds = first, 0
    while True:
        rounds += 1
        signal = groups_with_signal(drawn.scores, np.asarray(drawn.rollout.group_ids))
        varied.append(take_rows(drawn, np.flatnonzero(signal)))
        flat.append(take_rows(drawn, np.flatnonzero(~signal)))
        dropped += int(np.sum(~signal)) // group_size
        have = sum(len(part.scores) for part in varied) // group_size
        if have >= groups_needed or rounds == max_rounds:
            break
        drawn = draw(rounds)
    pool = concat_rows(varied + flat)  # varied groups first; flat ones only fill a shortfall
    rows = groups_needed * group_size
    batch = take_rows(pool, np.arange(rows))
    group_ids = (np.arange(rows) // group_size).astype(np.int32)
    batch = dataclasses.replace(batch, rollout=dataclasses.replace(batch.rollout, group_ids=group_ids))
    metrics = {"dapo/dropped_groups": float(dropped), "dapo/sampling_rounds": float(rounds), "dapo/filled_groups": float(max(groups_needed - have, 0))}
    return batch, metrics
