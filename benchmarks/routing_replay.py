"""Rollout routing replay (R3) on the MoE demo: what it costs per step and how much rollout/learner mismatch it removes (issue 16).

    python -m benchmarks.routing_replay                                 # 96 timed steps per variant, 4.5-6.5 min on 2 busy cores
    python -m benchmarks.routing_replay --steps 3 --reps 2 --no-write   # plumbing check

Setup: `configs/demo_moe.yaml` (a tiny Qwen3-MoE, 8 experts, 2 per token, in both layers; its shipped
warm start), with the generator computing in bfloat16 (`rollout.dtype: bfloat16`) and the learner in
float32 (`model.dtype: float32`), the production mix. Sampling is the demo's (temperature 1).

Overhead: two trainers start from the same warm start, `routing_replay: off` (nothing recorded,
nothing replayed) and `replay` (routes recorded in prefill and decode, shipped per row, replayed
in the old and current learner forwards). Their RL steps alternate (off, replay, off, ...), so
drifts in machine load hit both alike; a step is produce + learn, wall time; the first
`--skip` steps of each (compilation) are not counted. Overhead X = median(replay) / median(off) - 1,
with a bootstrap 90% interval (steps vary by tens of percent on a shared machine). Then the learner's
update alone (old log-probs and the optimizer step, the programs replay changes) is timed on one
fixed batch, `--reps` times per variant, alternated: the cost without sampling's variation.

Mismatch: on every batch the replay trainer samples, the learner's pre-update log-probs are
computed twice on the same rows with the same float32 weights, with the recorded routes
replayed and without (the learner routing for itself). Mismatch = mean over response tokens of
|p_rollout - p_learner| (`training/rollout_probs_diff_mean`); Y = 1 - with / without. It is split
by whether a token's context holds a flipped route (one the float32 learner's router chooses
differently from the bfloat16 generator's), since only those tokens' log-probs can change.
The last printed line is ``RESULT r3_overhead_pct=X mismatch_reduction_pct=Y``.
"""

import argparse
import dataclasses
import functools
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from benchmarks.results_table import machine_description, report
from rlx.config import load_config
from rlx.learner import TrainBatch
from rlx.services.trainer import Trainer

TITLE = "MoE rollout routing replay (issue 16)"
CONFIG = "configs/demo_moe.yaml"
VARIANTS = ("off", "replay")


def make_trainer(out: Path, replay: str) -> Trainer:
    config = load_config(CONFIG, [f"run.output_dir={out}", "run.progress=false", "run.save_rollouts=false", "rollout.dtype=bfloat16",
                                  f"algorithm.routing_replay={replay}"])
    trainer = Trainer(config)
    trainer.resume_or_warm_start()
    trainer.checkpointer.wait()
    return trainer


@functools.cache
def own_routes_program(graphdef: nnx.GraphDef):
    """The experts the learner's router chooses itself for every token: [B, S, moe_layers, k]."""
    return jax.jit(lambda params, tokens, start: nnx.merge(graphdef, params).hidden_states_and_routes(tokens, start=start)[2])


def flipped(trainer: Trainer, batch: TrainBatch) -> np.ndarray:
    """[B, R] True on response tokens whose context (the tokens before them) holds a token-layer route the
    learner's router chooses differently from the recorded one: the only tokens replay can change."""
    learner, tokens = trainer.learner, np.asarray(batch.tokens)[:, :-1]
    own = np.sort(np.asarray(own_routes_program(learner.graphdef)(learner.params, tokens, np.asarray(batch.start))), axis=-1)
    recorded = np.sort(np.asarray(batch.routes)[:, :-1], axis=-1)
    differs = np.any((own != recorded) & (recorded >= 0), axis=(2, 3))  # [B, S - 1]
    return np.maximum.accumulate(differs, axis=1)[:, batch.prompt_len - 1:]


def mismatch(trainer: Trainer, batch: TrainBatch) -> dict[str, float]:
    """Sums of |p_rollout - p_learner| over response tokens, learner log-probs with the recorded routes replayed and
    without, over all tokens and over the tokens downstream of a flipped route; and the token counts."""
    learner = trainer.learner
    mask, rollout = np.asarray(batch.mask), np.exp(np.asarray(batch.behaviour_log_probs))
    downstream = flipped(trainer, batch) * mask
    sums = {"tokens": float(mask.sum()), "flipped_tokens": float(downstream.sum())}
    for name, routes in (("replay", batch.routes), ("own", None)):
        log_probs = learner.programs.log_probs(learner.params, learner.layout.feed(dataclasses.replace(batch, routes=routes))).log_probs
        gap = np.abs(rollout - np.exp(np.asarray(log_probs)))
        sums[name], sums[f"{name}_flipped"] = float(np.sum(gap * mask)), float(np.sum(gap * downstream))
    return sums


def timed_step(trainer: Trainer, step: int, measure: bool) -> tuple[float, dict[str, float], dict[str, float] | None]:
    """One RL step (wall s, metrics) and, when `measure`, the batch's mismatch with and without replay (not timed)."""
    began = time.perf_counter()
    batch, meta = trainer.produce(step)
    produced = time.perf_counter()
    paired = None
    if measure:
        rollout = batch.rollout
        paired = mismatch(trainer, Trainer._train_batch(step, rollout, batch.rewards))
    resumed = time.perf_counter()
    metrics = {**meta["metrics"], **trainer.learn(step, batch)}
    return (produced - began) + (time.perf_counter() - resumed), metrics, paired


