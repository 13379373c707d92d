"""A step's scored rollouts <-> prompt groups of named numpy fields, as the TransferQueue moves them."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from rlx.bus import Group
from rlx.rollout import Generation, GroupRollout

# Encoder inputs travel as one field per modality, `media/<name>`, so the learner can re-encode them.
MEDIA_PREFIX = "media/"
# Recorded MoE routes (R3) travel as one more field when the engine records them.
ROUTES = "routes"
# The fields the learner needs before it takes a batch.
TRAIN_FIELDS = ("prompt_tokens", "start", "tokens", "log_probs", "mask", "lengths", "versions", "rewards", "task_scores")


@dataclasses.dataclass(frozen=True)
class ScoredBatch:
    """One step's rollouts after scoring and the algorithm's batch shaping (the generator role's output)."""

    rollout: GroupRollout
    responses: list[str]
    task_scores: np.ndarray  # [rows] verifier reward
    rewards: np.ndarray  # [rows] reward trained on (task score + shaping)


def to_groups(batch: ScoredBatch) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
    """(fields, meta) per prompt group, in group order."""
    rollout, generation = batch.rollout, batch.rollout.generation
    groups = []
    for group in np.unique(rollout.group_ids):
        rows = np.flatnonzero(rollout.group_ids == group)
        fields = {
            "prompt_tokens": rollout.prompt_tokens[rows], "start": rollout.start[rows], "tokens": generation.tokens[rows],
            "log_probs": generation.log_probs[rows], "mask": generation.mask[rows], "lengths": generation.lengths[rows],
            "versions": rollout.policy_version[rows], "rewards": batch.rewards[rows], "task_scores": batch.task_scores[rows],
            **{MEDIA_PREFIX + name: values[rows] for name, values in (rollout.media or {}).items()},
            **({ROUTES: rollout.routes[rows]} if rollout.routes is not None else {}),
        }
        meta = {"records": [rollout.records[r] for r in rows], "responses": [batch.responses[r] for r in rows]}
        groups.append((fields, meta))
    return groups


def from_groups(groups: list[Group]) -> ScoredBatch:
    """The groups of one step joined back into a batch; rows of group `i` get `group_ids == i`."""
    field = lambda name: np.concatenate([g.fields[name] for g in groups], axis=0)
    media = {name[len(MEDIA_PREFIX):]: field(name) for name in groups[0].fields if name.startswith(MEDIA_PREFIX)}
    group_ids = np.concatenate([np.full(len(g.fields["tokens"]), i, np.int32) for i, g in enumerate(groups)])
    rollout = GroupRollout(
        records=[r for g in groups for r in g.meta["records"]],
        prompt_tokens=field("prompt_tokens"),
        start=field("start"),
        group_ids=group_ids,
        generation=Generation(field("tokens"), field("log_probs"), field("mask"), field("lengths")),
        policy_version=field("versions"),
        media=media or None,
        routes=field(ROUTES) if ROUTES in groups[0].fields else None,
    )
    return ScoredBatch(rollout, [r for g in groups for r in g.meta["responses"]], field("task_scores"), field("rewards"))
