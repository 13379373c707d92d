"""Colocated synchronous training vs a disaggregated generator/learner at max_staleness 0, 1, 2, 4 (issue 4).

    python -m benchmarks.async_vs_colocate                  # 16 RL steps per variant, ~20 min on 2 quiet cores
    python -m benchmarks.async_vs_colocate --steps 4 --warmup-steps 10 --no-write   # plumbing check

The task is the demo's addition (`configs/demo.yaml`, GRPO, decoupled PPO as in
`configs/demo_async.yaml`) with a long tail of response lengths that the task itself
produces: 70% of the warm-up demonstrations *ramble* (`data.arithmetic.warmup_flaw: ramble`:
the right sum, then its digits repeated for a lognormal number of extra characters, median 8,
cut at the 32-token limit), so the warmed-up policy often keeps going and the exact-match
verifier (reward 0 for a rambling answer) teaches it to stop. The table reports the measured
length distribution.

Role balance: in LLM RL generation is usually 50-70% of a synchronous step; here it is less
(28% of a colocated step in RESULTS.md). On these CPU devices a decode step of the tiny model
is cheap, and the number of decode slots hardly matters (measured under load: generate
0.30-0.37 s per step with 4 or 8 slots, learn 0.7-1.0 s); what sets generate time is the number
of generated tokens, while the update always runs over the padded 32-token width. So the
balance comes from the response lengths: the 70% rambling rate and the 32-token limit (RL
soon teaches the policy to stop, which shortens generation again). `rollout.max_concurrent_decodes:
16` slots (a KV-cache budget) make a step's 256 responses decode in continuous-batching waves,
as a real engine would.

Every variant resumes from one shared warm-up checkpoint with the same seed, data, config and
step count; only placement, meshes and max_staleness differ. Variants on two simulated CPU
devices: `colocate` runs both roles on device 0; `colocate dp2` gives colocate both devices
(the learner FSDP over devices 0 and 1, its batch split between them, and the generator
data-parallel over both: the same hardware async uses);
`async k` puts the learner on device 0 and the generator on device 1. Throughput is measured
between the ends of step 2 and of step N-1 (compilation and the final validation excluded);
per-role times are summed over those steps. "cores busy" is process CPU time / wall time over
the same window; a probe before the variants measures it for each role alone (how many cores
XLA's CPU kernels use on one simulated device: 1.5-1.8 of 2 on a quiet machine, so a simulated
device is not one core; `XLA_FLAGS=--xla_cpu_multi_thread_eigen=false` does not change that in
jax 0.10.2, measured 1.54/1.76 cores with it and 1.55/1.77 without, hence no pinning here).

`process k` runs the roles as processes of their own (`services.backend: process`), each pinned to its own core
(`--generator-core`, `--learner-core`; the generator through `services.generator_cpus`, the learner by pinning this
process's threads while the variant runs), so they share neither cores nor the interpreter lock. `process k=0` never
overlaps the roles (each step's rollouts wait for the previous update): its per-step generator (generate + reward)
and learner (update + weight sync) times are each role's standalone time on its core. Replayed through the pipeline
model (`pipelined_seconds`: step s's rollouts start once step s-1's are done and version s-1-k is published) they
predict the ideal speed-up of `process k` over `process k=0` (at most (t_gen + t_learn) / max(t_gen, t_learn), the
shorter role hidden entirely); the achieved speed-up is the measured throughput ratio, and overlap efficiency is
achieved / ideal (1.0: the roles overlap as if nothing else were shared).

The ratio in the RESULT line is against the faster colocate variant, over every async variant (threads or
processes); the overlap efficiency is that of the fastest `process k >= 1`. The last printed line is
``RESULT best_async_over_colocate=X.XX overlap_efficiency=Y.YY accuracy_delta_pts=D.D``.
"""

import argparse
import contextlib
import importlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

from rlx.services.plan import simulate_cpu_devices

simulate_cpu_devices(2)  # before JAX starts: one device per role

import numpy as np  # noqa: E402

from benchmarks.results_table import machine_description, report  # noqa: E402
from rlx.config import load_config  # noqa: E402
from rlx.services import train  # noqa: E402
from rlx.services.trainer import Trainer  # noqa: E402
from rlx.services.tracking import read_metrics  # noqa: E402