def overhead_interval(times: dict[str, list[float]], seed: int = 0) -> tuple[float, float]:
    """Bootstrap 90% interval of the median-step overhead, percent."""
    rng = np.random.default_rng(seed)
    resampled = lambda v: np.median(rng.choice(times[v], len(times[v])))
    ratios = [resampled("replay") / resampled("off") - 1 for _ in range(2000)]
    low, high = np.percentile(ratios, [5, 95])
    return 100 * low, 100 * high


def update_times(trainers: dict[str, Trainer], step: int, reps: int) -> dict[str, float]:
    """Median wall s of the learner's update alone on one fixed batch (the replay run's; without routes for `off`)."""
    batch, _ = trainers["replay"].produce(step)
    replayed = Trainer._train_batch(step, batch.rollout, batch.rewards)
    batches = {"off": dataclasses.replace(replayed, routes=None), "replay": replayed}
    times = {v: [] for v in VARIANTS}
    for rep in range(reps + 1):  # the first is a warm-up (transfers, caches)
        for variant, trainer in trainers.items():
            began = time.perf_counter()
            trainer.learner.update(batches[variant])
            if rep:
                times[variant].append(time.perf_counter() - began)
    return {v: float(np.median(times[v])) for v in VARIANTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="RL steps per variant (the first --skip are not timed)")
    parser.add_argument("--skip", type=int, default=4)
    parser.add_argument("--reps", type=int, default=30, help="timed learner updates per variant on one fixed batch")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    times = {v: [] for v in VARIANTS}
    metrics = {v: [] for v in VARIANTS}
    paired: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as root:
        trainers = {v: make_trainer(Path(root) / v, v) for v in VARIANTS}
        try:
            for step in range(1, args.steps + 1):
                for variant, trainer in trainers.items():
                    seconds, step_metrics, pair = timed_step(trainer, step, variant == "replay")
                    if step > args.skip:
                        times[variant].append(seconds)
                        metrics[variant].append(step_metrics)
                    if pair is not None:
                        paired.append(pair)
            accuracy = {v: t.evaluate()["val/accuracy"] for v, t in trainers.items()}
            update = update_times(trainers, args.steps + 1, args.reps)
        finally:
            for trainer in trainers.values():
                trainer.close()
    median = {v: float(np.median(times[v])) for v in VARIANTS}
    overhead = 100 * (median["replay"] / median["off"] - 1)
    low, high = overhead_interval(times)
    update_overhead = 100 * (update["replay"] / update["off"] - 1)
    total = {key: sum(p[key] for p in paired) for key in paired[0]}
    with_replay, without = total["replay"] / total["tokens"], total["own"] / total["tokens"]
    reduction = 100 * (1 - with_replay / without)
    rest = total["tokens"] - total["flipped_tokens"]
    mean_metric = lambda v, key: float(np.mean([m[key] for m in metrics[v]])) if key in metrics[v][0] else float("nan")
    rows = [
        "| routing_replay | step s (median) | p25-p75 s | gen s | update s | rollout_probs_diff_mean | moe/route_agreement | val/accuracy at end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in VARIANTS:
        p25, p75 = np.percentile(times[v], [25, 75])
        rows.append(f"| {v} | {median[v]:.3f} | {p25:.3f}-{p75:.3f} | {mean_metric(v, 'timing_s/gen'):.3f} | "
                    f"{mean_metric(v, 'timing_s/update'):.3f} | {mean_metric(v, 'training/rollout_probs_diff_mean'):.2e} | "
                    f"{mean_metric(v, 'moe/route_agreement'):.4f} | {accuracy[v]:.3f} |")
    split = [
        "| response tokens | share | mismatch, learner routes itself | mismatch, recorded routes replayed | change |",
        "|---|---|---|---|---|",
    ]
    for name, count, own, replayed in (("all", total["tokens"], total["own"], total["replay"]),
                                       ("downstream of a flipped route", total["flipped_tokens"], total["own_flipped"], total["replay_flipped"]),
                                       ("no flipped route before them", rest, total["own"] - total["own_flipped"], total["replay"] - total["replay_flipped"])):
        change = f"{100 * (replayed / own - 1):+.1f}%" if own > 0 else "-"
        split.append(f"| {name} | {count / total['tokens']:.1%} | {own / max(count, 1):.3e} | {replayed / max(count, 1):.3e} | {change} |")
    body = "\n".join([
        f"`python -m benchmarks.routing_replay --steps {args.steps}` on {machine_description()}.",
        "",
        f"`{CONFIG}` with a bfloat16 generator (`rollout.dtype: bfloat16`) and a float32 learner; {args.steps} RL steps per variant, "
        f"alternated, the first {args.skip} (compilation) not timed. A step is produce + learn.",
        "",
        *rows,
        "",
        f"Overhead of R3 (median step, replay vs off): **{overhead:+.1f}%** (bootstrap 90% interval {low:+.1f}% to {high:+.1f}%). "
        f"The learner's update alone on one fixed batch, {args.reps} times each, alternated: {update['off']:.3f} s off, "
        f"{update['replay']:.3f} s replaying ({update_overhead:+.1f}%).",
        "",
        f"Mismatch on the same {len(paired)} batches (the replay run's, before each update), mean |p_rollout - p_learner| "
        f"over response tokens: {without:.3e} with the learner routing for itself, {with_replay:.3e} replaying the recorded "
        f"routes: **{reduction:.1f}% less**. Split by whether a token's context holds a token-layer route the float32 "
        f"learner's router chooses differently from the bfloat16 generator's (the only tokens replay can change):",
        "",
        *split,
    ])
    report(TITLE, body, f"r3_overhead_pct={overhead:.2f} mismatch_reduction_pct={reduction:.1f}", write=not args.no_write)


if __name__ == "__main__":
    main()
