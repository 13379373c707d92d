"""Do the fused log-prob Pallas kernels lower for GPU and TPU? Runs on any host (issue 6).

    python -m benchmarks.logprob_lowering

Lowers ``grad(sum(logp) + sum(entropy))`` (and the forward alone) at Qwen3-4B
sizes (N = 8192, D = 2560, V = 151,936, bfloat16) with ``impl="auto"``
resolved for ``cuda`` (the Triton kernels, ``pallas_gpu``) and for ``tpu``
(the Mosaic kernels, ``pallas``). Pallas lowers kernels in Python while the
program is lowered, so this rejects unsupported operations and tile shapes
without the device; compiling the kernels to machine code does need it. The
compiled program's memory analysis is therefore reported only where the host
has that device; elsewhere the compile error says why it is missing.

The last printed line is ``RESULT lowered_cuda=yes|no lowered_tpu=yes|no``.
"""

import argparse

import jax
import jax.numpy as jnp

from benchmarks.results_table import machine_description, report
from pallas_kernels.fused_logprob import resolve_impl, token_logprobs_and_entropy

N, HIDDEN, VOCAB = 8192, 2560, 151_936  # Qwen3-4B, tokens per step in the issue
SECTION = "Fused log-prob kernels: lowering for GPU and TPU (issue 6)"
KERNEL_CALL = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}
MIB = 2**20


def _programs(platform: str) -> dict:
    def forward(h, w, targets):
        return token_logprobs_and_entropy(h, w, targets, backend=platform)

    def loss(h, w, targets):
        logp, entropy = forward(h, w, targets)
        return jnp.sum(logp) + jnp.sum(entropy)

    return {"forward": forward, "forward + backward": jax.grad(loss, argnums=(0, 1))}


def _memory(lowered) -> str:
    try:
        analysis = lowered.compile().memory_analysis()
    except Exception as error:  # noqa: BLE001 - reported, not hidden: any compile failure means no analysis
        return f"not obtainable here ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
    return f"{analysis.temp_size_in_bytes / MIB:,.1f} MiB temp"


def _row(platform: str, name: str, fn, shapes) -> tuple[list[str], bool]:
    try:
        lowered = jax.jit(fn).trace(*shapes).lower(lowering_platforms=(platform,))
    except Exception as error:  # noqa: BLE001 - the failure is the result being reported
        return [platform, name, f"no: {type(error).__name__}: {str(error)[:200]}", "-", "-"], False
    kernels = lowered.as_text().count(KERNEL_CALL[platform])
    return [platform, name, "yes", str(kernels), _memory(lowered)], True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    shapes = (
        jax.ShapeDtypeStruct((N, HIDDEN), jnp.bfloat16),
        jax.ShapeDtypeStruct((HIDDEN, VOCAB), jnp.bfloat16),
        jax.ShapeDtypeStruct((N,), jnp.int32),
    )
    lines = [
        "| platform | program | lowered | kernel calls | compiled memory |",
        "|---|---|---|---|---|",
    ]
    lowered_all = {}
    for platform in KERNEL_CALL:
        lowered_all[platform] = True
        for name, fn in _programs(platform).items():
            cells, ok = _row(platform, f"{name} ({resolve_impl('auto', platform)})", fn, shapes)
            lines.append("| " + " | ".join(cells) + " |")
            lowered_all[platform] &= ok
    verdict = " ".join(f"lowered_{p}={'yes' if ok else 'no'}" for p, ok in lowered_all.items())
    body = "\n".join([
        "Command: `python -m benchmarks.logprob_lowering`",
        "",
        f"Machine: {machine_description()}.",
        "",
        f"Work: `impl=\"auto\"` lowered for each platform at N = {N}, D = {HIDDEN}, V = {VOCAB}, bfloat16. "
        "Kernel calls counts the Pallas kernels in the lowered program (forward: 1; with the backward: the "
        "forward, the dh and the dw kernel). Lowering runs Pallas' Triton and Mosaic lowering in Python, so it "
        "checks the kernels' operations and tile shapes; compiling them (Triton to PTX, Mosaic to TPU code) "
        "needs the device, and so does the compiled memory analysis.",
        "",
        *lines,
        *([
            "",
            "GPU and TPU timings and compiled memory of the Pallas kernels are not yet measured: no GPU or TPU "
            "was available. `python -m benchmarks.logprob_memory` on a GPU adds them (rows `fused (pallas_gpu)` "
            "and `chunked`).",
        ] if jax.default_backend() == "cpu" else []),
        "",
        f"`RESULT {verdict}`",
    ])
    report(SECTION, body, verdict, write=not args.no_write)


if __name__ == "__main__":
    main()
