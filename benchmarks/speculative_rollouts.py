"""Speculative rollouts with the MTP head (`rollout.speculative: lossless | confidence`) against plain decoding.

    python -m benchmarks.speculative_rollouts                        # 8 timed rounds per task and mode
    python -m benchmarks.speculative_rollouts --rounds 2 --no-write  # plumbing check

Setup: `configs/demo_spec.yaml` (the demo with MTP heads), warmed up as a run starts (800 supervised steps that
also train the heads; cached under `warmup.cache_dir`, so only the first call pays them). From those weights
three engines per task, `speculative: off`, `lossless` and `confidence` (at the config's `spec_threshold`),
each behind its own rollout driver, generate the same prompt batches at the demo's sampling (temperature 1),
in alternating rounds so drifts in machine load hit all alike; the first round of each (compilation) is not
counted. Two tasks:

- `demo`: the run's own rollouts: `data.prompts_per_step` prompts x `rollout.n_samples` samples in as many
  slots, at most `rollout.max_new_tokens` (6) new tokens, ended by stop tokens.
- `long`: few slots and long responses, where a forward's cost is mostly fixed per-forward work rather than
  arithmetic per token, so a second token per forward can pay: `LONG_SLOTS` slots, one sample of each of the
  batch's prompts, `LONG_TOKENS` new tokens each with stop tokens off (the model continues past its answer,
  so what it drafts there is its own free-running text), `LONG_STEPS` forwards per engine call.

Then the cost of one engine forward with and without drafting (`forward_cost`): the demo's model shape with random
weights at `COST_DEPTHS` trunk depths, `LONG_SLOTS` slots, timed on the engine alone (no driver), the fastest of
`COST_ROUNDS` rounds; speedup is at most tokens per forward / this ratio.

Tokens per forward = emitted tokens / target forwards (`spec/tokens_per_forward`); speedup = median generated
tokens/s with drafting / without; `spec/draft_kl` estimates KL(q || p) at drafted positions. The last printed
line is ``RESULT tokens_per_forward=X speedup=Y accept_rate=Z`` for lossless mode on the `demo` task (the
run's own rollouts; the `long` task's text past the answer is one the heads were never trained on).
"""

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from benchmarks.results_table import machine_description, report
from rlx.config import load_config
from rlx.models import Qwen3
from rlx.rollout import Engine, RolloutDriver, SamplingParams, build_engine, sampling_params
from rlx.rollout.speculative import Speculation
from rlx.services.trainer import Trainer

TITLE = "Speculative rollouts with the MTP head (issue 15)"
CONFIG = "configs/demo_spec.yaml"
MODES = ("off", "lossless", "confidence")
LONG_SLOTS, LONG_TOKENS, LONG_STEPS = 4, 192, 8
NO_STOP = -1  # no token id: nothing ends a `long` response before LONG_TOKENS
COST_DEPTHS, COST_ROUNDS, COST_CALLS = (2, 8), 9, 10


def warmed_up(out: Path, batches: int):
    """The demo_spec run after its warm-up: (its trainer, closed; its weights; `batches` prompt batches of its stream)."""
    trainer = Trainer(load_config(CONFIG, [f"run.output_dir={out}", "run.progress=false", "run.save_rollouts=false"]))
    try:
        trainer.resume_or_warm_start()
        return trainer, jax.device_get(trainer.learner.params), [next(trainer.prompts) for _ in range(batches)]
    finally:
        trainer.close()


def tasks(config) -> dict[str, tuple]:
    """{task: (rollout config, samples per prompt, max new tokens, whether stop tokens end responses)}."""
    long = dataclasses.replace(config.rollout, max_concurrent_decodes=LONG_SLOTS, max_new_tokens=LONG_TOKENS, steps_per_generate=LONG_STEPS)
    return {"demo": (config.rollout, config.rollout.n_samples, config.rollout.max_new_tokens, True),
            "long": (long, 1, LONG_TOKENS, False)}


def measure(trainer, params, batches, rollout, n: int, max_new_tokens: int, stops: bool) -> dict[str, dict[str, float]]:
    """{mode: median tokens/s and mean spec/* metrics} over `batches` (the first one untimed)."""
    config, task = trainer.config, trainer.task
    model_config = dataclasses.replace(config.model.with_vocab(task.tokenizer.vocab_size),
                                       max_seq_len=config.data.max_prompt_len + max_new_tokens)
    drivers = {}
    for mode in MODES:
        engine = build_engine(trainer.learner.graphdef, params, model_config, dataclasses.replace(rollout, speculative=mode),
                              config.data.max_prompt_len, eos_id=task.tokenizer.eos_id if stops else NO_STOP,
                              pad_id=task.tokenizer.pad_id, tokenizer=task.tokenizer if stops else None)
        drivers[mode] = RolloutDriver(engine, engine.load_params())
    sampling = sampling_params(rollout)
    rates, metrics = {mode: [] for mode in MODES}, {mode: [] for mode in MODES}
    for round_, batch in enumerate(batches):
        for mode in MODES:
            start = time.perf_counter()
            out = drivers[mode].generate_groups(batch, n, jax.random.key(round_), sampling, max_new_tokens)
            seconds = time.perf_counter() - start
            if round_ > 0:  # round 0 compiles
                rates[mode].append(float(out.generation.lengths.sum()) / seconds)
                metrics[mode].append({k: v for k, v in out.metrics.items() if k.startswith("spec/")})
    return {mode: {"tokens/s": float(np.median(rates[mode])),
                   **{k: float(np.mean([m[k] for m in metrics[mode]])) for k in (metrics[mode][0] if metrics[mode][0] else {})}}
            for mode in MODES}


