"""Partial rollouts in a checkpoint: the work `rlx.rollout.partial` carries between steps (`Carried`), as arrays
and one JSON document, stored in the bus file of the checkpoint (`rlx.services.bus_checkpoint`).

Arrays go under `carried/<group>/request/{prompt,media/<name>}`, `carried/<group>/done/<sample>/<field>` and
`carried/in_flight/<slot>/<field>` (a `Completion`'s array fields: prompt, tokens, log-probs, versions, mask, routes);
`carried.json` holds the rest (record ids, the requests' and samples' scalars, the queue, the decode step counter).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import numpy as np

from rlx.data import PromptRecord
from rlx.rollout.driver import Completion, Request
from rlx.rollout.partial import Carried, HeldPrompt

DOCUMENT = "carried.json"
_PREFIX = "carried"


def carried_arrays(carried: Carried) -> dict[str, np.ndarray]:
    """`carried` as named arrays, its document among them (under `DOCUMENT`)."""
    arrays: dict[str, np.ndarray] = {}
    groups = []
    for g, held in enumerate(carried.groups):
        request = held.request
        arrays[f"{_PREFIX}/{g}/request/prompt"] = np.asarray(request.prompt)
        arrays.update({f"{_PREFIX}/{g}/request/media/{name}": value for name, value in (request.media or {}).items()})
        done = [_completion(arrays, f"{_PREFIX}/{g}/done/{i}", completion) for i, completion in enumerate(held.done)]
        groups.append({"record": held.record.id, "max_tokens": request.max_tokens, "samples": request.samples, "tag": request.tag,
                       "media": sorted(request.media) if request.media else None, "done": done})
    in_flight = {str(slot): _completion(arrays, f"{_PREFIX}/in_flight/{slot}", sample) for slot, sample in carried.in_flight.items()}
    document = {"groups": groups, "queue": [list(entry) for entry in carried.queue], "in_flight": in_flight,
                "decode_step": carried.decode_step, "drained": carried.drained}
    arrays[DOCUMENT] = np.array(json.dumps(document))
    return arrays


def carried_from(stored: Mapping[str, np.ndarray], records: Mapping[str, PromptRecord]) -> Carried | None:
    """The `Carried` in `stored` (a loaded npz); None when it holds none, or when a record is no longer in the data set."""
    if DOCUMENT not in stored:
        return None
    document = json.loads(str(stored[DOCUMENT]))
    if not all(group["record"] in records for group in document["groups"]):
        return None
    groups = []
    for g, group in enumerate(document["groups"]):
        media = {name: stored[f"{_PREFIX}/{g}/request/media/{name}"] for name in group["media"]} if group["media"] else None
        request = Request(stored[f"{_PREFIX}/{g}/request/prompt"], group["max_tokens"], samples=group["samples"], tag=group["tag"], media=media)
        done = [_completion_from(stored, f"{_PREFIX}/{g}/done/{i}", scalars) for i, scalars in enumerate(group["done"])]
        groups.append(HeldPrompt(records[group["record"]], request, done))
    in_flight = {int(slot): _completion_from(stored, f"{_PREFIX}/in_flight/{slot}", scalars) for slot, scalars in document["in_flight"].items()}
    return Carried(tuple(groups), tuple((tag, samples) for tag, samples in document["queue"]), in_flight, document["decode_step"],
                   document["drained"])


def _completion(arrays: dict[str, np.ndarray], prefix: str, completion: Completion) -> dict[str, Any]:
    """Puts `completion`'s arrays into `arrays` under `prefix`; returns its other fields (JSON)."""
    scalars = {}
    for field in dataclasses.fields(Completion):
        value = getattr(completion, field.name)
        if isinstance(value, np.ndarray):
            arrays[f"{prefix}/{field.name}"] = value
        else:
            scalars[field.name] = value.item() if isinstance(value, np.generic) else value
    return scalars


def _completion_from(stored: Mapping[str, np.ndarray], prefix: str, scalars: dict[str, Any]) -> Completion:
    arrays = {field.name: stored[f"{prefix}/{field.name}"] for field in dataclasses.fields(Completion) if field.name not in scalars}
    return Completion(**scalars, **arrays)
