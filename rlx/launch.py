"""`python -m rlx.launch --config configs/demo.yaml [section.key=value ...]`."""

from __future__ import annotations

import argparse
import logging
import sys

from rlx.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlx.launch", description="Run an rlx RL post-training job.")
    parser.add_argument("--config", required=True, help="YAML file under configs/")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. run.steps=20")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    from rlx.services import train  # after config checks, so a typo fails before JAX starts

    curve = train(config)
    print(f"done: metrics in {config.run.output_dir}/metrics.jsonl, curve in {curve}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