def forward_cost(model_config, layers: int) -> dict[str, float]:
    """{"off" | "lossless": seconds per engine forward} of the demo's model shape with `layers` trunk layers (random
    weights), `LONG_SLOTS` slots decoding at `LONG_STEPS` forwards per call, alternated, the fastest of COST_ROUNDS."""
    config = dataclasses.replace(model_config, num_layers=layers, max_seq_len=8 + LONG_TOKENS)
    graphdef, params = nnx.split(Qwen3(config, rngs=nnx.Rngs(0)))
    sampling, runs = SamplingParams(1.0), {}
    for mode, speculative in (("off", None), ("lossless", Speculation("lossless"))):
        engine = Engine(graphdef, params, config, max_concurrent_decodes=LONG_SLOTS, max_prefill_length=8, max_decode_length=LONG_TOKENS,
                        stop_tokens=(), steps_per_generate=LONG_STEPS, speculative=speculative)
        weights = engine.load_params()
        state = engine.insert_rows(engine.prefill_batch(weights, [np.arange(1, 9, dtype=np.int32)]), engine.decode_state(jax.random.key(0)),
                                   rows=[0] * LONG_SLOTS, slots=list(range(LONG_SLOTS)))
        runs[mode] = [engine, weights, state, []]
    for _ in range(COST_ROUNDS + 1):  # the first round compiles
        for run in runs.values():
            engine, weights, state, times = run
            start = time.perf_counter()
            for _ in range(COST_CALLS):
                state, result = engine.generate(weights, state, sampling, columns=64)
            jax.block_until_ready(result.data)
            run[2] = state
            times.append((time.perf_counter() - start) / (COST_CALLS * LONG_STEPS))
    return {mode: min(run[3][1:]) for mode, run in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds per task and mode (after one untimed)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        trainer, params, batches = warmed_up(Path(out), args.rounds + 1)
    config = trainer.config
    results = {name: measure(trainer, params, batches, *spec) for name, spec in tasks(config).items()}
    model_config = config.model.with_vocab(trainer.task.tokenizer.vocab_size)
    costs = {layers: forward_cost(model_config, layers) for layers in COST_DEPTHS}
    rows = []
    for name, by_mode in results.items():
        for mode, row in by_mode.items():
            kept = row.get("spec/accept_rate", row.get("spec/confidence_kept"))
            drafted = "1 | - | -" if mode == "off" else f"{row['spec/tokens_per_forward']:.2f} | {kept:.2f} | {row['spec/draft_kl']:.3f}"
            speedup = row["tokens/s"] / by_mode["off"]["tokens/s"]
            rows.append(f"| {name} | {mode} | {row['tokens/s']:.0f} | {speedup:.2f}x | {drafted} |")
    demo = results["demo"]["lossless"]
    speedup = demo["tokens/s"] / results["demo"]["off"]["tokens/s"]
    body = "\n".join([
        f"`python -m benchmarks.speculative_rollouts --rounds {args.rounds}` on {machine_description()}.",
        f"`{CONFIG}` after its warm-up, {args.rounds} timed rounds per task and mode, alternated; temperature 1.",
        f"`demo`: {config.data.prompts_per_step} prompts x {config.rollout.n_samples} samples in as many slots, at most "
        f"{config.rollout.max_new_tokens} new tokens. `long`: {LONG_SLOTS} slots, {config.data.prompts_per_step} prompts x 1 sample, "
        f"{LONG_TOKENS} new tokens each (stop tokens off), {LONG_STEPS} forwards per engine call. "
        f"`confidence` keeps drafts the confidence head rates >= {config.rollout.spec_threshold}.",
        "",
        "| task | decoding | generated tokens/s (median) | speedup | tokens per target forward | kept drafts per forward | draft KL(q‖p) |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"One engine forward ({LONG_SLOTS} slots, 64 cache columns, random weights of the demo's shape, fastest of {COST_ROUNDS} rounds):",
        "",
        "| trunk layers | plain (ms) | drafting, lossless (ms) | ratio | best speedup at 1.8 tokens per forward |",
        "|---|---|---|---|---|",
        *(f"| {layers} | {c['off'] * 1e3:.3f} | {c['lossless'] * 1e3:.3f} | {c['lossless'] / c['off']:.2f} | {1.8 * c['off'] / c['lossless']:.2f}x |"
          for layers, c in costs.items()),
        "",
        "A drafting forward runs the trunk on two tokens per slot, the MTP decoder layer (about one trunk layer's time, so",
        "half the demo's 2-layer trunk) and the draft, verify and next-token draws; the ratio falls as the trunk deepens.",
        "On the demo task (256 slots, 6-token answers) prefill, insert and host work per token weigh in too. The issue's",
        "1.3x is not met on this CPU; decoding on GPU/TPU, where the issue expects the gain, is not measured (no accelerator",
        "lent). On `long`, lossless keeps few drafts: past its answer the model writes text neither head was trained on",
        "(draft KL ~5 nats); the unverified confidence mode keeps most of them there.",
    ])
    result = f"tokens_per_forward={demo['spec/tokens_per_forward']:.2f} speedup={speedup:.2f} accept_rate={demo['spec/accept_rate']:.2f}"
    report(TITLE, body, result, write=not args.no_write)


if __name__ == "__main__":
    main()
