"""Memory and time of per-token log-prob + entropy, forward and backward (issue 6).

    python -m benchmarks.logprob_memory               # CPU: N = 1024, float32
    python -m benchmarks.logprob_memory --n 8192      # accelerator: Qwen3-4B N

Measures ``grad(sum(logp) + sum(entropy))`` with respect to ``h [N, D]`` and
``w [D, V]`` at Qwen3-4B sizes (D = 2560, V = 151,936) for:

* naive: full float32 logits + ``log_softmax`` (``impl="reference"``), the
  backward from plain autodiff;
* fused: what ``impl="auto"`` resolves to on this backend: the Pallas kernels
  compiled for it on GPU (``pallas_gpu``, Triton) and TPU (``pallas``, Mosaic),
  the chunked XLA scan on CPU;
* chunked: on GPU and TPU also the chunked scan, for comparison;
* Pallas on CPU: only the interpreter runs the kernels, whose loop over grid
  steps is orders of magnitude slower than a compiled kernel and pads its
  inputs, so neither its time nor its memory says anything about the kernel:
  the row is listed as not measured (``benchmarks.logprob_lowering`` checks
  that the kernels lower for GPU and TPU).

Memory is XLA's compiled temporary allocation
(``memory_analysis().temp_size_in_bytes``: buffers besides arguments and
outputs). Times are medians of ``--reps`` runs after one warm-up, with the
implementations alternating so that load from other processes hits all alike.
The last printed line is
``RESULT naive_temp_over_fused=X.X fused_time_over_naive=Y.YY``.
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.results_table import machine_description, report
from pallas_kernels.fused_logprob import resolve_impl, token_logprobs_and_entropy

HIDDEN, VOCAB = 2560, 151_936  # Qwen3-4B
FULL_N = 8192  # Qwen3-4B tokens per step in the issue
SECTION = "Fused log-prob memory (issue 6)"
MIB = 2**20
PALLAS_NOTES = {
    "cpu": "Pallas: n/a. On CPU the kernels (`pallas` for TPU, `pallas_gpu` for GPU) only run in the Pallas "
    "interpreter, a loop over grid steps that pads its inputs, so its time and memory describe the "
    "interpreter, not the kernels. No GPU or TPU was available for this run: accelerator figures were not "
    "measured (`python -m benchmarks.logprob_lowering` checks that the kernels lower for both).",
}


def _compile(impl: str, n: int, dtype):
    """``grad(sum(logp) + sum(entropy))`` w.r.t. ``(h, w)``, compiled for N = n."""

    def loss(h, w, targets):
        logp, entropy = token_logprobs_and_entropy(h, w, targets, impl=impl)
        return jnp.sum(logp) + jnp.sum(entropy)

    shapes = (
        jax.ShapeDtypeStruct((n, HIDDEN), dtype),
        jax.ShapeDtypeStruct((HIDDEN, VOCAB), dtype),
        jax.ShapeDtypeStruct((n,), jnp.int32),
    )
    return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*shapes).compile()


def _inputs(n: int, dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.standard_normal((n, HIDDEN), np.float32), dtype)
    w = jnp.asarray(rng.standard_normal((HIDDEN, VOCAB), np.float32) / np.sqrt(HIDDEN), dtype)
    return h, w, jnp.asarray(rng.integers(0, VOCAB, n), jnp.int32)


def _median_times(compiled: dict, args, reps: int) -> tuple[dict, dict]:
    """Median seconds per implementation, alternating; also the last grads."""
    grads = {name: jax.block_until_ready(fn(*args)) for name, fn in compiled.items()}  # warm-up
    times = {name: [] for name in compiled}
    for _ in range(reps):
        for name, fn in compiled.items():
            start = time.perf_counter()
            grads[name] = jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, grads


def _max_rel_error(actual, expected) -> float:
    """Largest ``max|a - e| / max|e|`` over the gradient arrays."""
    errors = []
    for a, e in zip(actual, expected):
        a, e = np.asarray(a, np.float32), np.asarray(e, np.float32)
        errors.append(float(np.max(np.abs(a - e)) / np.max(np.abs(e))))
    return max(errors)


def _table(labels, n, temp, full_temp, medians) -> list[str]:
    naive = labels[0]
    full = f" temp at N = {FULL_N}, compile only (MiB) | naive / this |" if full_temp else ""
    lines = [
        f"| implementation | temp at N = {n} (MiB) | naive / this |{full} "
        f"median time at N = {n} (s) | this / naive |",
        "|---" * (5 + 2 * bool(full_temp)) + "|",
    ]
    for label in labels:
        full_cells = (
            f" {full_temp[label] / MIB:,.1f} | {full_temp[naive] / full_temp[label]:.1f}x |" if full_temp else ""
        )
        lines.append(
            f"| {label} | {temp[label] / MIB:,.1f} | {temp[naive] / temp[label]:.1f}x |{full_cells} "
            f"{medians[label]:.2f} | {medians[label] / medians[naive]:.2f} |"
        )
    return lines


def main() -> None:
    backend = jax.default_backend()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1024 if backend == "cpu" else FULL_N, help="tokens per step")
    parser.add_argument("--dtype", default="float32" if backend == "cpu" else "bfloat16", help="dtype of h and w")
    parser.add_argument("--reps", type=int, default=3, help="timed runs per implementation")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    dtype, load = jnp.dtype(args.dtype), os.getloadavg()[0]

    fused = resolve_impl("auto")
    impls = {"naive (reference)": "reference", f"fused ({fused})": fused}
    if fused != "chunked":
        impls["chunked"] = "chunked"
    labels = list(impls)
    compiled = {label: _compile(impl, args.n, dtype) for label, impl in impls.items()}
    temp = {label: c.memory_analysis().temp_size_in_bytes for label, c in compiled.items()}
    full_temp = {} if args.n == FULL_N else {
        label: _compile(impl, FULL_N, dtype).memory_analysis().temp_size_in_bytes for label, impl in impls.items()
    }
    medians, grads = _median_times(compiled, _inputs(args.n, dtype), args.reps)
    errors = ", ".join(f"{label} {_max_rel_error(grads[label], grads[labels[0]]):.1e}" for label in labels[1:])

    x = temp[labels[0]] / temp[labels[1]]
    y = medians[labels[1]] / medians[labels[0]]
    pallas_note = PALLAS_NOTES.get(backend)
    small_n_note = (
        f" Timed at N = {args.n}, not {FULL_N}: {FULL_N} tokens is 8x the matmul work per step, minutes per "
        f"run here, and the naive temporaries alone are {full_temp[labels[0]] / 2**30:.0f} GiB; memory at "
        f"N = {FULL_N} is reported from compilation only."
        if full_temp else ""
    )
    body = "\n".join([
        f"Command: `python -m benchmarks.logprob_memory --n {args.n} --dtype {args.dtype} --reps {args.reps}`",
        "",
        f"Machine: {machine_description()}; 1-minute load average {load:.1f} at the start (the machine is "
        "shared, so absolute times are inflated; alternating the implementations keeps their ratio fair).",
        "",
        f"Work: gradients of sum(logp) + sum(entropy) w.r.t. h [N, {HIDDEN}] and w [{HIDDEN}, {VOCAB}] in "
        f"{args.dtype}.{small_n_note} Memory is XLA's compiled `temp_size_in_bytes`; time is the median of "
        f"{args.reps} runs after a warm-up.",
        "",
        *_table(labels, args.n, temp, full_temp, medians),
        *(["| Pallas kernels |" + " n/a |" * (4 + 2 * bool(full_temp))] if pallas_note else []),
        "",
        f"Gradients agree with the naive ones to a max relative error of: {errors}.",
        "",
        *([pallas_note, ""] if pallas_note else []),
        f"`RESULT naive_temp_over_fused={x:.1f} fused_time_over_naive={y:.2f}` (at N = {args.n})",
    ])
    report(SECTION, body, f"naive_temp_over_fused={x:.1f} fused_time_over_naive={y:.2f}", write=not args.no_write)


if __name__ == "__main__":
    main()
