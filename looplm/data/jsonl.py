"""JSONL reading/writing with exact error locations, and train/eval overlap detection.

- `iter_jsonl(path, required)` streams rows; `read_jsonl` returns them as a list. A malformed line,
  a non-object row, a missing or non-string required field, or a blank line before the end of the
  file is a `DataFormatError` naming `file:line`. Nothing is skipped.
- `write_jsonl(path, rows)` writes atomically (temp file + rename) and returns the row count.
- `check_overlap(train_rows, eval_rows, key)` returns the indices of train rows whose `key` text also
  occurs in the eval rows (compared by sha256 of the text, so memory stays small).

Simplification: comparison is exact text equality (no whitespace or case normalisation).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from looplm.tasks.base import DataSourceError


class DataFormatError(DataSourceError):
    """A data file is malformed; the message names the file and line."""


def text_hash(text: str) -> bytes:
    """16-byte sha256 prefix of a text: the identity used for overlap and duplicate checks."""
    return hashlib.sha256(text.encode("utf-8")).digest()[:16]


def _check_row(row: Any, required: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [k for k in required if k not in row]
    if missing:
        raise DataFormatError(f"{where}: missing field(s) {', '.join(missing)} "
                              f"(required: {', '.join(required)})")
    bad = [k for k in required if not isinstance(row[k], str)]
    if bad:
        raise DataFormatError(f"{where}: field(s) {', '.join(bad)} must be strings")
    return row


def iter_jsonl(path: str | Path, required: Iterable[str] = ()) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file, streamed. Trailing blank lines are allowed; any other blank line is an
    error, as is malformed JSON or a missing/non-string required field."""
    path = Path(path)
    required = tuple(required)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")
    blank_at = 0
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                blank_at = blank_at or lineno
                continue
            if blank_at:
                raise DataFormatError(f"{path}:{blank_at}: blank line inside the file")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
            yield _check_row(row, required, f"{path}:{lineno}")


def read_jsonl(path: str | Path, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """All rows of a JSONL file (see `iter_jsonl` for the checks)."""
    return list(iter_jsonl(path, required))


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSONL (UTF-8, one compact object per line) atomically; returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def write_json(path: str | Path, obj: Any) -> None:
    """Pretty JSON, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _key_text(row: Any, key: str, where: str) -> str:
    value = row.get(key) if isinstance(row, dict) else getattr(row, key, None)
    if not isinstance(value, str):
        raise DataFormatError(f"{where}: no string field {key!r} to compare")
    return value


def check_overlap(train_rows: Iterable[Any], eval_rows: Iterable[Any], key: str = "prompt") -> list[int]:
    """Indices (ascending) of train rows whose `key` equals some eval row's `key`; empty = disjoint.
    Rows may be dicts or objects with that attribute (e.g. `Example`)."""
    seen = {text_hash(_key_text(r, key, f"eval row {i}")) for i, r in enumerate(eval_rows)}
    return [i for i, r in enumerate(train_rows) if text_hash(_key_text(r, key, f"train row {i}")) in seen]


def count_duplicates(rows: Iterable[Any], key: str = "prompt") -> int:
    """Number of rows whose `key` repeats an earlier row's (0 = all distinct)."""
    seen: set[bytes] = set()
    dup = 0
    for i, r in enumerate(rows):
        h = text_hash(_key_text(r, key, f"row {i}"))
        dup += h in seen
        seen.add(h)
    return dup
