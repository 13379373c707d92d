"""The Hugging Face checkpoint format: which tensor goes where (`tensor_maps`), reading slices of them
(`CheckpointReader`; `rlx.models.weights` loads through it), and writing them (`save_pretrained`).

A checkpoint directory holds `config.json` and `model.safetensors`, or shards listed in
`model.safetensors.index.json`. Hugging Face linear weights are `[out, in]`; rlx keeps
`[in, out]` with heads split out (q_proj `[D, H, Dh]`, o_proj `[H, Dh, D]`), stacks the decoder
layers of each run of one kind on a leading axis (`Qwen3.layers[r].layer`), and stacks Qwen3-MoE
experts on the axis after it, so each tensor is transposed, reshaped and placed on the way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from rlx.models.config import ModelConfig
from rlx.models.hf_config import hf_config_from_model_config
from rlx.models.qwen3 import Qwen3

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some exporters write; recomputed from rope_theta


class CheckpointError(ValueError):
    """Tensors in a checkpoint do not match what the config describes; the message names them."""


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One Hugging Face tensor and where it lives in rlx: `path` in the state, at `index` of its leading
    (stacked) axes: the layer within its stack, then the expert."""

    hf_name: str
    hf_shape: tuple[int, ...]
    path: tuple[str | int, ...]
    linear: bool  # stored [out, in] by Hugging Face: transpose, then reshape to the rlx shape
    index: tuple[int, ...] = ()


def tensor_maps(config: ModelConfig) -> list[TensorMap]:
    """Every tensor of a Hugging Face Qwen3 / Qwen3-MoE checkpoint with `config`."""
    d, h, kv, hd = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    maps = [TensorMap("model.embed_tokens.weight", (config.vocab_size, d), ("embed",), False),
            TensorMap("model.norm.weight", (d,), ("final_norm", "scale"), False)]
    if not config.tie_word_embeddings:
        maps.append(TensorMap("lm_head.weight", (config.vocab_size, d), ("lm_head",), True))
    stack_of = {first + j: (run, j) for run, (first, count, _) in enumerate(config.layer_runs()) for j in range(count)}
    for i in range(config.num_layers):
        run, within = stack_of[i]
        pre, at, layer = f"model.layers.{i}.", ("layers", run, "layer"), (within,)
        maps += [
            TensorMap(pre + "input_layernorm.weight", (d,), at + ("input_norm", "scale"), False, layer),
            TensorMap(pre + "post_attention_layernorm.weight", (d,), at + ("post_attn_norm", "scale"), False, layer),
            TensorMap(pre + "self_attn.q_proj.weight", (h * hd, d), at + ("attn", "q_proj"), True, layer),
            TensorMap(pre + "self_attn.k_proj.weight", (kv * hd, d), at + ("attn", "k_proj"), True, layer),
            TensorMap(pre + "self_attn.v_proj.weight", (kv * hd, d), at + ("attn", "v_proj"), True, layer),
            TensorMap(pre + "self_attn.o_proj.weight", (d, h * hd), at + ("attn", "o_proj"), True, layer),
            TensorMap(pre + "self_attn.q_norm.weight", (hd,), at + ("attn", "q_norm", "scale"), False, layer),
            TensorMap(pre + "self_attn.k_norm.weight", (hd,), at + ("attn", "k_norm", "scale"), False, layer),
        ]
        mlp = at + ("mlp",)
        if config.is_moe_layer(i):
            f = config.moe_intermediate_size
            maps.append(TensorMap(pre + "mlp.gate.weight", (config.num_experts, d), mlp + ("router",), True, layer))
            for e in range(config.num_experts):
                ex = f"{pre}mlp.experts.{e}."
                maps += [TensorMap(ex + "gate_proj.weight", (f, d), mlp + ("gate",), True, layer + (e,)),
                         TensorMap(ex + "up_proj.weight", (f, d), mlp + ("up",), True, layer + (e,)),
                         TensorMap(ex + "down_proj.weight", (d, f), mlp + ("down",), True, layer + (e,))]
        else:
            f = config.intermediate_size
            maps += [TensorMap(pre + "mlp.gate_proj.weight", (f, d), mlp + ("gate",), True, layer),
                     TensorMap(pre + "mlp.up_proj.weight", (f, d), mlp + ("up",), True, layer),
                     TensorMap(pre + "mlp.down_proj.weight", (d, f), mlp + ("down",), True, layer)]
    return maps


