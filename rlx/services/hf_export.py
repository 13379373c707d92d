"""A run's policy as a Hugging Face checkpoint: safetensors, config.json and the tokenizer's files, which
`transformers.AutoModelForCausalLM.from_pretrained` (and `AutoTokenizer`) load.

`run.export_hf: true` exports the final policy at the end of `train`; `python -m rlx.export` exports
any checkpoint of a finished or running run (`restore_policy`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import jax
from flax import nnx

from rlx.config import Config
from rlx.data import load_task
from rlx.errors import MissingInputError
from rlx.learner import Checkpointer
from rlx.models import PretrainedModel, Qwen3, save_pretrained
from rlx.models.hf_config import read_hf_config
from rlx.models.weights import abstract_model

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json")


def export_policy(config: Config, model: Qwen3, out: str | Path) -> Path:
    """Writes `model` (its weights whole in this process: `rlx.parallel.processes.local_copy`) to `out`: config.json keeps what `model.init_from`'s says beyond the architecture
    (token ids, ...), tokenizer files come from `data.tokenizer_path`, generation_config.json from `init_from`."""
    if config.model.vision.enabled or config.model.audio.enabled:
        raise ValueError("Hugging Face Qwen3 checkpoints hold a text decoder only; this run's model has modality encoders")
    out = Path(out)
    source = config.model.init_from
    save_pretrained(PretrainedModel(model, read_hf_config(source) if source else {}), out)
    _copy_present(Path(source) if source else None, out, ("generation_config.json",))
    if config.data.tokenizer_path is None:
        log.warning("%s: no tokenizer files written: this run uses rlx's character tokenizer, which transformers cannot load", out)
    _copy_present(Path(config.data.tokenizer_path) if config.data.tokenizer_path else None, out, TOKENIZER_FILES)
    log.info("wrote the policy as a Hugging Face checkpoint to %s", out)
    return out


def restore_policy(config: Config, run_dir: str | Path, step: int) -> Qwen3:
    """The policy weights of checkpoint `step` of the run in `run_dir`, restored into host memory (the CPU device)."""
    checkpoints = Path(run_dir) / "checkpoints"
    if not (checkpoints / str(step)).is_dir():
        saved = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) if checkpoints.is_dir() else []
        raise MissingInputError(f"{checkpoints}: no checkpoint of step {step}; saved steps: {saved or 'none'}")
    model_config = config.model
    if model_config.vocab_size is None:  # the run took the tokenizer's size
        model_config = model_config.with_vocab(load_task(config.data).tokenizer.vocab_size)
    graphdef, abstract = abstract_model(model_config)
    host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=host), abstract)
    checkpointer = Checkpointer(checkpoints, config.run.keep_checkpoints)
    try:
        trees, _ = checkpointer.restore(step, {"params": template})
    finally:
        checkpointer.close()
    return nnx.merge(graphdef, trees["params"])


def _copy_present(source: Path | None, out: Path, names: tuple[str, ...]) -> None:
    for name in names:
        if source is not None and (source / name).is_file():
            shutil.copyfile(source / name, out / name)
