"""GSM8K: loader (hub `openai/gsm8k`, config `main`, or a local JSONL) and lm-eval-style scoring.

    prompt: the question
    answer: the reference solution, ending in `#### N` (calculator annotations `<<48/2=24>>`
            stripped unless `keep_annotations=True`)
    gold:   N with thousands commas removed (e.g. "1000")

`source`: `"hub"` -> `datasets.load_dataset("openai/gsm8k", "main", split=split)`; otherwise a local
path (`"local:PATH"` or a bare path): a JSONL file of `{"question", "answer"}` rows, or a directory
holding `{split}.jsonl` (the layout of openai/grade-school-math and `../shared/data/gsm8k/`).
A malformed line is an error naming `file:line`; a reference without `#### N` is an error too.

Scoring: `extract_answer` is lm-eval-harness's strict-match regex `#### (\\-?[0-9\\.\\,]+)` (first
match); `score` = that answer equals the gold as an exact number (`$`, commas, a trailing `.`
stripped, `10.0 == 10`, via `fractions.Fraction`), `strict` = lm-eval's string exact match after its
ignore-regexes, `has_answer` = a `#### N` was found.

Simplification: local JSONL is parsed by `base.read_jsonl` (not `datasets`) so errors name lines.
"""

from __future__ import annotations

import re
from pathlib import Path

from looplm.tasks.base import (DataSourceError, Example, extract_hash_answer, hash_answer_scores,
                               hub_rows, load_hub, parse_source, read_jsonl)

TASK = "gsm8k"
HUB_NAME, HUB_CONFIG = "openai/gsm8k", "main"
SPLITS = ("train", "test")
_ANNOTATION_RE = re.compile(r"<<[^<>]*>>")


def strip_annotations(text: str) -> str:
    """Remove GSM8K calculator annotations: `2*3=<<2*3=6>>6` -> `2*3=6`."""
    return _ANNOTATION_RE.sub("", text)


def to_example(row: dict, where: str, keep_annotations: bool = False) -> Example:
    """An `Example` from a `{"question", "answer"}` row; `where` names it in errors."""
    ref = extract_hash_answer(row["answer"])
    if ref is None:
        raise DataSourceError(f"{where}: the answer has no '#### N' final answer")
    answer = row["answer"] if keep_annotations else strip_annotations(row["answer"])
    return Example(prompt=row["question"], answer=answer, gold=ref.replace(",", ""), task=TASK,
                   meta={"source": where})


def _local_file(path: Path, split: str) -> Path:
    return path / f"{split}.jsonl" if path.is_dir() else path


def load(source: str, split: str = "test", keep_annotations: bool = False,
         limit: int | None = None) -> list[Example]:
    """GSM8K examples from the hub or a local JSONL file/directory (see the module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"option 'split' must be one of {SPLITS}, got {split!r}")
    kind, path = parse_source(source)
    if kind == "hub":
        rows = hub_rows(load_hub(HUB_NAME, HUB_CONFIG, split=split, task=TASK),
                        ("question", "answer"), f"{HUB_NAME}[{split}]")
        wheres = [f"{HUB_NAME}[{split}] row {i}" for i in range(len(rows))]
    else:
        file = _local_file(path, split)
        rows = read_jsonl(file, required=("question", "answer"))
        wheres = [f"{file}:{i}" for i in range(1, len(rows) + 1)]
    examples = [to_example(r, w, keep_annotations) for r, w in zip(rows, wheres)]
    return examples if limit is None else examples[:limit]


def extract_answer(text: str) -> str | None:
    """The first `#### N` answer (lm-eval-harness strict regex), raw."""
    return extract_hash_answer(text)


def score(completion: str, example: Example) -> dict[str, float]:
    """`score` (= `numeric`), `strict` (lm-eval exact match), `has_answer`."""
    return hash_answer_scores(completion, example.gold)
