"""Chat rows in the shapes looplm and TRL use, turned into one form: a list of `{"role", "content"}`
messages (or, for the loaders whose examples are one prompt and one answer, that pair).

Accepted rows:
- looplm SFT: `{"prompt": str, "response": str}`;
- TRL conversational: `{"messages": [{"role", "content"}, ...]}`;
- TRL prompt-completion: `{"prompt": str | messages, "completion": str | messages}` (a string prompt
  is one user message, a string completion one assistant message).

Roles are those of looplm's chat template: `system` (first message only), `user`, `assistant`.
Another role, a non-string content, a key other than role/content (tool calls, names), or an empty
list is an error naming the row and the message index: nothing is dropped on the way.

- `row_messages(row, where)`: the conversation of an SFT row; it must hold an assistant turn.
- `single_turn(row, where, task)`: `(prompt, answer)` of a TRL-shaped row for a task whose examples
  are one user prompt and one answer (gsm8k, alpaca, orca_math), or None when the row is not
  TRL-shaped (the task then reads its own fields); a system message or several turns are errors.
- `task_rows(source, split, task, default_hub, fields)`: the rows of a loaded task's source with its
  own two fields (e.g. question, answer), TRL rows mapped onto them by `single_turn`.
- `prompt_text(value, where)`: an RL prompt, a string or a message list that is one user turn.

Simplification: multi-part (multimodal) contents are not supported.
"""

from __future__ import annotations

from typing import Any, Iterator

from looplm.tasks.datasource import DataFormatError, check_fields, iter_rows

ROLES = ("system", "user", "assistant")
SHAPES = "{prompt, response}, {prompt, completion} or {messages: [{role, content}, ...]}"


def check_messages(value: Any, where: str, field: str) -> list[dict[str, str]]:
    """`value` as a validated message list (see the module docstring)."""
    if not isinstance(value, list) or not value:
        raise DataFormatError(f"{where}: field {field!r} must be a non-empty list of {{role, content}} messages")
    out = []
    for i, m in enumerate(value):
        at = f"{where}: {field}[{i}]"
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataFormatError(f"{at}: a message is an object with 'role' and 'content'")
        extra = sorted(set(m) - {"role", "content"})
        if extra:
            raise DataFormatError(f"{at}: unsupported message key(s) {', '.join(extra)} (looplm's chat template "
                                  f"holds role and content only)")
        if m["role"] not in ROLES:
            raise DataFormatError(f"{at}: role {m['role']!r} is not supported; looplm's chat template has the roles "
                                  f"system (first message only), user and assistant")
        if m["role"] == "system" and (i or field == "completion"):
            raise DataFormatError(f"{at}: a system message must be the first message of the conversation")
        if not isinstance(m["content"], str):
            raise DataFormatError(f"{at}: 'content' must be a string, got {type(m['content']).__name__}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _as_messages(value: Any, role: str, where: str, field: str) -> list[dict[str, str]]:
    return [{"role": role, "content": value}] if isinstance(value, str) else check_messages(value, where, field)


def row_messages(row: dict[str, Any], where: str) -> list[dict[str, str]]:
    """The conversation of an SFT row in any accepted shape; it must hold an assistant message."""
    if "messages" in row:
        msgs = check_messages(row["messages"], where, "messages")
    elif "prompt" in row and ("completion" in row or "response" in row):
        key = "completion" if "completion" in row else "response"
        if key == "response" and not (isinstance(row["prompt"], str) and isinstance(row["response"], str)):
            raise DataFormatError(f"{where}: fields prompt and response must be strings")
        msgs = _as_messages(row["prompt"], "user", where, "prompt") + \
            _as_messages(row[key], "assistant", where, key)
    else:
        missing = "response" if "prompt" in row else "messages"
        raise DataFormatError(f"{where}: missing field(s) {missing} (an SFT row is {SHAPES})")
    if not any(m["role"] == "assistant" for m in msgs):
        raise DataFormatError(f"{where}: the conversation has no assistant message to learn from")
    return msgs


def is_trl_row(row: dict[str, Any]) -> bool:
    return "messages" in row or ("prompt" in row and "completion" in row)


def single_turn(row: dict[str, Any], where: str, task: str) -> tuple[str, str] | None:
    """(user prompt, assistant answer) of a TRL-shaped row, None for any other row."""
    if not is_trl_row(row):
        return None
    msgs = row_messages(row, where)
    roles = [m["role"] for m in msgs]
    if roles != ["user", "assistant"]:
        raise DataFormatError(f"{where}: task {task!r} reads one user prompt and one assistant answer per row; "
                              f"this row's roles are {roles}")
    return msgs[0]["content"], msgs[1]["content"]


def task_rows(source: str, split: str, *, task: str, default_hub: tuple[str, str | None],
              fields: tuple[str, str]) -> Iterator[tuple[dict[str, Any], str]]:
    """(row, where) of `source` with string `fields` (prompt field, answer field); a TRL-shaped row
    becomes `{fields[0]: user turn, fields[1]: assistant turn}`."""
    for row, where in iter_rows(source, split, default_hub=default_hub, task=task):
        pair = single_turn(row, where, task)
        if pair is not None:
            row = dict(zip(fields, pair))
        yield check_fields(row, fields, where), where


def prompt_text(value: Any, where: str) -> str:
    """An RL prompt: a string, or a message list that is exactly one user message."""
    if isinstance(value, str):
        return value
    msgs = check_messages(value, where, "prompt")
    if [m["role"] for m in msgs] != ["user"]:
        raise DataFormatError(f"{where}: an RL prompt is one user turn (looplm's rollouts start from "
                              f"tokenizer.chat_prompt); this prompt's roles are {[m['role'] for m in msgs]}")
    return msgs[0]["content"]
