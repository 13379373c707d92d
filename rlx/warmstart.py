"""`python -m rlx.warmstart --config configs/demo.yaml [--ship | --check STEPS] [section.key=value ...]`: rebuild a stored
warm start, or check a shipped one.

Runs the config's supervised warm-up (in a scratch run directory) and stores its weights where
`warmup.cache: reuse` finds them: `warmup.cache_dir` (default `~/.cache/rlx/warmstart`), or with
`--ship` the package's `rlx/warmstarts/` (commit that file). `--check STEPS` stores nothing: it says whether the
package ships a warm start under this code's key for the config, and whether the first STEPS warm-up steps, run
afresh, reproduce its stored losses (exit 1 if not). See `rlx.services.warmstart`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from rlx.config import load_config
from rlx.errors import UserError, add_debug_flag, run_guarded
from rlx.logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlx.warmstart",
                                     description="Run a config's supervised warm-up and store its weights for warmup.cache: reuse.")
    parser.add_argument("--config", required=True, help="YAML file under configs/")
    parser.add_argument("--ship", action="store_true", help="write into the package (rlx/warmstarts/) instead of warmup.cache_dir")
    parser.add_argument("--check", type=int, metavar="STEPS",
                        help="store nothing; check the shipped warm start against this code (its key, and STEPS warm-up steps' losses; "
                             "0: the key only)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.check is not None and (args.ship or args.check < 0):
        parser.error("--check takes a number of steps >= 0 and builds nothing (not with --ship)")
    return run_guarded(lambda: _check(args) if args.check is not None else _warmstart(args), args.debug)


def _warmstart(args: argparse.Namespace) -> int:
    from rlx.services.warmstart import SHIPPED_DIR

    if load_config(args.config, args.overrides).warmup.sft_steps == 0:
        raise UserError(f"{args.config} has no warm-up (warmup.sft_steps: 0); nothing to store")
    target = [f"warmup.cache_dir={SHIPPED_DIR}"] if args.ship else []
    with _scratch_trainer(args, "warmup.cache=refresh", *target) as (trainer, _):
        trainer.resume_or_warm_start()
    return 0


def _check(args: argparse.Namespace) -> int:
    from rlx.services import warmstart
    from rlx.services.tracking import read_metrics

    shipped_config = load_config(args.config, args.overrides)
    with _scratch_trainer(args, "warmup.cache=none", f"warmup.sft_steps={args.check}") as (trainer, scratch):
        key = warmstart.warmup_key(shipped_config, trainer.learner.params, trainer.task.demonstrations, trainer.task.tokenizer)
        shipped = warmstart.SHIPPED_DIR / f"{key}.safetensors"
        if not shipped.is_file():
            print(f"no shipped warm start for {args.config} under this code's key {key}; "
                  f"rebuild it: python -m rlx.warmstart --config {args.config} --ship")
            return 1
        if args.check > 0:
            trainer.resume_or_warm_start()
            fresh = read_metrics(scratch / "metrics.jsonl")[0]
    stored = warmstart.stored_losses(shipped)
    if len(stored) != shipped_config.warmup.sft_steps:
        print(f"{shipped} holds {len(stored)} warm-up steps, the config asks for {shipped_config.warmup.sft_steps}")
        return 1
    if args.check > 0:
        first, last = fresh["warmup/sft_loss_first"], fresh["warmup/sft_loss_last"]
        # The first step's loss is the initial weights' (exact up to rounding); later steps add the optimizer's rounding.
        if not (math.isclose(first, stored[0], rel_tol=1e-5) and math.isclose(last, stored[args.check - 1], rel_tol=1e-3)):
            print(f"{shipped}: warm-up losses at steps 1 and {args.check} are {first:.6g} and {last:.6g} here, "
                  f"{stored[0]:.6g} and {stored[args.check - 1]:.6g} stored; rebuild it: python -m rlx.warmstart --config {args.config} --ship")
            return 1
    print(f"{shipped.name} is this code's warm start for {args.config}" + (f" ({args.check} steps reproduce its losses)" if args.check else ""))
    return 0


@contextlib.contextmanager
def _scratch_trainer(args: argparse.Namespace, *settings: str) -> Iterator[tuple[Any, Path]]:
    """A Trainer for `args.config` (its overrides, then `settings`) whose run directory is scratch; closed, and the
    directory removed, at the end."""
    from rlx.launch import start_devices
    from rlx.services.trainer import Trainer

    with tempfile.TemporaryDirectory() as scratch:
        config = load_config(args.config, [*args.overrides, *settings, f"run.output_dir={scratch}", "run.progress=false",
                                           "run.save_rollouts=false"])
        configure_logging(config.run.log_level)
        start_devices(config)
        trainer = Trainer(config)
        try:
            yield trainer, Path(scratch)
        finally:
            trainer.close()


if __name__ == "__main__":
    sys.exit(main())
