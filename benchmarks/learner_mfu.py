"""Model FLOPs utilisation of the learner update (issue 12).

    python -m benchmarks.learner_mfu [--reps 5]

Times the compiled update program the run executes (`Learner.programs.update`: forward, backward,
AdamW) on one device, at the demo model's size and at a ~20M-parameter Qwen3, and divides the
model FLOPs it does by the peak float32 matmul FLOP/s of the same device measured in the same run
(a jitted [2048, 2048] x [2048, 2048] matmul, best of 3 back-to-back calls, measured before each update run).

Model FLOPs per update (the usual MFU convention: recomputation is overhead, not work):
6 x (non-unembedding parameters x all tokens + unembedding parameters x response tokens, the only
ones the loss reads logits of) + attention, 12 x layers x heads x head_dim x length per token
(PaLM's count, Chowdhery et al. 2022: QK^T and PV, forward and backward, over the whole row, which
the chunked attention computes, masked blocks included).

Update times and peaks are medians of `--reps` runs after a warm-up, alternating so that load from
other processes hits both alike. The last line is `RESULT learner_mfu=X` for the
~20M model.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.results_table import machine_description, report
from rlx.algorithms import AlgorithmConfig
from rlx.data import CharTokenizer
from rlx.data.arithmetic import ALPHABET
from rlx.learner import Learner, OptimizerConfig, TrainBatch
from rlx.models import ModelConfig, Qwen3

SECTION = "Learner MFU (issue 12)"
PEAK_SIZE = 2048


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    model: ModelConfig
    rows: int
    prompt: int
    response: int


DEMO_VOCAB = CharTokenizer(ALPHABET).vocab_size  # configs/demo.yaml's tokenizer

CASES = (
    Case("demo (configs/demo.yaml)", ModelConfig(vocab_size=DEMO_VOCAB, hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4,
                                                 num_kv_heads=2, head_dim=32, max_seq_len=32), rows=256, prompt=10, response=6),
    Case("Qwen3 ~20M", ModelConfig(vocab_size=4096, hidden_size=512, intermediate_size=1536, num_layers=6, num_heads=8, num_kv_heads=4,
                                   head_dim=64, max_seq_len=512), rows=16, prompt=32, response=224),
)


def peak_matmul_flops() -> float:
    """FLOP/s of one large float32 matmul (the best of a few)."""
    a = jax.random.normal(jax.random.key(0), (PEAK_SIZE, PEAK_SIZE), jnp.float32)
    matmul = jax.jit(lambda a, b: a @ b)
    matmul(a, a).block_until_ready()
    best = min(_seconds(lambda: matmul(a, a).block_until_ready()) for _ in range(3))
    return 2 * PEAK_SIZE**3 / best


def _seconds(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def _batch(case: Case) -> TrainBatch:
    rng = np.random.default_rng(0)
    rows, width = case.rows, case.prompt + case.response
    return TrainBatch(
        tokens=rng.integers(3, case.model.vocab_size, (rows, width)).astype(np.int32), start=np.zeros(rows, np.int32),
        mask=np.ones((rows, case.response), np.float32), rewards=rng.integers(0, 2, rows).astype(np.float32),
        group_ids=np.repeat(np.arange(rows // 2), 2).astype(np.int32), behaviour_log_probs=np.full((rows, case.response), -1.0, np.float32),
        staleness=np.zeros((rows, case.response), np.float32))


def model_flops(case: Case, parameters: int) -> float:
    m = case.model
    unembedding = m.hidden_size * m.vocab_size
    tokens, response_tokens, length = case.rows * (case.prompt + case.response - 1), case.rows * case.response, case.prompt + case.response - 1
    attention = 12 * m.num_layers * m.num_heads * m.head_dim * length * tokens
    return 6 * ((parameters - unembedding) * tokens + unembedding * response_tokens) + attention


def measure(case: Case, reps: int) -> dict:
    graphdef, params = nnx.split(Qwen3(case.model, rngs=nnx.Rngs(0)))
    parameters = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    learner = Learner(graphdef, params, AlgorithmConfig(), OptimizerConfig(learning_rate=1e-5), 1.0)
    batch = learner.layout.feed(_batch(case))
    old = learner.programs.log_probs(learner.params, batch).log_probs
    targets, _, _ = learner.programs.prepare(batch, old, None, None, jnp.zeros_like(old))
    state = [learner.params, learner.opt_state]

    def update():
        state[0], state[1], metrics = learner.programs.update(state[0], state[1], batch, targets)
        jax.block_until_ready(metrics)

    update()  # compile
    times, peaks = [], []
    for _ in range(reps):
        peaks.append(peak_matmul_flops())
        times.append(_seconds(update))
    flops = model_flops(case, parameters)
    seconds, peak = statistics.median(times), statistics.median(peaks)
    return {"parameters": parameters, "tokens": case.rows * (case.prompt + case.response), "flops": flops, "seconds": seconds,
            "achieved": flops / seconds, "peak": peak, "mfu": flops / seconds / peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    results = {case.name: (case, measure(case, args.reps)) for case in CASES}
    rows = ["| model | parameters | rows x tokens | model GFLOP per update | median update s | achieved GFLOP/s | peak f32 matmul GFLOP/s | MFU |",
            "|---|---|---|---|---|---|---|---|"]
    for name, (case, r) in results.items():
        rows.append(f"| {name} | {r['parameters']:,} | {case.rows} x {case.prompt + case.response} | {r['flops'] / 1e9:.1f} | "
                    f"{r['seconds']:.3f} | {r['achieved'] / 1e9:.1f} | {r['peak'] / 1e9:.1f} | {r['mfu']:.2f} |")
    body = "\n".join([
        f"Command: `python -m benchmarks.learner_mfu --reps {args.reps}`", "",
        f"Machine: {machine_description()}; shared with other jobs while measured.", "",
        "Work: the learner's compiled update program (`Learner.programs.update`: forward, backward and AdamW, one optimizer "
        "step, no micro-batching, float32, attention `auto` = chunked, fused log-prob `auto` = chunked) on one device. Model "
        "FLOPs = 6 x (parameters outside the unembedding x all tokens + unembedding parameters x response tokens) + PaLM's "
        "attention count 12 x layers x heads x head_dim x length per token; recomputation (the fused log-prob's and "
        "attention's backward passes recompute their blocks) is not counted as work. Peak: a jitted 2048^3 float32 matmul (best of 3 "
        "back-to-back calls) before each update run; MFU = median achieved / median peak.", "",
        *rows,
    ])
    report(SECTION, body, f"learner_mfu={results[CASES[-1].name][1]['mfu']:.2f}")


if __name__ == "__main__":
    main()
