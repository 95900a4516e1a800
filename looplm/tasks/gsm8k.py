"""GSM8K: loader (hub `openai/gsm8k`, config `main`, or any local source) and lm-eval-style scoring.

    prompt: the question
    answer: the reference solution, ending in `#### N` (calculator annotations `<<48/2=24>>`
            stripped unless `keep_annotations=True`)
    gold:   N with thousands commas removed (e.g. "1000")

`source`: any spec of `looplm.tasks.datasource`: `"hub"` -> `datasets.load_dataset("openai/gsm8k",
"main", split=split)`, `hub:NAME[:CONFIG][@SPLIT]`, or a local path (`"local:PATH"` or a bare path):
a JSONL / JSON / parquet / CSV file of `{"question", "answer"}` rows (or TRL `messages` /
`prompt`+`completion` rows), a directory holding `{split}.jsonl` (the layout of
openai/grade-school-math and `../shared/data/gsm8k/`) or the hub's `main/{split}-*.parquet`, or a
`save_to_disk` directory. A malformed line is an error naming `file:line`; a reference without
`#### N` is an error too.

Scoring: `extract_answer` is lm-eval-harness's strict-match regex `#### (\\-?[0-9\\.\\,]+)` (first
match); `score` = that answer equals the gold as an exact number (`$`, commas, a trailing `.`
stripped, `10.0 == 10`, via `fractions.Fraction`), `strict` = lm-eval's string exact match after its
ignore-regexes, `has_answer` = a `#### N` was found.

Simplification: a single file is read whole whatever `split` says (only directories and hub datasets
have splits).
"""

from __future__ import annotations

import re

from looplm.tasks.base import DataSourceError, Example, extract_hash_answer, hash_answer_scores
from looplm.tasks.conversations import task_rows

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


def load(source: str, split: str = "test", keep_annotations: bool = False,
         limit: int | None = None) -> list[Example]:
    """GSM8K examples from any source spec (see the module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"option 'split' must be one of {SPLITS}, got {split!r}")
    examples = [to_example(r, w, keep_annotations) for r, w in task_rows(
        source, split, task=TASK, default_hub=(HUB_NAME, HUB_CONFIG), fields=("question", "answer"))]
    return examples if limit is None else examples[:limit]


def extract_answer(text: str) -> str | None:
    """The first `#### N` answer (lm-eval-harness strict regex), raw."""
    return extract_hash_answer(text)


def score(completion: str, example: Example) -> dict[str, float]:
    """`score` (= `numeric`), `strict` (lm-eval exact match), `has_answer`."""
    return hash_answer_scores(completion, example.gold)
