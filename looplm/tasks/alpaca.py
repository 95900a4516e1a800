"""Alpaca-format instruction data: hub `yahma/alpaca-cleaned` or a local JSON array / JSONL.

Rows are `{"instruction", "input", "output"}` (`input` may be empty or absent). Prompt template:

    prompt = instruction                                   when input is empty
    prompt = instruction + "\\n\\nInput:\\n" + input          otherwise
    answer = gold = output

`source`: any spec of `looplm.tasks.datasource`: `"hub"` -> `datasets.load_dataset(
"yahma/alpaca-cleaned", split=split)`, `hub:NAME...`, or a local path (`"local:PATH"` or a bare
path): a `.json` array (e.g. `../shared/data/alpaca/alpaca_en_demo.json`), a `.jsonl`, `.parquet`
or `.csv` file, a hub-layout or `save_to_disk` directory. TRL rows (`messages` [user, assistant] or
`prompt` + `completion`) are read as instruction = the user turn, output = the assistant turn.
Malformed rows are errors naming the file and line/row. Chat is evaluated by response loss in `eval`; `score` here is a bag-of-words
token F1 against the reference output (`base.token_f1`), key `"score"`, a cheap generation check.
"""

from __future__ import annotations

from looplm.tasks.base import DataSourceError, Example, token_f1
from looplm.tasks.conversations import task_rows

TASK = "alpaca"
HUB_NAME = "yahma/alpaca-cleaned"
REQUIRED = ("instruction", "output")


def format_prompt(instruction: str, input_text: str = "") -> str:
    """The prompt text for an instruction and optional input (see the module docstring)."""
    instruction = instruction.strip()
    return f"{instruction}\n\nInput:\n{input_text.strip()}" if input_text.strip() else instruction


def to_example(row: dict, where: str) -> Example:
    inp = row.get("input", "")
    if inp is None:
        inp = ""
    if not isinstance(inp, str):
        raise DataSourceError(f"{where}: field 'input' must be a string, got {type(inp).__name__}")
    if not row["instruction"].strip() or not row["output"].strip():
        raise DataSourceError(f"{where}: empty 'instruction' or 'output'")
    return Example(prompt=format_prompt(row["instruction"], inp), answer=row["output"],
                   gold=row["output"], task=TASK, meta={"source": where})


def load(source: str, split: str = "train", limit: int | None = None) -> list[Example]:
    """Alpaca examples from any source spec (see the module docstring)."""
    rows = task_rows(source, split, task=TASK, default_hub=(HUB_NAME, None), fields=REQUIRED)
    examples = [to_example(r, w) for r, w in rows]
    return examples if limit is None else examples[:limit]


def extract_answer(text: str) -> str | None:
    """The response text itself (stripped); None when empty."""
    return text.strip() or None


def score(completion: str, example: Example) -> dict[str, float]:
    """`score` = token F1 of the completion against the reference output."""
    return {"score": token_f1(completion, example.gold)}