class CheckpointReader:
    """The safetensors files of a checkpoint directory, open for reading while in a `with` block.

    `read(name, index)` returns only the slice `index` of a tensor (files are memory-mapped, so only
    the bytes of that slice are read).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.files = _tensor_files(self.path)
        self._stack = contextlib.ExitStack()
        self._handles: dict[Path, Any] = {}

    def __enter__(self) -> "CheckpointReader":
        for file in sorted(set(self.files.values())):
            self._handles[file] = self._stack.enter_context(safe_open(file, framework="numpy"))
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()
        self._handles.clear()

    def check(self, maps: list[TensorMap]) -> None:
        """Every tensor `maps` expects is present with its shape, and no other tensor is."""
        _check_names(maps, self.files, self.path)
        for m in maps:
            shape = tuple(self._handles[self.files[m.hf_name]].get_slice(m.hf_name).get_shape())
            if shape != m.hf_shape:
                raise CheckpointError(f"{m.hf_name}: shape {shape} in the checkpoint, config.json implies {m.hf_shape}")

    def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
        return self._handles[self.files[name]].get_slice(name)[index]


class PretrainedModel(nnx.Module):
    """A Hugging Face checkpoint loaded into `Qwen3`: `model(input_ids) -> logits [B, S, vocab]`.

    `.model` is the plain `Qwen3` (for the learner and sampler, which also want the cache);
    `.hf_config` is the source config.json, so an export keeps fields rlx does not model.
    """

    def __init__(self, model: Qwen3, hf_config: dict[str, Any]):
        self.model = model
        self.hf_config_json = json.dumps(hf_config, sort_keys=True)  # a string: static, not state

    @property
    def hf_config(self) -> dict[str, Any]:
        return json.loads(self.hf_config_json)

    def __call__(self, input_ids: jax.Array, **kwargs) -> jax.Array:
        """Float32 logits; keyword arguments as `Qwen3.hidden_states` without a cache."""
        if "cache" in kwargs:
            raise TypeError("PretrainedModel returns logits only; call .model(...) to decode with a KV cache")
        return self.model(input_ids, **kwargs)[0]


def save_pretrained(model: PretrainedModel | Qwen3, path: str | Path, *, max_shard_bytes: int = 5 << 30) -> None:
    """Writes config.json and safetensors (sharded with an index past `max_shard_bytes`) that `transformers` loads.

    The trunk only: MTP heads (`model.mtp`) have no Hugging Face Qwen3 tensors and stay in rlx checkpoints."""
    base = model.hf_config if isinstance(model, PretrainedModel) else {}
    qwen = model.model if isinstance(model, PretrainedModel) else model
    if qwen.mtp is not None:
        log.info("Hugging Face export to %s writes the trunk only: the MTP and confidence heads (model.mtp) stay in rlx checkpoints", path)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    values = nnx.to_pure_dict(nnx.state(qwen, nnx.Param))
    tensors: dict[str, np.ndarray] = {}
    host: dict[tuple, np.ndarray] = {}  # one host copy per rlx array, however many tensors it stacks
    for m in tensor_maps(qwen.config):
        if m.path not in host:
            host[m.path] = np.asarray(jax.device_get(_get(values, m.path)))
        array = host[m.path][m.index]
        tensors[m.hf_name] = np.ascontiguousarray(array.reshape(m.hf_shape[::-1]).T if m.linear else array)
    shards = _split_shards(tensors, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(path / name), metadata={"format": "pt"})
            weight_map.update({tensor: name for tensor in shard})
        total = sum(t.nbytes for t in tensors.values())
        (path / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config = hf_config_from_model_config(qwen.config, base)
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def _tensor_files(path: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it."""
    index = path / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no 'weight_map' mapping tensor names to files")
        missing_files = sorted({f for f in weight_map.values() if not (path / f).is_file()})
        if missing_files:
            raise CheckpointError(f"{index} lists files that are not in {path}: {missing_files}")
        return {name: path / f for name, f in weight_map.items()}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors files (PyTorch .bin checkpoints are not read; convert them)")
    names: dict[str, Path] = {}
    for file in files:
        with safe_open(file, framework="numpy") as handle:
            names.update({name: file for name in handle.keys()})
    return names


def _check_names(maps: list[TensorMap], files: dict[str, Path], path: Path) -> None:
    expected = {m.hf_name for m in maps}
    present = {n for n in files if not n.endswith(_IGNORED_SUFFIXES)}
    missing, unexpected = sorted(expected - present), sorted(present - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors {_preview(unexpected)}")
        hint = "does config.json match the weights? check tie_word_embeddings, num_experts, mlp_only_layers"
        raise CheckpointError(f"{path}: {'; '.join(parts)} ({hint})")


def _preview(names: list[str]) -> str:
    return str(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _split_shards(tensors: dict[str, np.ndarray], max_bytes: int) -> list[dict[str, np.ndarray]]:
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, array in tensors.items():
        if shards[-1] and size + array.nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
    return shards


def _get(tree: dict, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree
