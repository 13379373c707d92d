"""`python -m rlx.warmstart --config configs/demo.yaml [--ship] [section.key=value ...]`: rebuild a stored warm start.

Runs the config's supervised warm-up (in a scratch run directory) and stores its weights where
`warmup.cache: reuse` finds them: `warmup.cache_dir` (default `~/.cache/rlx/warmstart`), or with
`--ship` the package's `rlx/warmstarts/` (commit that file). See `rlx.services.warmstart`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile

from rlx.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlx.warmstart",
                                     description="Run a config's supervised warm-up and store its weights for warmup.cache: reuse.")
    parser.add_argument("--config", required=True, help="YAML file under configs/")
    parser.add_argument("--ship", action="store_true", help="write into the package (rlx/warmstarts/) instead of warmup.cache_dir")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from rlx.services.warmstart import SHIPPED_DIR

    target = [f"warmup.cache_dir={SHIPPED_DIR}"] if args.ship else []
    with tempfile.TemporaryDirectory() as scratch:
        try:
            config = load_config(args.config, [*args.overrides, "warmup.cache=refresh", *target,
                                               f"run.output_dir={scratch}", "run.progress=false", "run.save_rollouts=false"])
        except ConfigError as err:
            print(f"config error: {err}", file=sys.stderr)
            return 2
        if config.warmup.sft_steps == 0:
            print(f"{args.config} has no warm-up (warmup.sft_steps: 0)", file=sys.stderr)
            return 2
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
