"""`python -m rlx.eval --run DIR [--step N] [--samples K] [--split val|path.jsonl]`: sampled evaluation of a run.

Builds the run from its `config.yaml`, restores checkpoint `N` (default: the latest) and samples
`K` responses per prompt (default `rollout.n_samples`) at the run's rollout settings. Prints a
table and writes `DIR/eval.json`: `pass@1`, `pass@2`, ..., `pass@K` (unbiased estimator),
`avg@K` (mean reward over all samples), `response_length/mean`, `pass@1/<modality>` with media.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rlx.config import load_config
from rlx.errors import UserError, add_debug_flag, run_guarded
from rlx.logs import configure_logging


def evaluate_run(run_dir: str | Path, step: int | None = None, samples: int | None = None, split: str = "val") -> dict[str, Any]:
    """The metrics `rlx.eval` prints, also written to `run_dir/eval.json`."""
    from rlx.data.jsonl import read_jsonl
    from rlx.launch import start_devices
    from rlx.services.evaluation import usable_records
    from rlx.services.trainer import Trainer

    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml", [f"run.output_dir={run_dir}", "run.progress=false"])
    start_devices(config)
    trainer = Trainer(config)
    try:
        step = trainer.checkpointer.latest_step() if step is None else step
        if step is None:
            raise UserError(f"no checkpoint under {run_dir / 'checkpoints'}; train the run first")
        trainer.restore(step)
        if split == "val":
            records = trainer.task.val
        else:
            rows, _ = read_jsonl(split, config.data.on_bad_row)
            records = usable_records(rows, trainer.task.tokenizer, config.data.max_prompt_len, trainer.media)
            if not records:
                raise UserError(f"no record of {split} fits this run's tokenizer and data.max_prompt_len; see the warnings above")
        samples = samples or config.rollout.n_samples
        metrics = trainer.sampled_evaluation(records, samples)
    finally:
        trainer.close()
    result = {"step": step, "split": split, "prompts": len(records), "samples": samples, **metrics}
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_table(result: dict[str, Any]) -> str:
    width = max(len(name) for name in result)
    lines = [f"{name:<{width}}  {value:.4f}" if isinstance(value, float) else f"{name:<{width}}  {value}" for name, value in result.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlx.eval", description="Sampled evaluation (pass@k) of a run's checkpoint.")
    parser.add_argument("--run", required=True, help="the run's output directory (holds config.yaml and checkpoints/)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--samples", type=int, help="responses per prompt, K (default: the run's rollout.n_samples)")
    parser.add_argument("--split", default="val", help="val (the run's validation split) or a JSONL file of prompts and answers")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.samples is not None and args.samples < 1:
        parser.error(f"--samples must be >= 1, got {args.samples}")
    return run_guarded(lambda: _eval(args), args.debug)


def _eval(args: argparse.Namespace) -> int:
    configure_logging("WARNING")
    if not (Path(args.run) / "config.yaml").is_file():
        raise UserError(f"{args.run} is not a run directory (no config.yaml); give --run the run.output_dir of a run")
    result = evaluate_run(args.run, args.step, args.samples, args.split)
    print(format_table(result))
    print(f"written to {Path(args.run) / 'eval.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
