"""`python -m rlx.warmstart --config configs/demo.yaml [--ship] [section.key=value ...]`: rebuild a stored warm start.

Runs the config's supervised warm-up (in a scratch run directory) and stores its weights where
`warmup.cache: reuse` finds them: `warmup.cache_dir` (default `~/.cache/rlx/warmstart`), or with
`--ship` the package's `rlx/warmstarts/` (commit that file). See `rlx.services.warmstart`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from rlx.config import load_config
from rlx.errors import UserError, add_debug_flag, run_guarded
from rlx.logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlx.warmstart",
                                     description="Run a config's supervised warm-up and store its weights for warmup.cache: reuse.")
    parser.add_argument("--config", required=True, help="YAML file under configs/")
    parser.add_argument("--ship", action="store_true", help="write into the package (rlx/warmstarts/) instead of warmup.cache_dir")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    return run_guarded(lambda: _warmstart(args), args.debug)


def _warmstart(args: argparse.Namespace) -> int:
    from rlx.services.warmstart import SHIPPED_DIR

    target = [f"warmup.cache_dir={SHIPPED_DIR}"] if args.ship else []
    with tempfile.TemporaryDirectory() as scratch:
        config = load_config(args.config, [*args.overrides, "warmup.cache=refresh", *target,
                                           f"run.output_dir={scratch}", "run.progress=false", "run.save_rollouts=false"])
        configure_logging(config.run.log_level)
        if config.warmup.sft_steps == 0:
            raise UserError(f"{args.config} has no warm-up (warmup.sft_steps: 0); nothing to store")
        from rlx.launch import start_devices
        from rlx.services.trainer import Trainer

        start_devices(config)
        trainer = Trainer(config)
        try:
            trainer.resume_or_warm_start()
        finally:
            trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
