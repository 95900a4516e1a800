"""Orca-Math word problems: hub `microsoft/orca-math-word-problems-200k` or a local file.

Rows are `{"question", "answer"}`; the answers are free-text solutions without a `#### N` line.

    prompt = question, answer = the solution text,
    gold   = the last number in the solution (thousands commas removed), "" when it has none

`source`: any spec of `looplm.tasks.datasource`: `"hub"` ->
`datasets.load_dataset("microsoft/orca-math-word-problems-200k", split=split)`, `hub:NAME...`, a
local `.jsonl`, `.json` (array or JSONL), `.parquet` or `.csv` file, a hub-layout or `save_to_disk`
directory (`"local:PATH"` or a bare path); TRL `messages` / `prompt`+`completion` rows are read as
question and answer. Malformed rows are errors naming the file and line/row.

Scoring: `extract_answer` takes the first `#### N` if there is one, else the last number in the
text; `score` = it equals the gold as an exact number (`base.numbers_equal`); examples whose gold
is "" score 0. Simplification: "last number in the solution" is a heuristic for Orca's prose
answers (a final fraction written in LaTeX, say, yields its denominator); it is used for pretraining
text and a rough check, not for headline evaluation.
"""

from __future__ import annotations

import re

from looplm.tasks.base import Example, extract_hash_answer, numbers_equal
from looplm.tasks.conversations import task_rows

TASK = "orca_math"
HUB_NAME = "microsoft/orca-math-word-problems-200k"
REQUIRED = ("question", "answer")
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number written in `text` (commas removed, a trailing comma dropped), or None."""
    found = _NUMBER_RE.findall(text)
    return found[-1].rstrip(",").replace(",", "") if found else None


def load(source: str, split: str = "train", limit: int | None = None) -> list[Example]:
    """Orca-Math examples from any source spec (see the module docstring)."""
    rows = task_rows(source, split, task=TASK, default_hub=(HUB_NAME, None), fields=REQUIRED)
    examples = [Example(prompt=r["question"], answer=r["answer"], gold=last_number(r["answer"]) or "",
                        task=TASK, meta={"source": w}) for r, w in rows]
    return examples if limit is None else examples[:limit]


def extract_answer(text: str) -> str | None:
    """The first `#### N` if present, else the last number in the text."""
    return extract_hash_answer(text) or last_number(text)


def score(completion: str, example: Example) -> dict[str, float]:
    """`score` = the extracted answer equals the gold as an exact number."""
    return {"score": float(numbers_equal(extract_answer(completion), example.gold))}
