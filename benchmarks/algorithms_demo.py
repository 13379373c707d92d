"""Final validation accuracy and wall time of each algorithm demo config on the arithmetic task (issue 5).

    python -m benchmarks.algorithms_demo                 # all six configs, 20 RL steps each
    python -m benchmarks.algorithms_demo --steps 60      # as long as the demos themselves
    python -m benchmarks.algorithms_demo --configs grpo dapo
    python -m benchmarks.algorithms_demo --warmup-steps 200   # shorter warm-ups (the OPD teacher's too)

Every config (`configs/demo_<name>.yaml`) runs in this process, one after the other, with
the same seed, warm-up, data and number of RL steps, so they differ only in their
`algorithm` (and `critic`/`distill`) sections. Validation is greedy exact match on the
held-out split at step 0 (after warm-up, before RL) and after the last step. "RL s" is the
summed wall time of the RL steps; "total s" adds warm-ups (the OPD teacher's included),
compilation and validation. One seed and few steps: differences of a few points are noise.
The last printed line is ``RESULT <name>=<final accuracy> ...``.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.results_table import machine_description, report
from rlx.config import load_config
from rlx.services import train
from rlx.services.tracking import read_metrics

CONFIGS = ("grpo", "drgrpo", "dapo", "gspo", "ppo", "opd")
TITLE = "Algorithms on the demo task (issue 5)"


def run_one(name: str, steps: int, warmup_steps: int | None, root: Path) -> dict[str, float]:
    out = root / name
    overrides = [f"run.output_dir={out}", f"run.steps={steps}", f"run.eval_every={steps}", f"run.checkpoint_every={steps}",
                 "run.progress=false", "run.save_rollouts=false", "warmup.cache=none"]  # "total s" includes the warm-up
    if warmup_steps is not None:
        overrides += [f"warmup.sft_steps={warmup_steps}", f"distill.teacher_warmup.sft_steps={warmup_steps}"]
    config = load_config(Path("configs") / f"demo_{name}.yaml", overrides)
    began = time.perf_counter()
    train(config)
    total = time.perf_counter() - began
    rows = read_metrics(out / "metrics.jsonl")
    rl_rows = [row for row in rows if row["step"] > 0]
    return {
        "acc0": rows[0]["val/accuracy"],
        "acc": rows[-1]["val/accuracy"],
        "reward": float(np.mean([row["reward/mean"] for row in rl_rows[-5:]])),
        "rl_s": float(sum(row["timing_s/step"] for row in rl_rows)),
        "total_s": total,
        "dropped": float(sum(row.get("dapo/dropped_groups", 0.0) for row in rl_rows)),
    }


def table(results: dict[str, dict[str, float]], steps: int, warmup_steps: int | None) -> str:
    warmup = "the configs' warm-up" if warmup_steps is None else f"{warmup_steps} warm-up SFT steps (the OPD teacher's too)"
    lines = [
        f"{steps} RL steps per config after {warmup}; 32 prompts x 8 samples per step; one seed. "
        "Machine: " + machine_description() + ", shared with other jobs while measured (wall times are noisy).",
        "",
        "| config | val acc, step 0 | val acc, final | reward, last 5 steps | RL s | total s | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        note = f"{r['dropped']:.0f} zero-variance groups dropped" if name == "dapo" else ""
        note = "total includes the teacher's warm-up" if name == "opd" else note
        lines.append(f"| demo_{name} | {r['acc0']:.3f} | {r['acc']:.3f} | {r['reward']:.3f} | {r['rl_s']:.0f} | {r['total_s']:.0f} | {note} |")
    flags = f"--steps {steps}" + ("" if warmup_steps is None else f" --warmup-steps {warmup_steps}")
    lines += ["", f"Reproduce: `python -m benchmarks.algorithms_demo {flags}`."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="RL steps per config")
    parser.add_argument("--warmup-steps", type=int, default=None, help="override warm-up SFT steps (student and OPD teacher)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/RESULTS.md alone")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as root:
        for name in args.configs:
            results[name] = run_one(name, args.steps, args.warmup_steps, Path(root))
            print(name, {key: round(value, 3) for key, value in results[name].items()}, flush=True)
    body = table(results, args.steps, args.warmup_steps)
    report(TITLE, body, " ".join(f"{name}={r['acc']:.3f}" for name, r in results.items()), write=not args.no_write)


if __name__ == "__main__":
    main()
