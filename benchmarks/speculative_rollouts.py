"""Speculative rollouts with the MTP head (`rollout.speculative: lossless | confidence`) against plain decoding.

    python -m benchmarks.speculative_rollouts                        # 8 timed rounds per task and mode
    python -m benchmarks.speculative_rollouts --rounds 2 --no-write  # plumbing check

Two runs of `configs/demo_spec.yaml` (MTP and confidence heads trained in the warm-up alongside the policy), each
warmed up as a run starts (cached under `warmup.cache_dir`, so only the first call pays it: a few minutes for the
demo, 10 on 2 loaded cores for `ramble`; the measurements then took 14 minutes at load 3-6). From each run's
weights three engines, `speculative: off`, `lossless` and `confidence` (at the config's `spec_threshold`), each behind its own rollout driver, generate the same prompt batches at temperature
1 with the run's stop tokens, in alternating rounds so drifts in machine load hit all alike; the first round of each
(compilation) is not counted, nor is the time a timed round spends compiling a program variant it meets first (a
longer attention bucket, another prefill batch size: seconds each on this CPU, more for a drafting program, and met
by chance, a few per mode), which `jax.monitoring` reports.

- `demo`: the demo itself (128 wide x 2 layers): 32 prompts x 8 samples in 256 slots, at most 6 new tokens. A
  forward there is compute-bound on CPU, so a drafting forward (two tokens per slot, the MTP layer, three draws)
  costs nearly twice a plain one, and drafting cannot pay.
- `ramble`: a setting built for speculation to pay on CPU: long responses the heads were trained on, few slots, a
  model whose weights dominate a forward. The model is 1024 wide x 4 layers (`RAMBLE`: a plain forward reads ~140
  MB of f32 weights, so with 4 slots it is bound by reading them, and a second token per slot is nearly free); its
  warm-up demonstrations all *ramble* (`data.arithmetic.warmup_flaw: ramble`, rate 1, median 32 extra characters:
  the sum, then its digits repeated, then EOS), so the heads learn the text the policy then writes; 4 slots, one
  sample per prompt, at most 64 new tokens.

Then the cost of one engine forward with and without drafting (`forward_cost`) of each task's warmed-up model at
4 slots, timed on the engine alone (no driver), the fastest of `COST_ROUNDS` rounds; a speedup is at most tokens
per forward / this ratio.

Tokens per forward = emitted tokens / target forwards (`spec/tokens_per_forward`); speedup = median generated
tokens/s with drafting / without; `spec/draft_kl` estimates KL(q || p) at drafted positions. The last printed
line is ``RESULT tokens_per_forward=X speedup=Y accept_rate=Z`` for lossless mode on the `ramble` task: the issue's
targets are about long reasoning responses from a model whose forward is memory-bound, which `ramble` is and the
demo (6-token answers, a compute-bound 2-layer model) is not; the demo's rows are in the table beside it. Measured:
RESULTS.md (1.90 tokens per forward, 0.90 accepted, 1.2x-1.25x tokens/s in the runs so far, short of 1.3x).
"""

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks.results_table import machine_description, report
from rlx.config import load_config
from rlx.rollout import Engine, RolloutDriver, SamplingParams, build_engine, sampling_params
from rlx.rollout.speculative import Speculation
from rlx.services.trainer import Trainer

TITLE = "Speculative rollouts with the MTP head (issue 15)"
CONFIG = "configs/demo_spec.yaml"
MODES = ("off", "lossless", "confidence")
RAMBLE_SLOTS, RAMBLE_STEPS = 4, 8
# The `ramble` task's run: demo_spec at 1024 wide x 4 layers (a plain forward reads ~140 MB of f32 weights, more than this
# CPU's caches), warmed up on demonstrations that all ramble (the sum, then its digits repeated, median 32 characters).
RAMBLE = ["model.hidden_size=1024", "model.intermediate_size=2048", "model.num_layers=4", "model.num_heads=16", "model.num_kv_heads=4",
          "model.head_dim=64", "model.max_seq_len=80", "data.arithmetic.warmup_flaw=ramble", "data.arithmetic.warmup_flaw_rate=1.0",
          "data.arithmetic.ramble_median_chars=32", "rollout.max_new_tokens=64", "warmup.sft_steps=160", "warmup.batch_size=16",
          "warmup.learning_rate=0.001", f"rollout.max_concurrent_decodes={RAMBLE_SLOTS}", f"rollout.steps_per_generate={RAMBLE_STEPS}",
          "rollout.n_samples=1", "algorithm.adv_estimator=reinforce_plus_plus"]  # one sample per prompt: no groups
