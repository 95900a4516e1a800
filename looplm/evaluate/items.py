"""Eval tasks: which items each one uses and how their prompts are written.

| eval task | items (always held out) | prompt format (`auto`) | scored by |
|---|---|---|---|
| `dfs-verbal` | `dfs_verbal.generate(n, seed, split="eval")` (4-8 nodes, as SFT) | chat | `dfs_verbal.score` |
| `clrs-dfs` | `clrs_dfs.generate(n, seed, split="eval")` (n in {4, 5}) | raw | `clrs_dfs.score` |
| `arith` | `arith.generate(n, seed, split="eval")` | chat | `arith.score` |
| `word-problems` | `word_problems.generate(n, seed, split="eval")` | chat | `word_problems.score` |
| `gsm8k` | first `n` rows of the GSM8K **test** split (`--gsm8k PATH|hub`) | chat | `gsm8k.score` |
| `chat` | first `n` Alpaca rows whose prompt hashes into the eval split (`base.in_split`) | chat | response loss |

Prompt formats, chosen to match how each domain is trained:
- `chat`: `tokenizer.chat_prompt(prompt)` = `"<|user|>\\n{prompt}\\n<|assistant|>\\n"`, encoded on its
  own, exactly the prompt half of `tokenizer.encode_chat(prompt, response)` that SFT trains on
  (`looplm.data.sft` writes `{"prompt": example.prompt, "response": example.answer}` rows). The model
  should answer and stop with `<|eos|>`.
- `raw`: the pre-training document text: `<|eos|>` (the separator that precedes every document in
  the packed pre-training stream) then the question as in `looplm.data.sources.join_qa`
  (`prompt + "\\n"` unless it already ends with one). CLRS-Text is only ever trained this way
  (pre-training and SFT replay rows, which skip the chat template), so `auto` uses it for `clrs-dfs`.
`--format chat|raw` forces one format for every task (e.g. `raw` for a pre-trained-only model).

Generation budget: by default a task's `max_new_tokens` is the token length of its longest reference
answer (+ EOS) plus `ANSWER_SLACK`, and never more than the context leaves after the prompt.

Held out: generated items by the tasks' hash split, GSM8K by being the test split, Alpaca rows by the
same hash split applied to their prompt; the chat rows are only truly held out if the SFT set skipped
them, which `--exclude SFT.jsonl` checks (any overlap is an error naming the file).

Simplification: GSM8K and chat take the first `n` eligible rows in file order (no sampling).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from looplm.tasks import get_task
from looplm.tasks.base import DataSourceError, Example, in_split

# eval task name -> task module name in looplm.tasks
EVAL_TASKS: dict[str, str] = {
    "dfs-verbal": "dfs_verbal",
    "clrs-dfs": "clrs_dfs",
    "arith": "arith",
    "word-problems": "word_problems",
    "gsm8k": "gsm8k",
    "chat": "alpaca",
}
GENERATED = ("dfs-verbal", "clrs-dfs", "arith", "word-problems")
DEFAULT_TASKS: tuple[str, ...] = GENERATED
RAW_BY_DEFAULT = ("clrs-dfs",)
FORMATS = ("auto", "chat", "raw")
ANSWER_SLACK = 16  # extra new tokens allowed beyond the longest reference answer


def canonical_task(name: str) -> str:
    """`dfs_verbal` / `dfs-verbal` -> `dfs-verbal`; an unknown name lists the valid ones."""
    key = name.strip().replace("_", "-")
    if key not in EVAL_TASKS:
        raise ValueError(f"unknown eval task {name!r}; valid tasks: {', '.join(EVAL_TASKS)}")
    return key


def prompt_format(task: str, fmt: str) -> str:
    """`chat` or `raw` for `task` under the `--format` choice `fmt` (`auto` = per the table above)."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} must be one of {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    return "raw" if task in RAW_BY_DEFAULT else "chat"


def format_prompt(tokenizer: Any, example: Example, fmt: str) -> tuple[str, list[int]]:
    """(prompt text, prompt ids) of an example in format `chat` or `raw` (see the module docstring)."""
    if fmt == "chat":
        text = tokenizer.chat_prompt(example.prompt)
        return text, tokenizer.encode(text)
    text = example.prompt if example.prompt.endswith("\n") else example.prompt + "\n"
    return text, [tokenizer.eos_id] + tokenizer.encode(text)


@dataclass
class TaskItems:
    """The held-out items of one eval task and where they came from."""

    task: str
    examples: list[Example]
    source: str
    notes: dict[str, Any] = field(default_factory=dict)


def load_items(task: str, n: int, seed: int, gsm8k: str | None = None, alpaca: str | None = None) -> TaskItems:
    """`n` held-out items of eval task `task` (see the module docstring); errors name the file/line."""
    module = get_task(EVAL_TASKS[task])
    if task in GENERATED:
        return TaskItems(task, module.generate(n, seed=seed, split="eval"),
                         f"generated (seed {seed}, split eval)")
    if task == "gsm8k":
        if not gsm8k:
            raise ValueError("task gsm8k needs a source: --gsm8k PATH (a JSONL file or a directory holding "
                             "test.jsonl, e.g. ../shared/data/gsm8k) or --gsm8k hub")
        rows = _load(module, "gsm8k", gsm8k, "--gsm8k PATH (e.g. ../shared/data/gsm8k)", split="test")
        return TaskItems(task, _take(rows, n, f"gsm8k test ({gsm8k})"), f"{gsm8k} (test split)",
                         {"available": len(rows)})
    if not alpaca:
        raise ValueError("task chat needs Alpaca-format pairs: --alpaca PATH (e.g. "
                         "../shared/data/alpaca/alpaca_en_demo.json) or --alpaca hub")
    rows = _load(module, "alpaca", alpaca, "--alpaca PATH (e.g. ../shared/data/alpaca/alpaca_en_demo.json)")
    held = [e for e in rows if in_split(e.prompt, "eval")]
    return TaskItems(task, _take(held, n, f"alpaca held-out rows ({alpaca})"),
                     f"{alpaca} (rows whose prompt hashes into the eval split)",
                     {"available": len(rows), "held_out": len(held)})


def _load(module: Any, task: str, source: str, flag: str, **kw: Any) -> list[Example]:
    """`module.load(source, **kw)`; a failed hub load names the eval option that takes a local copy."""
    try:
        return module.load(source, **kw)
    except DataSourceError as e:
        if source != "hub":
            raise  # local errors already name the file (and line)
        from looplm.data.sft import hub_failure

        raise DataSourceError(hub_failure(task, e, f"pass a local copy with {flag}")) from e


def _take(rows: list[Example], n: int, label: str) -> list[Example]:
    if n > len(rows):
        raise DataSourceError(f"{label}: asked for n={n} items but only {len(rows)} are available; "
                              f"pass a smaller --n")
    return rows[:n]


def answer_budget(tokenizer: Any, examples: list[Example]) -> int:
    """Default max_new_tokens of a task: longest reference answer in tokens (+ EOS) + ANSWER_SLACK."""
    return max(len(tokenizer.encode(e.answer)) + 1 for e in examples) + ANSWER_SLACK


def check_overlap_with(items: list[Example], exclude_rows: list[dict[str, Any]], path: str) -> None:
    """Error if any eval prompt also occurs (exact text) in the `prompt` field of an excluded file."""
    seen = {r["prompt"] for r in exclude_rows}
    hits = [e.prompt for e in items if e.prompt in seen]
    if hits:
        raise DataSourceError(f"{len(hits)} eval items also occur in {path} (first: {hits[0][:80]!r}): "
                              f"they are not held out")