TITLE = "Asynchronous vs colocated training (issue 4)"
MAX_NEW_TOKENS, SLOTS, ROWS_PER_STEP = 32, 16, 32 * 8
ONE_DEVICE, TWO_DEVICES, PROCESSES = [], ["parallel.learner.fsdp=2", "parallel.generator.data=2"], ["services.backend=process"]
VARIANTS = {  # name: (placement, max_staleness, more overrides)
    "colocate": ("colocated", 0, ONE_DEVICE),
    "colocate dp2": ("colocated", 0, TWO_DEVICES),
    **{f"async k={k}": ("disaggregated", k, ONE_DEVICE) for k in (0, 1, 2, 4)},
    **{f"process k={k}": ("disaggregated", k, PROCESSES) for k in (0, 1, 2)},
}
COLOCATE = ("colocate", "colocate dp2")
SEQUENTIAL_PROCESSES = "process k=0"  # the roles never overlap: each one's standalone time on its core
ROLE_TIMES = {"generate": "timing_s/gen", "reward": "timing_s/reward", "learn": "timing_s/update", "weight sync": "timing_s/weight_sync",
              "learner waits": "timing_s/learner_wait", "generator waits": "timing_s/gen_wait_admission"}
STEP_ENDS: list[tuple[float, float]] = []  # (wall, process CPU) at each step's end


def record_step_end(step: int, metrics: dict) -> None:
    STEP_ENDS.append((time.perf_counter(), time.process_time()))


def step_ends() -> list[tuple[float, float]]:
    """The hook's record; the hook runs in the imported module, not in `__main__`."""
    return importlib.import_module("benchmarks.async_vs_colocate").STEP_ENDS


def is_process(variant: str) -> bool:
    return PROCESSES[0] in VARIANTS[variant][2]


def overrides(out: Path, steps: int, warmup_steps: int, variant: str, generator_core: int = 0) -> list[str]:
    placement, staleness, more = VARIANTS[variant]
    pinned = [f"services.generator_cpus=[{generator_core}]"] if is_process(variant) else []
    return [
        f"run.output_dir={out}", f"run.steps={steps}", f"run.eval_every={steps}", f"run.checkpoint_every={steps}",
        "run.progress=false", "run.save_rollouts=true", "run.hooks=[benchmarks.async_vs_colocate:record_step_end]",
        "data.arithmetic.warmup_flaw=ramble", "data.arithmetic.warmup_flaw_rate=0.7", "algorithm.policy_loss=decoupled_ppo",
        f"rollout.max_new_tokens={MAX_NEW_TOKENS}", f"rollout.max_concurrent_decodes={SLOTS}", "model.max_seq_len=48",
        f"warmup.sft_steps={warmup_steps}", f"parallel.placement={placement}", f"bus.max_staleness={staleness}", *more, *pinned,
    ]


@contextlib.contextmanager
def pinned_threads(cores: set[int]) -> Iterator[None]:
    """Runs every thread of this process (XLA's pool among them) on `cores`, and threads started inside too; restored after."""
    threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    before = {tid: os.sched_getaffinity(tid) for tid in threads}
    for tid in threads:
        os.sched_setaffinity(tid, cores)
    try:
        yield
    finally:
        for tid, mask in before.items():
            with contextlib.suppress(OSError):  # a thread that ended
                os.sched_setaffinity(tid, mask)


def role_cpu_use(trainer: Trainer, reps: int = 2) -> dict[str, float]:
    """Cores busy (process CPU s / wall s) while each role runs alone on device 0; step 1 compiles and is not counted."""
    trainer.checkpointer.wait()  # the warm-up checkpoint is written before these updates change the weights
    spent = {"generate": [0.0, 0.0], "learn": [0.0, 0.0]}
    for step in range(1, reps + 2):
        wall, cpu = time.perf_counter(), time.process_time()
        batch, _ = trainer.produce(step)
        generated = (time.perf_counter(), time.process_time())
        trainer.learn(step, batch)
        learned = (time.perf_counter(), time.process_time())
        if step > 1:
            for role, (begin, end) in {"generate": ((wall, cpu), generated), "learn": (generated, learned)}.items():
                spent[role][0] += end[0] - begin[0]
                spent[role][1] += end[1] - begin[1]
    return {role: cpu / wall for role, (wall, cpu) in spent.items()}


def response_lengths(out: Path, first: int, last: int) -> np.ndarray:
    """Characters of each response of steps `first..last` (EOS not counted)."""
    rows = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    return np.array([len(row["response"]) for row in rows if first <= row["step"] <= last])