TASKS = {"demo": [], "ramble": RAMBLE}
NOTE = ("A drafting forward runs the trunk on two tokens per slot, the MTP decoder layer (about one trunk layer's time)"
        " and the draft, verify and next-token draws, so its cost ratio is about 1 + 1 / trunk layers where weights dominate"
        " (`ramble`; real models have many more layers than 4, so the MTP layer costs them relatively less) and near 2 where"
        " arithmetic does (`demo`). The forward ratio bounds the speedup at tokens per forward / ratio. The breakdown puts"
        " the rest of the gap where it is: *slot use* is the share of slot-forwards in which a slot's sample emitted a token"
        " (the rest idled: free slots at a batch's tail, and slots whose response ended inside a generate call; while samples"
        " wait, a call ends once a slot is free and is read at once, so a freed slot is refilled after the forward it ended"
        " in); a prefill (the MTP layer included) costs about one forward per sample in both modes, so relatively more when"
        " a sample takes fewer forwards; *rest* is the wall time no engine cost accounts for: the driver's host work and"
        " waits per call and machine load (the costs are the fastest of their rounds, the rounds' time is what the load"
        " left); the time timed rounds spent compiling program variants they met first (*compiles*, seconds each, more"
        " for a drafting program) is left out of every number, as jax.monitoring reports it.")
COST_ROUNDS, COST_CALLS = 9, 4
COUNTS = ("prefills", "calls", "forwards", "slot_forwards")  # `RolloutDriver.counts` fields the breakdown reads
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
_compiling = [0.0]  # seconds spent tracing, lowering and compiling since the benchmark started


def _count_compile(event: str, seconds: float, **_) -> None:
    if event in COMPILE_EVENTS:
        _compiling[0] += seconds


def warmed_up(out: Path, overrides: list[str], batches: int):
    """The demo_spec run (with `overrides`) after its warm-up: (its trainer, closed; its weights; `batches` prompt
    batches of its stream)."""
    trainer = Trainer(load_config(CONFIG, [f"run.output_dir={out}", "run.progress=false", "run.save_rollouts=false", *overrides]))
    try:
        trainer.resume_or_warm_start()
        return trainer, jax.device_get(trainer.learner.params), [next(trainer.prompts) for _ in range(batches)]
    finally:
        trainer.close()


def model_config(trainer):
    config = trainer.config
    return dataclasses.replace(config.model.with_vocab(trainer.task.tokenizer.vocab_size),
                               max_seq_len=config.data.max_prompt_len + config.rollout.max_new_tokens)


def measure(trainer, params, batches) -> dict[str, dict[str, float]]:
    """{mode: median tokens/s and mean spec/* metrics} of the run's rollouts over `batches` (the first one untimed)."""
    config, task = trainer.config, trainer.task
    drivers = {}
    for mode in MODES:
        engine = build_engine(trainer.learner.graphdef, params, model_config(trainer), dataclasses.replace(config.rollout, speculative=mode),
                              config.data.max_prompt_len, eos_id=task.tokenizer.eos_id, pad_id=task.tokenizer.pad_id, tokenizer=task.tokenizer)
        drivers[mode] = RolloutDriver(engine, engine.load_params())
    sampling, n, max_new_tokens = sampling_params(config.rollout), config.rollout.n_samples, config.rollout.max_new_tokens
    rates, metrics, lengths = {mode: [] for mode in MODES}, {mode: [] for mode in MODES}, []
    # Timed rounds' sums; `seconds` leaves out `compiling`.
    spent = {mode: {"seconds": 0.0, "compiles": 0, "compiling": 0.0, **{field: 0 for field in COUNTS}} for mode in MODES}
    for round_, batch in enumerate(batches):
        for mode in MODES:
            counts, compiled = dataclasses.replace(drivers[mode].counts), drivers[mode].engine.compiled_variants()
            start, compiling = time.perf_counter(), _compiling[0]
            out = drivers[mode].generate_groups(batch, n, jax.random.key(round_), sampling, max_new_tokens)
            compiling = _compiling[0] - compiling
            seconds = time.perf_counter() - start - compiling
            if round_ > 0:  # round 0 compiles
                spent[mode]["seconds"] += seconds
                spent[mode]["compiling"] += compiling
                spent[mode]["compiles"] += drivers[mode].engine.compiled_variants() - compiled
                for field in COUNTS:
                    spent[mode][field] += getattr(drivers[mode].counts, field) - getattr(counts, field)
                rates[mode].append(float(out.generation.lengths.sum()) / seconds)
                metrics[mode].append({k: v for k, v in out.metrics.items() if k.startswith("spec/")})
                if mode == "off":
                    lengths.extend(np.asarray(out.generation.lengths).reshape(-1).tolist())
    results = {mode: {"tokens/s": float(np.median(rates[mode])),
                      **{k: float(np.mean([m[k] for m in metrics[mode]])) for k in (metrics[mode][0] if metrics[mode][0] else {})}}
               for mode in MODES}
    results["off"]["mean_length"] = float(np.mean(lengths))
    for mode in MODES:
        results[mode]["spent"] = spent[mode]
    return results


