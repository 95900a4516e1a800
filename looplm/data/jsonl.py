"""JSONL reading/writing with exact error locations, and train/eval overlap detection.

- `iter_jsonl(path, required)` streams rows; `read_jsonl` returns them as a list (both defined in
  `looplm.tasks.datasource`, the one JSONL reader). A malformed line, a line that is not UTF-8, a
  non-object row, a missing or non-string required field, or a blank line before the end of the
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
from typing import Any, Iterable

from looplm.tasks.datasource import DataFormatError, iter_jsonl, read_jsonl  # noqa: F401 - re-exported


def text_hash(text: str) -> bytes:
    """16-byte sha256 prefix of a text: the identity used for overlap and duplicate checks."""
    return hashlib.sha256(text.encode("utf-8")).digest()[:16]


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
