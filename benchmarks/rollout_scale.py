"""Generated tokens/s of the rollout engine at ~20M and ~100M parameters against Hugging Face `generate` (issue 13).

    python -m benchmarks.rollout_scale                      # both sizes, 2 rounds (a few minutes on 2 cores)
    python -m benchmarks.rollout_scale --sizes 20M --rounds 3

A Qwen3 of each size with random weights is exported once through `rlx.models.save_pretrained`;
then, in alternating subprocesses (one system per process, so neither warms the other's
caches or shares its threads), `--slots` prompts of `--prompt-len` random tokens are answered
with exactly `--new-tokens` tokens each (no stop token), sampling at temperature 1:

* engine: rlx's continuous-batching driver over `Engine` (`--slots` decode slots,
  `--steps-per-generate` tokens per call), float32;
* hf: `transformers` `AutoModelForCausalLM.generate` on torch CPU, float32, the same batch
  (do_sample, top_k 0, top_p 1: the whole vocabulary, as the engine).

Compilation (engine) and a short warm-up generate (hf) are outside the timed region; prefill
is inside it for both. Each round runs engine then hf or hf then engine, alternately; the
ratio is taken within a round and its median reported.

Decode roofline: the engine's time per decode step (all slots live, attention over every
cache column) against the bytes one step must read, weights plus the whole KV cache, over
the machine's copy bandwidth (numpy copy of 1 GiB, read + write bytes per second), and
against its floating-point work (2 x parameters x slots plus attention) at the machine's
float32 matmul rate (a jitted 2048^3 matmul): with 128 slots on a CPU the step is compute-bound.
The last line is ``RESULT engine_over_hf=X decode_bw_fraction=Y`` (the larger model's figures).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {  # ~parameters: Qwen3 shapes with a 32k vocabulary and tied embeddings
    "20M": dict(hidden_size=384, intermediate_size=1024, num_layers=6, num_heads=6, num_kv_heads=2, head_dim=64),
    "100M": dict(hidden_size=768, intermediate_size=2048, num_layers=12, num_heads=12, num_kv_heads=4, head_dim=64),
}
VOCAB = 32000


def export(size: str, directory: Path, max_len: int) -> int:
    """Writes a random-weight Qwen3 of `size` as a Hugging Face checkpoint; returns its parameter count."""
    from flax import nnx

    from rlx.models import ModelConfig, Qwen3, save_pretrained

    config = ModelConfig(vocab_size=VOCAB, max_seq_len=max_len, **SIZES[size])
    model = Qwen3(config, rngs=nnx.Rngs(0))
    save_pretrained(model, directory)
    return sum(int(np.prod(x.shape)) for x in __import__("jax").tree.leaves(nnx.state(model, nnx.Param)))


def prompts(args) -> np.ndarray:
    return np.random.default_rng(0).integers(10, VOCAB, (args.slots, args.prompt_len)).astype(np.int32)


def engine_worker(args) -> dict:
    import jax
    from flax import nnx

    from rlx.models import from_pretrained
    from rlx.rollout import Engine, Request, RolloutDriver, SamplingParams

    model = from_pretrained(args.model_dir).model
    graphdef, params = nnx.split(model)
    engine = Engine(graphdef, params, model.config, max_concurrent_decodes=args.slots, max_prefill_length=args.prompt_len,
                    max_decode_length=args.new_tokens, stop_tokens=(), steps_per_generate=args.steps_per_generate)
    params, sampling = engine.load_params(), SamplingParams(temperature=1.0)
    driver = RolloutDriver(engine, params)
    requests = [Request(p, args.new_tokens, tag=i) for i, p in enumerate(prompts(args))]
    list(driver.stream([Request(p, 1) for p in prompts(args)], jax.random.key(1), sampling))  # compiles prefill and insert
    state = engine.decode_state(jax.random.key(2))
    for bucket in engine.kv_buckets:  # compiles every decode length bucket (all slots free: nothing is generated)
        state, result = engine.generate(params, state, sampling, bucket)
    jax.block_until_ready(result.data)
    engine.release(state)
    began = time.perf_counter()
    tokens = sum(len(c.tokens) for c in driver.stream(requests, jax.random.key(0), sampling))
    elapsed = time.perf_counter() - began
    return {"tokens": tokens, "seconds": elapsed, "step_s": decode_step_seconds(engine, params, sampling, args)}


def decode_step_seconds(engine, params, sampling, args) -> float:
    """Seconds per decoded token position with every slot live, reading all cache columns."""
    import jax

    state = engine.decode_state(jax.random.key(3))
    prefix = engine.prefill_batch(params, list(prompts(args)))
    state = engine.insert_rows(prefix, state, list(range(args.slots)), list(range(args.slots)))
    calls = max(1, 32 // engine.steps_per_generate)
    state, result = engine.generate(params, state, sampling, None)
    jax.block_until_ready(result.data)
    began = time.perf_counter()
    for _ in range(calls):
        state, result = engine.generate(params, state, sampling, None)
    jax.block_until_ready(result.data)
    elapsed = time.perf_counter() - began
    engine.release(state)
    return elapsed / (calls * engine.steps_per_generate)


def hf_worker(args) -> dict:
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()
    ids = torch.from_numpy(prompts(args).astype(np.int64))
    options = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, eos_token_id=None, pad_token_id=0)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=2, min_new_tokens=2, **options)
        began = time.perf_counter()
        out = model.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, **options)
        elapsed = time.perf_counter() - began
    return {"tokens": int((out.shape[1] - ids.shape[1]) * out.shape[0]), "seconds": elapsed}


def run_worker(system: str, model_dir: Path, args) -> dict:
    command = [sys.executable, "-m", "benchmarks.rollout_scale", "--worker", system, "--model-dir", str(model_dir),
               "--slots", str(args.slots), "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens),
               "--steps-per-generate", str(args.steps_per_generate)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{system} worker failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def copy_bandwidth(megabytes: int = 1024) -> float:
    """Bytes moved per second (read + write) by a numpy copy of `megabytes`, best of 5."""
    source = np.ones(megabytes << 18, np.float32)
    target = np.empty_like(source)
    best = min(_timed(lambda: np.copyto(target, source)) for _ in range(5))
    return 2 * source.nbytes / best


def _timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def matmul_rate(size: int = 2048) -> float:
    """Float32 FLOP/s of a jitted square matmul, best of 5."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((size, size), jnp.float32)
    product = jax.jit(lambda x: x @ x)
    product(a).block_until_ready()
    best = min(_timed(lambda: product(a).block_until_ready()) for _ in range(5))
    return 2 * size**3 / best


