"""optax optimizers built from config."""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax

from rlx.learner.config import OptimizerConfig
from rlx.models import ModelConfig


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    schedule = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps) if config.warmup_steps else config.learning_rate
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(schedule, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay),
    )


def separate_heads(make: Callable[[], optax.GradientTransformation], model: ModelConfig) -> optax.GradientTransformation:
    """`make()` for the policy; with MTP heads that must not train the trunk (`model.mtp.train_trunk: false`), one
    `make()` for the trunk and another for the heads, so the heads' gradients change neither the trunk's clipping
    norm nor its steps: the trunk trains exactly as without heads."""
    if not model.mtp.enabled or model.mtp.train_trunk:
        return make()
    labels = lambda params: _top_level_labels(params, lambda name: "heads" if name == "mtp" else "trunk")
    return optax.multi_transform({"trunk": make(), "heads": make()}, labels)


def frozen_encoders(model: ModelConfig) -> tuple[str, ...]:
    """Names of the model's encoder submodules whose config says `trainable: false`."""
    encoders = (("vision", model.vision), ("audio", model.audio))
    return tuple(name for name, encoder in encoders if encoder.enabled and not encoder.trainable)


def freeze_encoders(tx: optax.GradientTransformation, model: ModelConfig) -> optax.GradientTransformation:
    """`tx` for trainable weights; frozen encoders get zero updates (no weight decay drift either)."""
    frozen = frozen_encoders(model)
    if not frozen:
        return tx

    labels = lambda params: _top_level_labels(params, lambda name: "frozen" if name in frozen else "train")
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def _top_level_labels(params: Any, label_of: Callable[[str], str]) -> Any:
    """A label per leaf of `params`: `label_of` the name of the top-level submodule it lives in."""
    top = lambda path: str(getattr(path[0], "key", getattr(path[0], "name", "")))
    return jax.tree_util.tree_map_with_path(lambda path, _: label_of(top(path)), params)
