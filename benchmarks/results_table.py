"""Write benchmark results into ``benchmarks/RESULTS.md``, one ``##`` section each.

Every benchmark owns one section, named by its title; rewriting it leaves the
other sections exactly as they were.
"""

import os
import platform
from pathlib import Path

import jax

RESULTS_PATH = Path(__file__).with_name("RESULTS.md")
_HEADER = (
    "# Benchmark results\n\n"
    "Each section is written by the benchmark it names; rerun that benchmark to refresh it.\n"
)


def _section_bounds(lines: list[str], heading: str) -> tuple[int, int] | None:
    """Line range ``[start, end)`` of the section under ``heading``, if present.

    A section ends at the next ``## `` heading outside a fenced code block.
    """
    start, in_fence = None, False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            in_fence = not in_fence
        if in_fence or not line.startswith("## "):
            continue
        if start is not None:
            return start, i
        if line.rstrip() == heading:
            start = i
    return None if start is None else (start, len(lines))


def write_section(title: str, body_markdown: str, path: Path = RESULTS_PATH) -> None:
    """Replace the ``## {title}`` section of ``path`` with ``body_markdown``,
    or append it; the file is created if missing."""
    heading = f"## {title}"
    text = path.read_text() if path.exists() else _HEADER
    lines = text.splitlines()
    section = [heading, "", *body_markdown.strip("\n").splitlines(), ""]
    bounds = _section_bounds(lines, heading)
    if bounds is None:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += ["", *section]
    else:
        start, end = bounds
        lines[start:end] = section
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


def report(title: str, body_markdown: str, result: str, write: bool = True) -> None:
    """Prints the table, writes it as the ``## {title}`` section (unless ``write`` is false)
    and prints ``RESULT {result}`` as the last line, the form every benchmark ends with."""
    print(body_markdown)
    if write:
        write_section(title, body_markdown)
    print(f"RESULT {result}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> str:
    """One line: CPU model and cores, JAX version, backend and its devices."""
    devices = jax.devices()
    return (
        f"CPU {_cpu_model()} ({os.cpu_count()} cores), jax {jax.__version__}, "
        f"backend {jax.default_backend()} ({len(devices)} x {devices[0].device_kind})"
    )
