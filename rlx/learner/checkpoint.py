"""orbax checkpoints of learner state plus JSON metadata (step, data position, seed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.directory = Path(directory)
        self._manager = ocp.CheckpointManager(self.directory.absolute(), options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the finished checkpoints, oldest first (an interrupted save is never listed)."""
        return sorted(self._manager.all_steps())

    def restore_meta(self, step: int) -> dict[str, Any]:
        """Only the metadata of checkpoint `step`: cheap, read before the arrays."""
        return dict(self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def save(self, step: int, trees: dict[str, Any], meta: dict[str, Any]) -> None:
        items = {name: ocp.args.StandardSave(tree) for name, tree in trees.items()}
        self._manager.save(step, args=ocp.args.Composite(meta=ocp.args.JsonSave(meta), **items))

    def restore(self, step: int, templates: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restores the trees shaped like `templates` (arrays or ShapeDtypeStructs) and the metadata."""
        abstract = {name: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree) for name, tree in templates.items()}
        items = {name: ocp.args.StandardRestore(tree) for name, tree in abstract.items()}
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore(), **items))
        return {name: restored[name] for name in templates}, dict(restored["meta"])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