def forward_cost(graphdef, params, config, slots: int, steps: int, prompt: np.ndarray) -> dict[str, dict[str, float]]:
    """{"off" | "lossless": {"forward": seconds per engine forward, "prefill": seconds to prefill `prompt` and insert it
    into one slot}} of the model `(graphdef, params)`: `slots` slots, freshly inserted after `prompt`, decode COST_CALLS
    calls of `steps` forwards (attention over the whole cache, the same for both); alternated, the fastest of COST_ROUNDS
    rounds."""
    config = dataclasses.replace(config, max_seq_len=len(prompt) + 2 * COST_CALLS * steps)
    sampling, engines, times = SamplingParams(1.0), {}, {mode: {"forward": [], "prefill": []} for mode in ("off", "lossless")}
    for mode, speculative in (("off", None), ("lossless", Speculation("lossless"))):
        engine = Engine(graphdef, params, config, max_concurrent_decodes=slots, max_prefill_length=len(prompt),
                        max_decode_length=2 * COST_CALLS * steps, stop_tokens=(), steps_per_generate=steps, speculative=speculative)
        engines[mode] = engine, engine.load_params()
    for _ in range(COST_ROUNDS + 1):  # the first round compiles
        for mode, (engine, weights) in engines.items():
            state = engine.decode_state(jax.random.key(0))
            jax.block_until_ready(state.cache.k)
            start = time.perf_counter()
            state = engine.insert_rows(engine.prefill_batch(weights, [prompt]), state, rows=[0], slots=[0])
            jax.block_until_ready(state.cache.k)
            times[mode]["prefill"].append(time.perf_counter() - start)
            state = engine.insert_rows(engine.prefill_batch(weights, [prompt]), state, rows=[0] * slots, slots=list(range(slots)))
            jax.block_until_ready(state.cache.k)
            start = time.perf_counter()
            for _ in range(COST_CALLS):
                state, result = engine.generate(weights, state, sampling)
            jax.block_until_ready(result.data)
            times[mode]["forward"].append((time.perf_counter() - start) / (COST_CALLS * steps))
            engine.release(state)
    return {mode: {part: min(seconds[1:]) for part, seconds in parts.items()} for mode, parts in times.items()}


