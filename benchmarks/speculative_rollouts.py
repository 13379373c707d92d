"""Speculative rollouts with the MTP head (`rollout.speculative: lossless`) against plain decoding, on the demo.

    python -m benchmarks.speculative_rollouts                        # 8 timed rounds per mode
    python -m benchmarks.speculative_rollouts --rounds 2 --no-write  # plumbing check

Setup: `configs/demo_spec.yaml` (the demo with MTP heads), warmed up as a run starts (800 supervised steps that
also train the heads; cached under `warmup.cache_dir`, so only the first call pays them). From those weights two
engines, `speculative: off` and `lossless`, each behind its own rollout driver, generate the same prompt batches
(`data.prompts_per_step` prompts x `rollout.n_samples`) at the demo's sampling (temperature 1), in alternating
rounds so drifts in machine load hit both alike; the first round of each (compilation) is not counted.
Tokens per forward = emitted tokens / target forwards (`spec/tokens_per_forward`); speedup = median generated
tokens/s with drafting / without. The last printed line is ``RESULT tokens_per_forward=X speedup=Y accept_rate=Z``.
Only the demo's short answers (at most 6 tokens) are measured; a long-response task is not.
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
from rlx.rollout import RolloutDriver, build_engine, sampling_params
from rlx.services.trainer import Trainer

TITLE = "Speculative rollouts with the MTP head (issue 15)"
CONFIG = "configs/demo_spec.yaml"
MODES = ("off", "lossless")


def warmed_up(out: Path, batches: int):
    """The demo_spec run after its warm-up: (its trainer, closed; its weights; `batches` prompt batches of its stream)."""
    trainer = Trainer(load_config(CONFIG, [f"run.output_dir={out}", "run.progress=false", "run.save_rollouts=false"]))
    try:
        trainer.resume_or_warm_start()
        return trainer, jax.device_get(trainer.learner.params), [next(trainer.prompts) for _ in range(batches)]
    finally:
        trainer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="timed rounds per mode (after one untimed)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        trainer, params, batches = warmed_up(Path(out), args.rounds + 1)
    config, task, graphdef = trainer.config, trainer.task, trainer.learner.graphdef
    model_config = config.model.with_vocab(task.tokenizer.vocab_size)
    sampling = sampling_params(config.rollout)
    drivers = {}
    for mode in MODES:
        rollout = dataclasses.replace(config.rollout, speculative=mode)
        engine = build_engine(graphdef, params, model_config, rollout, config.data.max_prompt_len, eos_id=task.tokenizer.eos_id,
                              pad_id=task.tokenizer.pad_id, tokenizer=task.tokenizer)
        drivers[mode] = RolloutDriver(engine, engine.load_params())
    rates = {mode: [] for mode in MODES}
    per_forward, accepted = [], []
    for round_, batch in enumerate(batches):
        for mode in MODES:
            start = time.perf_counter()
            out = drivers[mode].generate_groups(batch, config.rollout.n_samples, jax.random.key(round_), sampling,
                                                config.rollout.max_new_tokens)
            seconds = time.perf_counter() - start
            if round_ == 0:
                continue  # compilation
            rates[mode].append(float(out.generation.lengths.sum()) / seconds)
            if mode == "lossless":
                per_forward.append(out.metrics["spec/tokens_per_forward"])
                accepted.append(out.metrics["spec/accept_rate"])
    median = {mode: float(np.median(rates[mode])) for mode in MODES}
    speedup = median["lossless"] / median["off"]
    x, z = float(np.mean(per_forward)), float(np.mean(accepted))
    body = "\n".join([
        f"`python -m benchmarks.speculative_rollouts --rounds {args.rounds}` on {machine_description()}.",
        f"`{CONFIG}` after its warm-up; {config.data.prompts_per_step} prompts x {config.rollout.n_samples} samples per round, "
        f"at most {config.rollout.max_new_tokens} new tokens, {args.rounds} timed rounds per mode, alternated.",
        "",
        "| decoding | generated tokens/s (median) | tokens per target forward | kept drafts per forward |",
        "|---|---|---|---|",
        f"| plain | {median['off']:.0f} | 1 | - |",
        f"| lossless speculative | {median['lossless']:.0f} | {x:.2f} | {z:.2f} |",
        "",
        f"Speedup {speedup:.2f}x. The demo's 2-layer model costs about its arithmetic per forward on a CPU, and a drafting",
        "forward runs two tokens, the MTP layer and three `[slots, vocab]` logits, so more tokens per forward do not make",
        "rollouts faster here; the gain needs memory-bound decoding (large models on accelerators), not measured yet.",
    ])
    report(TITLE, body, f"tokens_per_forward={x:.2f} speedup={speedup:.2f} accept_rate={z:.2f}", write=not args.no_write)


if __name__ == "__main__":
    main()
