"""Dry-run plans of the big configs: `python benchmarks/dry_run_plans.py`.

Runs `python -m rlx.launch --config <file> --dry-run` for Qwen3-4B (16 x 80 GiB and the TPU
v5e-16 variant, 16 x 16 GiB) and Qwen3-30B-A3B, each in its own process (each simulates its own
device count), and writes the plans into the `## Dry-run plans (issue 12)` section of
benchmarks/RESULTS.md. Compiles only; allocates no weights. The last line printed is the RESULT line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.results_table import write_section  # noqa: E402

CONFIGS = ("configs/qwen3_4b_grpo.yaml", "configs/qwen3_4b_grpo_v5e.yaml", "configs/qwen3_30b_a3b_grpo.yaml")
NOTES = """\
Written by `python benchmarks/dry_run_plans.py`.
Peak = arguments + outputs - aliased (donated) + temporaries, per device, from XLA's memory
analysis of the SPMD-partitioned programs compiled for the CPU backend on simulated devices.
The learner programs are the ones the run executes (`rlx.learner.build`): the update (every
optimizer step of an RL step, gradients accumulated over micro-batches), the old-log-prob pass
and the advantages, on one step's 512 rollouts of 2,048 tokens, bf16 compute with float32
weights and Adam state, each decoder layer rematerialised (`learner.remat: full`),
`learner.micro_batch_rows: auto` (the largest micro-batch that fits). All layers are compiled
(they are scanned); parameter counts and sharding summaries are for the full model.

How to read these figures honestly:
* Arguments (float32 weights + Adam moments for the learner, weights + KV cache for the
  generator) are exact for the configured sharding.
* Temporaries are XLA's CPU buffer assignment; a TPU or GPU compilation schedules differently
  (and fuses the Pallas kernels the CPU build replaces with XLA scans), so treat them as an
  estimate of the accelerator's figure, not a measurement of it.
* The generator programs are the engine's own (`Engine.programs()`, what the run compiles): prefill
  (last-position logits only), insert into the sharded slots, one bucketed decode call, and the
  chunked recompute of every slot's cache. The insert's temporaries include a replicated gather
  of the slots' indices (a known overhead, left for later).
* Qwen3-MoE experts run as a grouped matmul sharded over `expert` under `shard_map`
  (`rlx/models/grouped_matmul.py`, `model.moe_impl: auto`), in the learner and the generator.
"""


def _plan(config: str) -> tuple[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rlx.launch", "--config", config, "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{config} dry run failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip(), time.perf_counter() - began


def _peak(plan: str, step: str) -> float:
    row = next(line for line in plan.splitlines() if line.startswith(f"| {step} |"))
    return float(row.split("|")[6])


def main() -> None:
    body = [NOTES]
    peaks = []
    for config in CONFIGS:
        plan, seconds = _plan(config)
        print(plan, flush=True)
        name = Path(config).stem
        body += [f"### {name}", "", f"`python -m rlx.launch --config {config} --dry-run` ({seconds:.0f} s wall, 2-core CPU):", "",
                 "```", plan, "```", ""]
        learner, decode = _peak(plan, "learner update"), _peak(plan, "generator decode step")
        verdict = plan.splitlines()[-1].split("-> ")[-1]
        peaks.append(f"{name}: learner update {learner:.1f} GiB, decode {decode:.1f} GiB, {verdict}, {seconds:.0f} s")
    write_section("Dry-run plans (issue 12)", "\n".join(body))
    print("RESULT dry-run peak per device: " + "; ".join(peaks))


if __name__ == "__main__":
    main()
