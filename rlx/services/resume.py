"""Resuming safely: what must not change under a checkpoint, what may (recorded), and which checkpoint is intact.

A checkpoint's metadata holds a fingerprint of what its weights and data position mean: the model
architecture, the tokenizer's vocabulary, the dataset and the seed. A resumed run whose fingerprint
differs is refused, naming the field and both values, unless `run.resume_changes: allow` (then the
change is recorded). Other changed settings (hyper-parameters) are allowed: `config.yaml` is
rewritten to what now runs, and the change is appended to `config_history.yaml`. A latest
checkpoint that cannot be read is skipped with a warning for the previous intact one. A run that ended
between checkpoints (killed, crashed) had written metric and rollout rows for steps it draws or trains again
once resumed: those rows are dropped (`drop_rows_after`), so every step appears once.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import yaml

from rlx.config import Config, parse_yaml, to_dict
from rlx.errors import UserError
from rlx.learner import Checkpointer

log = logging.getLogger(__name__)

# Model fields that are the run's choice of how to compute, not what the weights are.
_NOT_ARCHITECTURE = ("dtype", "attention_impl", "moe_impl", "init_from", "max_seq_len")


class ResumeMismatch(UserError):
    """The checkpoint was made by a run that differs in what its weights or data position mean."""


def fingerprint(config: Config, vocabulary: str) -> dict[str, Any]:
    """What must not change under a checkpoint, keyed as the config names it (JSON-able: it goes into the checkpoint)."""
    model = {f"model.{key}": value for key, value in to_dict(config.model).items() if key not in _NOT_ARCHITECTURE}
    return {**model, "tokenizer vocabulary": _digest(vocabulary), **_data_identity(config), "run.seed": config.run.seed}


def _data_identity(config: Config) -> dict[str, Any]:
    data = config.data
    if data.source == "jsonl":
        return {"data.train_path (contents)": _file_digest(Path(data.train_path)), "data.val_path (contents)": _file_digest(Path(data.val_path))}
    section = "arithmetic" if data.source == "calculator" else data.source  # the calculator task reads data.arithmetic's digits
    generator = {f"data.{section}.{key}": value for key, value in to_dict(getattr(data, section)).items()}
    return {"data.source": data.source, "data.seed": data.seed, "data.train_size": data.train_size, "data.val_size": data.val_size, **generator}


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"{path.name} sha256:{digest.hexdigest()[:16]}"


def _digest(text: str) -> str:
    return f"sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any], config: Config, directory: Path) -> dict[str, tuple[Any, Any]]:
    """The changed fields {name: (checkpoint's, now)} when `run.resume_changes: allow` (logged); else raises ResumeMismatch
    naming each."""
    changes = {name: (saved[name], value) for name, value in current.items() if name in saved and saved[name] != value}
    if not changes:
        return {}
    what = "; ".join(f"{name} (checkpoint: {old!r}, now: {new!r})" for name, (old, new) in changes.items())
    if config.run.resume_changes == "allow":
        log.warning("resuming %s although these changed (run.resume_changes: allow): %s", directory, what)
        return changes
    raise ResumeMismatch(
        f"cannot resume {directory}: {what}; the checkpoint's weights and data position belong to the old value(s). "
        "Use a new run.output_dir, go back to the old value(s), or set run.resume_changes=allow to resume anyway"
    )


def saved_fingerprint(meta: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's fingerprint; one older than fingerprints holds only its seed."""
    return meta.get("fingerprint", {"run.seed": meta["seed"]})


def check_latest_fingerprint(checkpointer: Checkpointer, current: dict[str, Any], config: Config) -> None:
    """`check_fingerprint` against the latest checkpoint's metadata, cheap enough to run before the model is built.
    Unreadable metadata is left to `restore_intact`, which falls back to an older checkpoint and checks that one."""
    latest = checkpointer.latest_step()
    if latest is None or config.run.resume_changes == "allow":  # allowed changes are logged once, when restoring
        return
    try:
        meta = checkpointer.restore_meta(latest)
    except Exception:  # orbax reports a damaged checkpoint in many ways
        return
    check_fingerprint(saved_fingerprint(meta), current, config, checkpointer.directory)


def restore_intact(checkpointer: Checkpointer, directory: Path, restore: Callable[[int], Any]) -> tuple[int, Any]:
    """(step, `restore(step)`) for the latest checkpoint that restores; unreadable later ones are skipped with a warning.
    A ResumeMismatch is not skipped: an older checkpoint of the same run would not match either."""
    steps, problem = checkpointer.all_steps(), ""
    for step in reversed(steps):
        try:
            return step, restore(step)
        except ResumeMismatch:
            raise
        except Exception as err:  # orbax reports a truncated or missing file in many ways
            problem = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            log.warning("checkpoint %d under %s cannot be read (%s); trying the one before it", step, directory, problem)
            _drop_failed_reads()
    raise UserError(f"no intact checkpoint under {directory}: steps {steps} all fail to load (the last: {problem}); "
                    "delete the directory to start over, or point run.output_dir elsewhere")


def _drop_failed_reads() -> None:
    """A failed orbax restore leaves futures holding the same error for each array; asyncio would print each one's
    traceback when it is collected ("Future exception was never retrieved"), after the one-line warning above."""
    asyncio_log = logging.getLogger("asyncio")
    level = asyncio_log.level
    asyncio_log.setLevel(logging.CRITICAL)
    try:
        gc.collect()
    finally:
        asyncio_log.setLevel(level)


def record_config_changes(output_dir: Path, config: Config, step: int, allowed: dict[str, tuple[Any, Any]]) -> None:
    """Rewrites `config.yaml` to `config` and appends what changed since the previous one, and the `allowed`
    fingerprint changes, to `config_history.yaml`."""
    path = output_dir / "config.yaml"
    now = to_dict(config)
    before = parse_yaml(path.read_text()) if path.is_file() else None
    changes = {**(_differences(before, now) if isinstance(before, dict) else {}), **allowed}
    if changes:
        entry = [{"resumed_at_step": step, "changed": {key: {"before": old, "now": new} for key, (old, new) in changes.items()}}]
        with (output_dir / "config_history.yaml").open("a") as handle:
            handle.write(yaml.safe_dump(entry, sort_keys=False))
        log.info("resumed with changed settings %s (recorded in %s)", ", ".join(changes), output_dir / "config_history.yaml")
    path.write_text(yaml.safe_dump(now, sort_keys=False))


def _differences(before: dict[str, Any], now: dict[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    changes = {}
    for key in sorted(set(before) | set(now), key=str):
        old, new, name = before.get(key), now.get(key), f"{prefix}{key}"
        if isinstance(old, dict) and isinstance(new, dict):
            changes.update(_differences(old, new, f"{name}."))
        elif old != new:
            changes[name] = (old, new)
    return changes


def drop_rows_after(path: Path, step: int) -> int:
    """Removes the JSON-lines rows of `path` whose `step` is past `step` (rewritten atomically); returns how many."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not line.strip() or json.loads(line).get("step", 0) <= step]
    if len(kept) == len(lines):
        return 0
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(kept))
    os.replace(partial, path)
    log.info("dropped %d rows of %s past step %d: the resumed run writes them again", len(lines) - len(kept), path.name, step)
    return len(lines) - len(kept)
