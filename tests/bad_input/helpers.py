"""Shared by the bad-input suite: how a command is run in-process, what a clean failure looks like, small data files,
and the plug-ins the cases name by dotted path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.conftest import tiny_overrides

NOT_CALLABLE = 42
GOOD_ROWS = [json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) for i in range(8)]


def raising_reward(response, record):
    raise RuntimeError("reward plug-in is broken")


def raising_hook(step, metrics):
    raise RuntimeError("hook is broken")


def base(tmp_path: Path) -> list[str]:
    return ["--config", "configs/demo.yaml", *tiny_overrides(tmp_path / "run")]


def run_command(main, argv, capsys) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def assert_clean_failure(code: int, output: str, expected_code: int, message: str) -> None:
    assert code == expected_code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert message in output, output[-3000:]


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"non-finite JSON token {constant}")
    return json.loads(text, parse_constant=refuse)


def assert_outputs_valid(out: Path) -> None:
    """metrics.jsonl and rollouts.jsonl (where written) hold strict JSON with finite numbers only."""
    for name in ("metrics.jsonl", "rollouts.jsonl"):
        path = out / name
        if path.exists():
            for line in path.read_text().splitlines():
                row = strict_json(line)
                assert all(not isinstance(v, float) or np.isfinite(v) for v in row.values())


def write_jsonl(path: Path, rows: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(rows) + b"\n")
    return path


def jsonl_overrides(train: Path, val: Path) -> list[str]:
    return ["data.source=jsonl", f"data.train_path={train}", f"data.val_path={val}", "data.prompts_per_step=4"]