def run_one(name: str, warm: Path, root: Path, args: argparse.Namespace) -> dict:
    steps = args.steps
    out = root / name.replace(" ", "_").replace("=", "")
    shutil.copytree(warm, out)  # resumes after the shared warm-up (checkpoint 0)
    step_ends().clear()
    config = load_config(Path("configs/demo.yaml"), overrides(out, steps, args.warmup_steps, name, args.generator_core))
    with pinned_threads({args.learner_core}) if is_process(name) else contextlib.nullcontext():
        train(config)
    rows = [row for row in read_metrics(out / "metrics.jsonl") if row["step"] > 0]
    # Steps 3 .. N-1: after compilation (step 2's rollouts wait for step 1's compiling update), before the final validation.
    timed = rows[2:-1]
    (wall0, cpu0), (wall1, cpu1) = step_ends()[1], step_ends()[-2]
    seconds = wall1 - wall0
    tokens = sum(row["response_length/mean"] * ROWS_PER_STEP for row in timed)
    result = {
        "samples_per_s": len(timed) * ROWS_PER_STEP / seconds,
        "tokens_per_s": tokens / seconds,
        "accuracy": rows[-1]["val/accuracy"],
        "staleness_mean": float(np.mean([row["training/off_policy/staleness_mean"] for row in timed])),
        "lengths": response_lengths(out, 3, steps - 1),
        "cores_busy": (cpu1 - cpu0) / seconds,
        "seconds": seconds,
        "per_step": [(row["timing_s/gen"] + row["timing_s/reward"], row["timing_s/update"] + row["timing_s/weight_sync"]) for row in timed],
    }
    result.update({role: sum(row.get(key, 0.0) for row in timed) for role, key in ROLE_TIMES.items()})
    return result


def pipelined_seconds(per_step: list[tuple[float, float]], staleness: int) -> float:
    """Wall time of the measured per-step (generator, learner) times if each role had its own device:
    step s's rollouts start when step s-1's are done and version s-1-k is published."""
    gen_end, learn_end = [0.0], [0.0]  # index 0: the state before the first step
    for s, (gen, learn) in enumerate(per_step, start=1):
        gen_end.append(max(gen_end[s - 1], learn_end[max(s - 1 - staleness, 0)]) + gen)
        learn_end.append(max(learn_end[s - 1], gen_end[s]) + learn)
    return learn_end[-1]


