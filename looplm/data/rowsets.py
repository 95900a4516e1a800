"""Training rows from any source spec: SFT conversations for `looplm sft`, RL prompt rows for
`looplm grpo`, and a fingerprint of the source for resume checks.

Sources are those of `looplm.tasks.datasource` (a JSONL/JSON/parquet/CSV file, a hub-layout or
`save_to_disk` directory, `hub:NAME[:CONFIG][@SPLIT]`), read at split "train" unless a hub spec
names its split.

- `read_sft_rows(source)`: one `SFTRow(messages, domain, where)` per row. Rows are looplm's
  `{"prompt", "response", "domain"}` (from `looplm data sft`), TRL's `{"messages": [...]}` or
  `{"prompt", "completion"}` (strings or message lists; see `looplm.tasks.conversations`);
  `domain` is optional ("all"). Replay rows (`domain` "replay", pre-training format) must be
  `{prompt, response}` strings.
- `read_rl_rows(source)`: `{"prompt", "answer", "task"}` dicts. `prompt` is a string or a message
  list that is one user turn; `answer` is the gold final answer, or, when absent, the task's
  `extract_answer` of a `completion` (a string or one assistant message, e.g. a GSM8K solution
  ending in `#### N`); `task` is required on every row (the reward depends on it).
- `source_fingerprint(source)`: a file's sha256 (as `shards.file_sha256`), a directory's sha256
  over its files' relative paths and hashes, a hub spec's sha256 over the spec and its rows' JSON.

Every error names the file and line (or row) it comes from.

Simplification: rows are read into memory (SFT and RL sets are thousands of rows, not millions).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from looplm.data.shards import file_sha256
from looplm.tasks.conversations import prompt_text, row_messages
from looplm.tasks.datasource import DataFormatError, iter_rows, parse_spec

REPLAY_DOMAIN = "replay"


@dataclass
class SFTRow:
    messages: list[dict[str, str]]
    domain: str
    where: str


def read_sft_rows(source: str) -> list[SFTRow]:
    """The rows of an SFT source (see the module docstring); an empty source is an error."""
    out = []
    for row, where in iter_rows(source, "train"):
        domain = row.get("domain", "all")
        if not isinstance(domain, str):
            raise DataFormatError(f"{where}: field 'domain' must be a string")
        if domain == REPLAY_DOMAIN and not (isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str)):
            raise DataFormatError(f"{where}: a replay row is {{prompt, response}} strings (pre-training format)")
        out.append(SFTRow(row_messages(row, where), domain, where))
    if not out:
        raise DataFormatError(f"{source}: no rows")
    return out


def _completion_text(value: object, where: str) -> str:
    if isinstance(value, str):
        return value
    if (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)
            and value[0].get("role") == "assistant" and isinstance(value[0].get("content"), str)):
        return value[0]["content"]
    raise DataFormatError(f"{where}: 'completion' must be a string or one assistant message")


def read_rl_rows(source: str) -> list[dict[str, str]]:
    """`{prompt, answer, task}` rows of an RL prompt source (see the module docstring)."""
    from looplm.tasks import get_task

    out = []
    for row, where in iter_rows(source, "train"):
        if not isinstance(row.get("task"), str):
            raise DataFormatError(f"{where}: missing string field 'task' (the task whose reward scores the row, "
                                  f"e.g. gsm8k; `looplm data rl --task T --source S` writes it)")
        if "prompt" not in row:
            raise DataFormatError(f"{where}: missing field(s) prompt (an RL row is {{prompt, answer, task}} or "
                                  f"{{prompt, completion, task}})")
        prompt = prompt_text(row["prompt"], where)
        if isinstance(row.get("answer"), str):
            answer = row["answer"]
        elif "completion" in row:
            try:
                task = get_task(row["task"])
            except KeyError as e:
                raise DataFormatError(f"{where}: {e.args[0]}") from e
            answer = task.extract_answer(_completion_text(row["completion"], where))
            if answer is None:
                raise DataFormatError(f"{where}: task {row['task']!r} finds no final answer in the completion")
        else:
            raise DataFormatError(f"{where}: missing field(s) answer (a string gold answer, or a 'completion' "
                                  f"to extract it from)")
        out.append({"prompt": prompt, "answer": answer, "task": row["task"]})
    if not out:
        raise DataFormatError(f"{source}: no rows")
    return out


def source_fingerprint(source: str) -> str:
    """sha256 identifying the data of `source` (see the module docstring)."""
    spec = parse_spec(source)
    if spec.kind == "local" and spec.path.is_file():
        return file_sha256(spec.path)
    h = hashlib.sha256()
    if spec.kind == "local" and spec.path.is_dir():
        for p in sorted(q for q in spec.path.rglob("*") if q.is_file()):
            h.update(f"{p.relative_to(spec.path).as_posix()}\0{file_sha256(p)}\n".encode())
        return h.hexdigest()
    if spec.kind == "local":
        raise DataFormatError(f"{spec.path}: no such file or directory")
    h.update(source.encode())
    for row, _ in iter_rows(source, "train"):
        h.update(json.dumps(row, sort_keys=True, default=str).encode())
    return h.hexdigest()