def step_flops(size: str, parameters: int, args) -> int:
    """Floating-point work of one decode step: every weight once per slot (the tied embedding as the
    unembedding), and attention over every cache column (scores and weighted values)."""
    shape = SIZES[size]
    columns = args.prompt_len + args.new_tokens
    attention = 4 * shape["num_layers"] * args.slots * shape["num_heads"] * shape["head_dim"] * columns
    return 2 * parameters * args.slots + attention


def step_bytes(size: str, parameters: int, args) -> int:
    """Bytes one decode step reads: every weight once (float32) and the whole KV cache."""
    shape = SIZES[size]
    columns = args.prompt_len + args.new_tokens
    cache = 2 * shape["num_layers"] * args.slots * columns * shape["num_kv_heads"] * shape["head_dim"] * 4
    return parameters * 4 + cache


def measure(size: str, args, bandwidth: float, flop_rate: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / size
        parameters = export(size, directory, args.prompt_len + args.new_tokens)
        runs = {"engine": [], "hf": []}
        for round_ in range(args.rounds):
            for system in (("engine", "hf") if round_ % 2 == 0 else ("hf", "engine")):
                runs[system].append(run_worker(system, directory, args))
                print(f"{size} round {round_} {system}: {runs[system][-1]}", file=sys.stderr, flush=True)
    expected = args.slots * args.new_tokens
    for system, results in runs.items():
        assert all(r["tokens"] == expected for r in results), f"{system} generated a different number of tokens: {results}"
    rate = {system: statistics.median(expected / r["seconds"] for r in results) for system, results in runs.items()}
    ratios = [h["seconds"] / e["seconds"] for e, h in zip(runs["engine"], runs["hf"])]
    step = statistics.median(r["step_s"] for r in runs["engine"])
    bound = step_bytes(size, parameters, args) / bandwidth
    compute = step_flops(size, parameters, args) / flop_rate
    return {"parameters": parameters, "rate": rate, "ratio": statistics.median(ratios), "ratios": ratios, "step_ms": step * 1e3, "bound_ms": bound * 1e3,
            "bw_fraction": bound / step, "compute_ms": compute * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--slots", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--steps-per-generate", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", choices=["engine", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps((engine_worker if args.worker == "engine" else hf_worker)(args)))
        return
    from benchmarks.results_table import machine_description, report

    bandwidth, flop_rate = copy_bandwidth(), matmul_rate()
    results = {size: measure(size, args, bandwidth, flop_rate) for size in args.sizes}
    rows = "\n".join(
        f"| {size} ({r['parameters'] / 1e6:.0f}M) | {r['rate']['engine']:,.0f} | {r['rate']['hf']:,.0f} | {r['ratio']:.2f} | "
        f"{', '.join(f'{x:.2f}' for x in r['ratios'])} | "
        f"{r['step_ms']:.1f} | {r['bound_ms']:.1f} | {r['bw_fraction']:.2f} | {r['compute_ms']:.1f} |"
        for size, r in results.items()
    )
    body = f"""`python -m benchmarks.rollout_scale --sizes {' '.join(args.sizes)} --rounds {args.rounds}`

{machine_description()}; torch {_torch_version()} with {_torch_threads()} threads. Qwen3 with random weights
(vocab {VOCAB}, tied embeddings, float32), {args.slots} prompts of {args.prompt_len} tokens, {args.new_tokens} new tokens each
(no stop), temperature 1, whole vocabulary. The engine uses {args.slots} slots and {args.steps_per_generate} tokens per generate
call; Hugging Face `generate` gets the same batch. Each system runs in its own process, {args.rounds} rounds alternating
which goes first; medians (other processes share these 2 cores: the per-round ratios show how much that moves them). Decode step: all slots live, attention over all {args.prompt_len + args.new_tokens} columns;
bandwidth bound = (weights + KV cache bytes) / copy bandwidth ({bandwidth / 1e9:.1f} GB/s, numpy copy, read + write);
compute bound = step FLOPs / float32 matmul rate ({flop_rate / 1e9:.0f} GFLOP/s, jitted 2048^3 matmul).

| model | engine tokens/s | hf tokens/s | engine over hf | per round | decode step ms | bandwidth bound ms | bandwidth bound / step | compute bound ms |
|---|---|---|---|---|---|---|---|---|
{rows}
"""
    last = results[args.sizes[-1]]
    report("Rollout engine at scale (issue 13)", body, f"engine_over_hf={last['ratio']:.2f} decode_bw_fraction={last['bw_fraction']:.2f}")


def _torch_version() -> str:
    import torch

    return torch.__version__


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