def overlap(results: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Each `process k >= 1` against `process k=0`: the speed-up its roles' standalone per-step times predict (`ideal`),
    the measured one (`achieved`, throughput ratio) and achieved / ideal (`efficiency`)."""
    alone = results.get(SEQUENTIAL_PROCESSES)
    if alone is None:
        return {}
    sequential = pipelined_seconds(alone["per_step"], 0)
    found = {}
    for name, r in results.items():
        if is_process(name) and VARIANTS[name][1] >= 1:
            ideal = sequential / pipelined_seconds(alone["per_step"], VARIANTS[name][1])
            achieved = r["samples_per_s"] / alone["samples_per_s"]
            found[name] = {"ideal": ideal, "achieved": achieved, "efficiency": achieved / ideal}
    return found


def length_summary(lengths: np.ndarray) -> str:
    return (f"mean {lengths.mean():.1f}, p50 {np.percentile(lengths, 50):.0f}, p90 {np.percentile(lengths, 90):.0f}, "
            f"max {lengths.max()}, {100 * np.mean(lengths >= MAX_NEW_TOKENS):.1f}% at the {MAX_NEW_TOKENS}-token limit")


def table(results: dict[str, dict], args: argparse.Namespace, probe: dict[str, float], load: str, flags: str) -> str:
    base_name = max((n for n in COLOCATE if n in results), key=lambda n: results[n]["samples_per_s"])
    base = results[base_name]
    one = results["colocate"]
    lines = [
        f"{args.steps} RL steps per variant after one shared warm-up ({args.warmup_steps} SFT steps, 70% of the demonstrations "
        f"rambling); 32 prompts x 8 samples, responses up to {MAX_NEW_TOKENS} tokens, {SLOTS} decode slots. Response lengths "
        f"(characters, colocate, steps 3..{args.steps - 1}): {length_summary(one['lengths'])}. Throughput over steps "
        f"3..{args.steps - 1}; ratios against `{base_name}`, the faster colocate variant. Machine: {machine_description()}; "
        f"load average before the run: {load}; XLA_FLAGS: `{flags}`.",
        "",
        "| variant | samples/s | x colocate | trained tok/s | x colocate | final val acc | mean staleness | mean len | at limit | "
        + " | ".join(f"{role} s" for role in ROLE_TIMES) + " | cores busy | wall s |",
        "|---|---|---|---|---|---|---|---|---|" + "---|" * len(ROLE_TIMES) + "---|---|",
    ]
    for name, r in results.items():
        roles = " | ".join(f"{r[role]:.1f}" for role in ROLE_TIMES)
        lines.append(
            f"| {name} | {r['samples_per_s']:.1f} | {r['samples_per_s'] / base['samples_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
            f"{r['tokens_per_s'] / base['tokens_per_s']:.2f} | {r['accuracy']:.3f} | {r['staleness_mean']:.2f} | "
            f"{r['lengths'].mean():.1f} | {100 * np.mean(r['lengths'] >= MAX_NEW_TOKENS):.1f}% | {roles} | {r['cores_busy']:.2f} | {r['seconds']:.1f} |")
    lines += ["", *explanation(results, probe), *process_explanation(results, args)]
    lines += ["", f"Reproduce: `python -m benchmarks.async_vs_colocate --steps {args.steps} --warmup-steps {args.warmup_steps}`."]
    return "\n".join(lines)


def explanation(results: dict[str, dict], probe: dict[str, float]) -> list[str]:
    one = results["colocate"]
    generator, learner = one["generate"] + one["reward"], one["learn"] + one["weight sync"]
    bound = (generator + learner) / max(generator, learner)
    sync = pipelined_seconds(one["per_step"], 0)
    predicted = {k: sync / pipelined_seconds(one["per_step"], k) for k in (1, 2, 4)}
    return [
        f"Where the time goes (colocate, one device): the generator role (generate + reward) took {generator:.1f} s and the "
        f"learner role (learn + weight sync) {learner:.1f} s of {one['seconds']:.1f} s, so generation is "
        f"{100 * generator / (generator + learner):.0f}% of a synchronous step. Alone on one simulated device, generation kept "
        f"{probe['generate']:.2f} cores busy and the update {probe['learn']:.2f} (process CPU time / wall time): one "
        "simulated device already spreads over both cores, and `--xla_cpu_multi_thread_eigen=false` does not pin it to "
        "one in jax 0.10.2 (no effect measured), so every variant runs with XLA's default threading.",
        "",
        f"Prediction for separate accelerators (each role on its own device, no shared cores), from these measured role "
        f"times: overlap hides the shorter role, (gen + learn) / max(gen, learn) = {bound:.2f}x colocate. Replaying the "
        "measured per-step times through the staleness gate (step s's rollouts start once version s-1-k is published), "
        "which keeps the long tail's step-to-step variation: "
        + ", ".join(f"k={k}: {x:.2f}x" for k, x in predicted.items()) + ".",
        "",
        *contention(results),
    ]


def process_explanation(results: dict[str, dict], args: argparse.Namespace) -> list[str]:
    """The roles as pinned processes: standalone times, the pipeline's ideal speed-up and the achieved one."""
    overlapped = overlap(results)
    if not overlapped:
        return []
    alone, one = results[SEQUENTIAL_PROCESSES], results["colocate"]
    generator, learner = alone["generate"] + alone["reward"], alone["learn"] + alone["weight sync"]
    lines = [
        "",
        f"Roles as processes, the generator pinned to core {args.generator_core} and the learner to core {args.learner_core} "
        f"(\"cores busy\" counts the learner's process only). Standalone on its core (`{SEQUENTIAL_PROCESSES}`, the roles "
        f"never overlap), the generator role took {generator:.1f} s and the learner role {learner:.1f} s over the measured "
        f"steps (colocate, both cores: {one['generate'] + one['reward']:.1f} s and {one['learn'] + one['weight sync']:.1f} s); "
        f"(t_gen + t_learn) / max(t_gen, t_learn) = {(generator + learner) / max(generator, learner):.2f}. The ideal speed-up "
        f"over `{SEQUENTIAL_PROCESSES}` replays its per-step times through the staleness gate (`pipelined_seconds`); "
        "achieved is the measured throughput ratio:",
        "",
        "| variant | ideal x | achieved x | overlap efficiency |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {o['ideal']:.2f} | {o['achieved']:.2f} | {o['efficiency']:.2f} |" for name, o in overlapped.items()]
    return lines


def contention(results: dict[str, dict]) -> list[str]:
    """How much each role slowed down when the other ran beside it (async k >= 1 vs colocate, per step)."""
    one = results["colocate"]
    overlapped = [r for n, r in results.items() if VARIANTS[n][0] == "disaggregated" and VARIANTS[n][1] >= 1 and not is_process(n)]
    if not overlapped:
        return []
    steps = lambda r: len(r["per_step"])
    learn = np.mean([r["learn"] / steps(r) for r in overlapped]) / (one["learn"] / steps(one))
    gen = np.mean([r["generate"] / steps(r) for r in overlapped]) / (one["generate"] / steps(one))
    busy = np.mean([r["cores_busy"] for r in overlapped])
    return [
        f"What limits X on this machine: the two simulated devices are threads of one process on the same {os.cpu_count()} "
        f"cores. With the roles overlapped (async k >= 1, mean), an update took {learn:.2f}x and a generation "
        f"{gen:.2f}x as long as in colocate, and the process kept {busy:.2f} cores busy (colocate: {one['cores_busy']:.2f}). "
        "Overlap pays only as far as the roles find idle cores; the host-side decode loop (Python, sampling, slot "
        "bookkeeping) also competes with the learner for the interpreter lock.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16, help="RL steps per variant (>= 4)")
    parser.add_argument("--warmup-steps", type=int, default=400, help="SFT warm-up steps, run once and shared")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--generator-core", type=int, default=0, help="the core of the generator process (`process` variants)")
    parser.add_argument("--learner-core", type=int, default=1, help="the core of the learner process (`process` variants)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/RESULTS.md alone")
    args = parser.parse_args()
    if args.steps < 4:
        parser.error(f"--steps {args.steps}: need >= 4 (steps 1-2 compile, the last one validates)")
    cores = sorted(os.sched_getaffinity(0))
    if args.generator_core == args.learner_core or not {args.generator_core, args.learner_core} <= set(cores):
        parser.error(f"--generator-core {args.generator_core} --learner-core {args.learner_core}: two distinct cores of {cores}")
    if "colocate" not in args.variants:
        args.variants.insert(0, "colocate")
    if any(is_process(name) for name in args.variants) and SEQUENTIAL_PROCESSES not in args.variants:
        args.variants.append(SEQUENTIAL_PROCESSES)  # the roles' standalone times
    # Process variants last: a thread XLA starts while one runs stays on the learner's core.
    args.variants = sorted(args.variants, key=lambda name: (is_process(name), VARIANTS[name][1] if is_process(name) else 0))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    results = {}
    with tempfile.TemporaryDirectory() as root:
        warm = Path(root) / "warm"
        trainer = Trainer(load_config(Path("configs/demo.yaml"), overrides(warm, args.steps, args.warmup_steps, "colocate")))
        try:
            trainer.resume_or_warm_start()
            probe = role_cpu_use(trainer)
        finally:
            trainer.close()
        print("cores busy per role alone:", probe, flush=True)
        for name in args.variants:
            results[name] = run_one(name, warm, Path(root), args)
            shown = {k: round(v, 3) for k, v in results[name].items() if isinstance(v, float)}
            print(name, shown, "lengths:", length_summary(results[name]["lengths"]), flush=True)
    body = table(results, args, probe, load, os.environ.get("XLA_FLAGS") or "none")
    base = max((results[n] for n in COLOCATE if n in results), key=lambda r: r["samples_per_s"])
    best = max((n for n in results if VARIANTS[n][0] == "disaggregated" and VARIANTS[n][1] >= 1), key=lambda n: results[n]["samples_per_s"])
    ratio = results[best]["samples_per_s"] / base["samples_per_s"]
    overlapped = overlap(results)
    fastest = max(overlapped, key=lambda n: results[n]["samples_per_s"], default=None)
    efficiency = overlapped[fastest]["efficiency"] if fastest is not None else float("nan")
    result = (f"best_async_over_colocate={ratio:.2f} overlap_efficiency={efficiency:.2f} "
              f"accuracy_delta_pts={100 * (results[best]['accuracy'] - base['accuracy']):.1f}")
    report(TITLE, body, result, write=not args.no_write)


if __name__ == "__main__":
    main()
