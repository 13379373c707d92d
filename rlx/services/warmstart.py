"""Warm starts: the supervised warm-up's weights, stored once and reused by later runs of the same warm-up.

A stored warm start is keyed by everything that shapes the warm-up: the `model`, `data` and
`warmup` sections, `run.seed`, `rollout.max_new_tokens` (the answer width), the learner's
log-prob kernel and mesh, plus fingerprints of what the code makes of them (the initial
weights, the demonstrations, the tokenizer), so a change to the model's initialization or to
the task's generator also misses the store instead of loading stale weights. Lookup order:
the warm starts shipped in the package (`rlx/warmstarts/`), then `warmup.cache_dir`
(default `~/.cache/rlx/warmstart`). Rebuild one with `python -m rlx.warmstart --config
configs/demo.yaml` (`rlx warmstart`; `--ship` writes the package's copy).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from rlx.config import Config, to_dict
from rlx.data import PromptRecord
from rlx.parallel.processes import Processes, local_copy

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "warmstarts"
FORMAT = 1  # bump when the stored layout changes

Warmup = Callable[[], tuple[nnx.State, list[float]]]


def cache_dir(config: Config) -> Path:
    return Path(config.warmup.cache_dir or "~/.cache/rlx/warmstart").expanduser()


def warmup_key(config: Config, params: nnx.State, demonstrations: Sequence[PromptRecord], tokenizer: Any) -> str:
    """A hex digest of everything the warm-up's result depends on (`params`: the initial weights)."""
    digest = hashlib.sha256()
    warmup = {k: v for k, v in to_dict(config.warmup).items() if k not in ("cache", "cache_dir")}
    # `max_image_pixels` acts only through which records are kept, the rambling length only through the demonstrations'
    # answers, and the records are hashed below.
    data = {k: v for k, v in to_dict(config.data).items() if k != "max_image_pixels"}
    data["arithmetic"] = {k: v for k, v in data["arithmetic"].items() if k != "ramble_median_chars"}
    model = to_dict(config.model)
    if not config.model.mtp.enabled:
        del model["mtp"]  # settings of heads that do not exist change nothing (and keep keys from before heads existed)
    settings = {
        "format": FORMAT, "model": model, "data": data, "warmup": warmup,
        "seed": config.run.seed, "response_width": config.rollout.max_new_tokens, "logprob_impl": config.learner.logprob_impl,
        "learner_mesh": to_dict(config.parallel.learner), "learner_rules": config.parallel.learner_rules,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        # A slice of every initial weight: enough to see a changed initializer or RNG, cheap at any model size.
        head = np.asarray(jax.device_get(leaf.reshape(-1)[:64]))
        digest.update(f"{jax.tree_util.keystr(path)}{leaf.shape}{leaf.dtype}".encode() + head.tobytes())
    for record in demonstrations:
        digest.update(f"{record.id}\x00{record.prompt}\x00{record.answer}\x00".encode())
    for record in demonstrations[:16]:
        digest.update(np.asarray(tokenizer.encode(record.prompt + record.answer), np.int64).tobytes())
    return digest.hexdigest()[:20]


@dataclasses.dataclass(frozen=True)
class WarmStart:
    params: nnx.State
    losses: list[float]
    source: str  # "trained", or the file it was loaded from


def warm_start(config: Config, params: nnx.State, demonstrations: Sequence[PromptRecord], tokenizer: Any, train: Warmup,
               processes: Processes | None = None) -> WarmStart:
    """The warmed-up weights: loaded when `warmup.cache: reuse` finds this warm-up stored, else `train()`ed
    (and stored, unless `warmup.cache: none`). Loaded weights take the shardings of `params`.

    Several `processes` load only when every one finds the warm start (else all train, together);
    process 0 stores it, so a `warmup.cache_dir` on storage every host sees serves them all."""
    processes = processes or Processes()
    mode = config.warmup.cache
    if mode == "none":
        return WarmStart(*train(), source="trained")
    key = warmup_key(config, params, demonstrations, tokenizer)
    stored = [directory / f"{key}.safetensors" for directory in (SHIPPED_DIR, cache_dir(config))]
    path = next((path for path in stored if path.is_file()), None) if mode == "reuse" else None
    if all(processes.allgather(path is not None)):
        loaded, losses = load_warm_start(path, params)
        log.info("warm start loaded from %s (warmup.cache: reuse; rebuild: python -m rlx.warmstart --config ...)", path)
        return WarmStart(loaded, losses, source=str(path))
    trained, losses = train()
    whole = local_copy(trained)  # every process takes part; the first one writes
    if processes.primary:
        save_warm_start(stored[1], whole, losses, key)
        log.info("warm start stored in %s", stored[1])
    return WarmStart(trained, losses, source="trained")


def save_warm_start(path: Path, params: nnx.State, losses: list[float], key: str) -> None:
    """One safetensors file: each weight as raw bytes (any dtype, bfloat16 included) and a JSON header."""
    tensors, layout = {}, {}
    for name, leaf in _named_leaves(params):
        array = np.ascontiguousarray(jax.device_get(leaf))
        tensors[name] = array.reshape(-1).view(np.uint8)
        layout[name] = {"shape": list(array.shape), "dtype": str(array.dtype)}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save_file(tensors, str(partial), metadata={"rlx": json.dumps({"format": FORMAT, "key": key, "layout": layout, "losses": losses})})
    partial.replace(path)  # readers never see a half-written file


def load_warm_start(path: Path, template: nnx.State) -> tuple[nnx.State, list[float]]:
    """Weights shaped, typed and placed like `template`, and the warm-up's loss per step."""
    header = _header(path)
    tensors = load_file(str(path))
    named = _named_leaves(template)
    if header["format"] != FORMAT or sorted(header["layout"]) != sorted(name for name, _ in named):
        raise ValueError(f"{path} does not hold this model's weights; delete it or rebuild it (python -m rlx.warmstart --config ...)")
    leaves = []
    for name, leaf in named:
        stored = header["layout"][name]
        if tuple(stored["shape"]) != leaf.shape or stored["dtype"] != str(leaf.dtype):
            raise ValueError(f"{path}: {name} is {stored['dtype']}{stored['shape']}, the model's is {leaf.dtype}{list(leaf.shape)}; rebuild it")
        array = tensors[name].view(leaf.dtype).reshape(leaf.shape)
        leaves.append(jax.device_put(array, leaf.sharding))
    return jax.tree.unflatten(jax.tree.structure(template), leaves), header["losses"]


def stored_losses(path: Path) -> list[float]:
    """The warm-up's loss per step, as stored with its weights."""
    return _header(path)["losses"]


def _header(path: Path) -> dict[str, Any]:
    with safe_open(str(path), "np") as handle:
        return json.loads(handle.metadata()["rlx"])


def _named_leaves(params: nnx.State) -> list[tuple[str, jax.Array]]:
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]
