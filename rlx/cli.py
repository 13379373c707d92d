"""`rlx train | eval | export | serve | plan | warmstart | scale`: one command beside the `python -m` forms.

Each subcommand hands its arguments to the module's own `main` (`rlx train ...` is
`python -m rlx.launch ...`, `rlx plan ...` is `python -m rlx.launch --dry-run ...`).
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import sys

COMMANDS = {
    "train": ("rlx.launch", "train a run: rlx train --config configs/demo.yaml [section.key=value ...]"),
    "eval": ("rlx.eval", "sampled evaluation of a run's checkpoint: rlx eval --run runs/demo [--samples 8] (pass@k, eval.json)"),
    "export": ("rlx.export", "export a run's policy as a Hugging Face checkpoint"),
    "serve": ("rlx.serve", "serve a run's policy over JetStream's gRPC protocol: rlx serve --config configs/demo.yaml"),
    "plan": ("rlx.launch", "compile a config on abstract arrays over a simulated mesh and print the plan: rlx plan --config ..."),
    "warmstart": ("rlx.warmstart", "rebuild a config's stored warm-up weights: rlx warmstart --config configs/demo.yaml"),
    "scale": ("rlx.scale", "add or remove generator processes of a live run: rlx scale --run runs/demo --generators 2"),
}


def config_sections() -> list[tuple[str, str]]:
    """(section, first sentence of its dataclass's docstring) for every section of the run config."""
    from rlx.config import Config

    sections = []
    for field in dataclasses.fields(Config):
        doc = (field.type if isinstance(field.type, type) else type(field.default)).__doc__ or ""
        generated = doc.startswith(f"{type(field.default).__name__}(")  # dataclasses' own signature text
        summary = "" if generated else " ".join(doc.split())
        first = re.split(r"(?<!\bal)\.(?:\s|$)", summary)[0]
        sections.append((field.name, first if len(first) <= 100 else first[:97] + "..."))
    return sections


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: rlx COMMAND [ARGS ...]   (rlx COMMAND --help for its arguments)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "config sections (YAML sections, or section.key=value overrides):"]
    sections = config_sections()
    width = max(len(name) for name, _ in sections)
    lines += [f"  {name:<{width}}  {summary}" for name, summary in sections]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"rlx: unknown command {command!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    if command == "plan":
        rest.append("--dry-run")
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
