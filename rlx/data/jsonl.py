"""JSONL prompt datasets: one `{"prompt": ..., "answer": ..., "id"?: ..., "media"?: ...}` object per line.

`media` maps a modality to a list of file paths, relative to the JSONL file's folder:
`{"image": ["imgs/0.png"]}`; they are resolved here and read later by `rlx.data.media`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

from rlx.data.records import PromptRecord
from rlx.errors import MissingInputError, UserError

log = logging.getLogger(__name__)


class BadRowError(UserError):
    """A dataset row cannot become a PromptRecord; the message names file and line."""


def read_jsonl(path: str | Path, on_bad_row: Literal["skip", "error"] = "skip") -> tuple[list[PromptRecord], int]:
    """Returns the records and the number of malformed rows skipped (each is logged with its line)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"dataset file not found: {path}; check data.train_path / data.val_path")
    records: list[PromptRecord] = []
    skipped = 0
    with path.open("rb") as handle:  # decoded per line, so one undecodable row is skipped, not the file
        for line_number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                line = _decode(raw)
                records.append(_parse_row(line, default_id=f"{path.stem}-{line_number}", folder=path.parent))
            except (ValueError, TypeError) as err:
                message = f"{path}:{line_number}: {err}"
                if on_bad_row == "error":
                    raise BadRowError(message + " (set data.on_bad_row=skip to skip such rows)") from None
                log.warning("skipping malformed row %s", message)
                skipped += 1
    return records, skipped


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 text (byte {err.start}: {raw[err.start:err.start + 1]!r})") from None


def _parse_row(line: str, default_id: str, folder: Path) -> PromptRecord:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    missing = [key for key in ("prompt", "answer") if key not in row]
    if missing:
        raise ValueError(f"missing field(s) {missing}; a row needs 'prompt' and 'answer'")
    answer = row["answer"]
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    media = _parse_media(row.get("media", {}), folder)
    return PromptRecord(id=str(row.get("id", default_id)), prompt=row["prompt"], answer=answer, media=media)


def _parse_media(media: object, folder: Path) -> dict[str, tuple[str, ...]]:
    if not isinstance(media, dict) or not all(isinstance(v, list) and all(isinstance(p, str) for p in v) for v in media.values()):
        raise ValueError('"media" must map a modality to a list of file paths, e.g. {"image": ["imgs/0.png"]}')
    return {name: tuple(str(folder / item) for item in items) for name, items in media.items()}