def breakdown(row: dict, cost: dict[str, float], slots: int) -> str:
    """A table row: where the timed rounds' wall time of one mode went (`measure`'s "spent" at `forward_cost`'s costs)."""
    spent = row["spent"]
    decode, prefill = spent["forwards"] * cost["forward"], spent["prefills"] * cost["prefill"]
    seconds = spent["seconds"]
    share = lambda part: f"{part:.1f} ({part / seconds:.0%})"
    return (f"{seconds:.1f} | {spent['calls']} | {spent['forwards']} | {spent['slot_forwards'] / (spent['forwards'] * slots):.0%} | "
            f"{share(decode)} | {spent['prefills']} | {share(prefill)} | {share(seconds - decode - prefill)} | {spent['compiles']} "
            f"({spent['compiling']:.1f} s) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds per task and mode (after one untimed)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    jax.monitoring.register_event_duration_secs_listener(_count_compile)
    results, costs, configs = {}, {}, {}
    for name, overrides in TASKS.items():
        with tempfile.TemporaryDirectory() as out:
            trainer, params, batches = warmed_up(Path(out), overrides, args.rounds + 1)
        configs[name] = trainer.config
        results[name] = measure(trainer, params, batches)
        prompt = batches[0].tokens[0, batches[0].start[0]:]
        costs[name] = forward_cost(trainer.learner.graphdef, params, model_config(trainer), RAMBLE_SLOTS, RAMBLE_STEPS, prompt)
    rows = []
    for name, by_mode in results.items():
        for mode, row in by_mode.items():
            kept = row.get("spec/accept_rate", row.get("spec/confidence_kept"))
            drafted = "1 | - | -" if mode == "off" else f"{row['spec/tokens_per_forward']:.2f} | {kept:.2f} | {row['spec/draft_kl']:.3f}"
            speedup = row["tokens/s"] / by_mode["off"]["tokens/s"]
            rows.append(f"| {name} | {mode} | {row['tokens/s']:.0f} | {speedup:.2f}x | {drafted} |")
    demo, ramble = configs["demo"], configs["ramble"]
    shape = lambda c: f"{c.model.hidden_size} wide x {c.model.num_layers} layers"
    body = "\n".join([
        f"`python -m benchmarks.speculative_rollouts --rounds {args.rounds}` on {machine_description()}.",
        f"`{CONFIG}` runs after their warm-up, {args.rounds} timed rounds per task and mode, alternated; temperature 1; stop tokens on.",
        f"`demo`: the demo ({shape(demo)}, {demo.warmup.sft_steps} warm-up steps), {demo.data.prompts_per_step} prompts x "
        f"{demo.rollout.n_samples} samples in as many slots, at most {demo.rollout.max_new_tokens} new tokens "
        f"(mean {results['demo']['off']['mean_length']:.1f}). `ramble`: {shape(ramble)}, {ramble.warmup.sft_steps} warm-up steps of "
        f"{ramble.warmup.batch_size} demonstrations that all ramble (median {ramble.data.arithmetic.ramble_median_chars} extra characters), "
        f"{RAMBLE_SLOTS} slots, {ramble.data.prompts_per_step} prompts x 1 sample, at most {ramble.rollout.max_new_tokens} new tokens "
        f"(mean {results['ramble']['off']['mean_length']:.1f}), {RAMBLE_STEPS} forwards per engine call. "
        f"`confidence` keeps drafts the confidence head rates >= {demo.rollout.spec_threshold}.",
        "",
        "| task | decoding | generated tokens/s (median) | speedup | tokens per target forward | kept drafts per forward | draft KL(q‖p) |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"One engine forward of each task's warmed-up model ({RAMBLE_SLOTS} slots, {RAMBLE_STEPS} forwards per call), and a prefill "
        f"and insert of one of its prompts, fastest of {COST_ROUNDS} rounds:",
        "",
        "| model | plain forward (ms) | drafting forward, lossless (ms) | ratio | best speedup at 1.8 tokens per forward | prefill + insert, plain / drafting (ms) |",
        "|---|---|---|---|---|---|",
        *(f"| {name} ({shape(configs[name])}) | {c['off']['forward'] * 1e3:.3f} | {c['lossless']['forward'] * 1e3:.3f} | "
          f"{c['lossless']['forward'] / c['off']['forward']:.2f} | {1.8 * c['off']['forward'] / c['lossless']['forward']:.2f}x | "
          f"{c['off']['prefill'] * 1e3:.1f} / {c['lossless']['prefill'] * 1e3:.1f} |" for name, c in costs.items()),
        "",
        f"Where the `ramble` rounds' time went ({args.rounds} timed rounds, compilation left out; decode and prefill at the costs "
        "above, the rest is the driver's host work, waits and load drift):",
        "",
        "| decoding | seconds | generate calls | forwards | slot use | decode (s) | prefills | prefill + insert (s) | rest (s) | "
        "compiles (time left out) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(f"| {mode} | {breakdown(results['ramble'][mode], costs['ramble'][mode], RAMBLE_SLOTS)}" for mode in ("off", "lossless")),
        "",
        NOTE,
    ])
    lossless = results["ramble"]["lossless"]
    speedup = lossless["tokens/s"] / results["ramble"]["off"]["tokens/s"]
    result = f"tokens_per_forward={lossless['spec/tokens_per_forward']:.2f} speedup={speedup:.2f} accept_rate={lossless['spec/accept_rate']:.2f}"
    report(TITLE, body, result, write=not args.no_write)


if __name__ == "__main__":
    main()
