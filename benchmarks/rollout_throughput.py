"""Generated tokens/s of rollouts with long-tailed response lengths (issue 3).

    python -m benchmarks.rollout_throughput            # needs the extra: pip install -e '.[jetstream]'
    python -m benchmarks.rollout_throughput --requests 512 --slots 32

One engine (a small Qwen3, same weights, same prompts) is driven three ways:

* continuous: rlx's driver; a finished sequence frees its slot and the next request takes it;
* static: the same driver admitting a new batch only when every slot is free, so every
  sequence of a batch occupies its slot until the batch's longest is done;
* jetstream: JetStream's orchestrator (`Driver` + `LLMOrchestrator.Decode`, token ids in).

Response lengths are drawn per request from a lognormal (RL responses are long-tailed)
and enforced as the request's max tokens, with no stop token, so all three generate the
same number of tokens. The engine emits one token per `generate` call (JetStream checks
max tokens once per call). Each mode runs once to compile, then the modes alternate for
`--reps` rounds (so load from other processes hits all alike); ratios are taken within a
round and their median is reported.
The last printed line is ``RESULT continuous_over_static=X.XX continuous_over_jetstream=Y.YY``.
"""

import argparse
import statistics
import time

import jax
import numpy as np
from flax import nnx

from benchmarks.results_table import machine_description, report
from rlx.data import CharTokenizer
from rlx.models import ModelConfig, Qwen3
from rlx.rollout import Engine, Request, RolloutDriver, SamplingParams
from rlx.rollout.jetstream_compat import decode_all, jetstream_engine, start_driver


def build(args) -> tuple[Engine, list[np.ndarray], list[int]]:
    tokenizer = CharTokenizer("0123456789+=abcdefghijklmnopqrstuvwxyz")
    config = ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=128, intermediate_size=384, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=32, max_seq_len=16 + args.max_len)
    graphdef, params = nnx.split(Qwen3(config, rngs=nnx.Rngs(0)))
    engine = Engine(graphdef, params, config, max_concurrent_decodes=args.slots, max_prefill_length=15,
                    max_decode_length=args.max_len, stop_tokens=(), pad_id=tokenizer.pad_id,
                    steps_per_generate=1, tokenizer=tokenizer)
    rng = np.random.default_rng(0)
    prompts = [np.concatenate([[tokenizer.bos_id], rng.integers(6, tokenizer.vocab_size, rng.integers(3, 14))]).astype(np.int32)
               for _ in range(args.requests)]
    lengths = np.clip(np.round(rng.lognormal(np.log(args.median_len), args.sigma, args.requests)), 1, args.max_len).astype(int)
    return engine, prompts, [int(n) for n in lengths]


def runners(engine: Engine, prompts: list[np.ndarray], lengths: list[int]) -> dict:
    """Each mode as a function returning the number of generated tokens."""
    params = engine.load_params()
    driver = RolloutDriver(engine, params)
    sampling, key = SamplingParams(temperature=1.0), jax.random.key(0)
    requests = [Request(p, n) for p, n in zip(prompts, lengths)]
    adapter = jetstream_engine(engine)
    adapter.sampling = sampling

    def rlx(refill: bool):
        return lambda: sum(len(c.tokens) for c in driver.stream(requests, key, sampling, refill=refill))

    def jetstream():
        orchestrator = start_driver(adapter, params)
        try:  # JetStream prepends BOS itself
            return sum(len(t) for t in decode_all(orchestrator, [p[1:] for p in prompts], lengths))
        finally:
            orchestrator.stop()

    return {"continuous": rlx(True), "static": rlx(False), "jetstream": jetstream}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--median-len", type=float, default=12.0)
    parser.add_argument("--sigma", type=float, default=0.9)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    engine, prompts, lengths = build(args)
    modes = runners(engine, prompts, lengths)
    expected = sum(lengths)
    for name, run in modes.items():  # compile everything once
        assert run() == expected, f"{name} generated a different number of tokens than requested"
    times = {name: [] for name in modes}
    names = list(modes)
    for rep in range(args.reps):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            began = time.perf_counter()
            modes[name]()
            times[name].append(time.perf_counter() - began)
    rate = {name: expected / statistics.median(t) for name, t in times.items()}
    # Ratios within a round (the modes ran back to back, under the same load), then their median.
    ratio = {name: statistics.median(a / b for a, b in zip(times[name], times["continuous"])) for name in names}
    x, y = ratio["static"], ratio["jetstream"]
    rows = "\n".join(f"| {name} | {rate[name]:,.0f} | {statistics.median(times[name]):.2f} | {ratio[name]:.2f} |" for name in names)
    body = f"""`python -m benchmarks.rollout_throughput --requests {args.requests} --slots {args.slots} --median-len {args.median_len} --sigma {args.sigma} --max-len {args.max_len} --reps {args.reps}`

{machine_description()}. Qwen3 (2 layers, width 128), {args.requests} requests over {args.slots} slots,
prompts of 4-14 tokens, response lengths lognormal (median {args.median_len:g}, sigma {args.sigma:g}, clipped to
1..{args.max_len}): mean {np.mean(lengths):.1f}, max {max(lengths)}, {expected} tokens in all. Medians of {args.reps} rounds
in rotating order; "continuous over mode" is the median of the per-round time ratios.

| mode | generated tokens/s | seconds | continuous over mode |
|---|---|---|---|
{rows}
"""
    report("Rollout throughput (issue 3)", body, f"continuous_over_static={x:.2f} continuous_over_jetstream={y:.2f}")


if __name__ == "__main__":
    main()
