"""`python -m rlx.export --run runs/NAME [--step N] [--out DIR]`: a run's checkpoint as a Hugging Face checkpoint.

Without `--step` the latest checkpoint goes to `<run>/hf/` (what `run.export_hf: true` writes at the end
of a run); `--step N` exports checkpoint N to `<run>/hf_step_N/`. The run's `config.yaml` says what the
model is and where its tokenizer is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlx.config import Config, ConfigError, from_dict, read_yaml
from rlx.errors import UserError, add_debug_flag, run_guarded
from rlx.logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlx.export", description="Export a run's policy as a Hugging Face checkpoint.")
    parser.add_argument("--run", required=True, help="the run's output_dir (holds config.yaml and checkpoints/)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--out", default=None, help="output directory (default: <run>/hf, or <run>/hf_step_N with --step)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    return run_guarded(lambda: _export(args), args.debug)


def _export(args: argparse.Namespace) -> int:
    configure_logging("INFO")
    run = Path(args.run)
    try:
        config = from_dict(Config, read_yaml(run / "config.yaml"))  # as resolved when the run started
    except ConfigError as err:
        raise ConfigError(f"{run}: {err}") from None
    from rlx.learner import Checkpointer
    from rlx.services.hf_export import export_policy, restore_policy

    step = args.step
    if step is None:
        checkpointer = Checkpointer(run / "checkpoints", config.run.keep_checkpoints)
        step = checkpointer.latest_step()
        checkpointer.close()
        if step is None:
            raise UserError(f"{run}/checkpoints holds no checkpoint yet; train the run first")
    out = Path(args.out) if args.out else run / ("hf" if args.step is None else f"hf_step_{step}")
    export_policy(config, restore_policy(config, run, step), out)
    print(f"step {step} of {run} exported to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
