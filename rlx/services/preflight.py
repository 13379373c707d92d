"""Checks that need more than the config's own values, made before any model is built or JAX starts work.

`check_run` (from `rlx.launch`, before the Trainer): the output directory can be written, and every
plug-in (`reward.fn` terms, `run.hooks`) imports. `check_task` (from the Trainer, once the data is
read, before the model is created): each split holds enough records for the batch sizes that draw
from it, and the model's weights, gradients and AdamW moments alone fit the learner's devices.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rlx.config import Config
from rlx.data import TaskData
from rlx.errors import UserError
from rlx.learner.memory import GIB
from rlx.models import ModelConfig
from rlx.models.weights import abstract_model
from rlx.plugins import PluginError, load_object
from rlx.rewards.verifiers import check_reward_plugins

_COPIES = 4  # weights, gradients and AdamW's two moments, each in param_dtype: a lower bound of the learner's memory


def check_run(config: Config) -> None:
    check_output_dir(Path(config.run.output_dir))
    check_reward_plugins(config.reward.fn)
    for path in config.run.hooks:
        if not callable(load_object(path)):
            raise PluginError(f"run.hooks: {path!r} is not callable; a hook is a function (step, metrics)")


def check_output_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # A file of this process's own: the processes of one run check the same directory at the same time.
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".rlx_write_check"):
            pass
    except OSError as err:
        raise UserError(f"run.output_dir={directory} cannot be written ({err.strerror or err}); "
                        "choose a directory you can write to") from None


def check_task(config: Config, task: TaskData, model: ModelConfig) -> None:
    """`model`: the run's model config with the tokenizer's vocabulary filled in."""
    needs = [("data.prompts_per_step", config.data.prompts_per_step, "train", len(task.train))]
    if config.warmup.sft_steps:
        needs.append(("warmup.batch_size", config.warmup.batch_size, "warm-up demonstrations", len(task.demonstrations)))
    if config.distill.coef > 0:
        needs.append(("distill.teacher_warmup.batch_size", config.distill.teacher_warmup.batch_size, "train", len(task.train)))
    for key, size, split, available in needs:
        if size > available:
            raise UserError(f"{key}={size} but the {split} split has only {available} usable records; "
                            f"lower {key} to at most {available} or add records")
    check_fits(model, config)


def check_fits(model: ModelConfig, config: Config) -> None:
    """Refuses a model whose weights, gradients and optimizer moments alone exceed `parallel.device_memory_gib`."""
    shapes = jax.tree.leaves(abstract_model(model)[1])
    parameters = sum(int(np.prod(leaf.shape)) for leaf in shapes)
    devices = config.parallel.learner.size
    need = parameters * jnp.dtype(model.param_dtype).itemsize * _COPIES / devices
    limit = config.parallel.device_memory_gib
    if need > limit * GIB:
        raise UserError(
            f"the model has {parameters:,} parameters ({parameters / 1e9:.2f} B): its {model.param_dtype} weights, gradients and "
            f"AdamW moments alone need {need / GIB:,.1f} GiB on each of the learner's {devices} device(s), more than "
            f"parallel.device_memory_gib={limit:g}; shrink model.*, shard over more devices (parallel.learner.fsdp), or raise "
            "parallel.device_memory_gib if the devices hold more (`--dry-run` prints the full plan)"
        )
