"""Plain English text: hub `Salesforce/wikitext` (a config like `wikitext-103-raw-v1`) or local files.

`load_texts(source, split, config, unit)` returns strings; `load(...)` wraps each in an `Example`
with `prompt = ""`, `answer = text`, `gold = ""` (text is scored by loss, not by answers).

- hub: `datasets.load_dataset("Salesforce/wikitext", config, split=split)`, one row per line (or
  `hub:NAME[:CONFIG][@SPLIT]`, rows with a `text` field);
- local (`"local:PATH"` or a bare path): a text file (CRLF, CR or LF line ends), a directory holding
  WikiText's `wiki.{split}.raw`, or any other source of `looplm.tasks.datasource` whose rows have a
  `text` field (JSONL, parquet, CSV, a hub-layout or `save_to_disk` directory, `hub:NAME`).

Plain-text files and the rows of the WikiText hub dataset are lines, grouped into units as below;
any other `text` row is one document (its lines are the units of "paragraph" and "line").

Lines are stripped of surrounding whitespace and blank lines dropped. `unit`:
- `"document"`: WikiText articles, split at top-level headings (raw ` = Title = ` with WikiText's
  leading space, not ` = = Section = = ` nor a maths line starting `= `),
  the heading line included, lines joined with "\\n"; a text without such headings is split at blank
  lines instead;
- `"paragraph"`: every non-empty line that is not a heading;
- `"line"`: every non-empty line, headings included.

Known quirk: a maths line shaped exactly like a title (` = 1 rad / s and ... k = `) also starts a
document; WikiText-2 test has two such lines (62 documents instead of 60). Harmless for LM data.

`score` is the token F1 of a completion against the text (`base.token_f1`), a placeholder-free but
rough check; language quality is measured by loss/perplexity in `eval`.
"""

from __future__ import annotations

import re

from looplm.tasks.base import DataSourceError, Example, token_f1
from looplm.tasks.datasource import LINE_FIELD, iter_rows, parse_spec

TASK = "text"
HUB_NAME = "Salesforce/wikitext"
DEFAULT_CONFIG = "wikitext-103-raw-v1"
UNITS = ("document", "paragraph", "line")
# WikiText writes headings as " = Title = " (leading space); a line of maths can start with "= ".
_TOP_HEADING_RE = re.compile(r" = [^=].*? =\s*")
_ANY_HEADING_RE = re.compile(r" (= )+[^=].*? =( =)*\s*")


def is_top_heading(raw_line: str) -> bool:
    """WikiText article title line (` = Title = `), judged on the unstripped line."""
    return bool(_TOP_HEADING_RE.fullmatch(raw_line))


def is_heading(raw_line: str) -> bool:
    """Any WikiText heading line (` = = Section = = ` etc.), judged on the unstripped line."""
    return bool(_ANY_HEADING_RE.fullmatch(raw_line))


def split_lines(raw: str) -> list[str]:
    """Raw text -> lines, CRLF/CR/LF line ends removed, otherwise unstripped."""
    return raw.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def to_units(lines: list[str], unit: str) -> list[str]:
    """Group raw lines into stripped documents, paragraphs or lines (see the module docstring)."""
    if unit not in UNITS:
        raise ValueError(f"option 'unit' must be one of {UNITS}, got {unit!r}")
    if unit == "line":
        return [ln.strip() for ln in lines if ln.strip()]
    if unit == "paragraph":
        return [ln.strip() for ln in lines if ln.strip() and not is_heading(ln)]
    docs: list[list[str]] = []
    if any(is_top_heading(ln) for ln in lines):
        for ln in lines:
            if not ln.strip():
                continue
            if is_top_heading(ln) or not docs:
                docs.append([])
            docs[-1].append(ln.strip())
    else:
        current: list[str] = []
        for ln in lines + [""]:
            if ln.strip():
                current.append(ln.strip())
            elif current:
                docs.append(current)
                current = []
    return ["\n".join(d) for d in docs]


def _document_units(doc: str, unit: str) -> list[str]:
    """The units of one document row: itself (stripped), or its lines as `to_units` groups them."""
    if unit == "document":
        return [doc.strip()] if doc.strip() else []
    return to_units(split_lines(doc), unit)


def load_texts(source: str, split: str = "test", config: str = DEFAULT_CONFIG,
               unit: str = "document", limit: int | None = None) -> list[str]:
    """Texts from any source spec (see the module docstring)."""
    if unit not in UNITS:
        raise ValueError(f"option 'unit' must be one of {UNITS}, got {unit!r}")
    spec = parse_spec(source, (HUB_NAME, config))
    wikitext_rows = spec.kind == "hub" and spec.name == HUB_NAME  # WikiText's hub rows are lines
    lines: list[str] = []
    docs: list[str] = []
    for row, where in iter_rows(source, split, default_hub=(HUB_NAME, config), text=True, task=TASK):
        if isinstance(row.get(LINE_FIELD), str):
            lines.append(row[LINE_FIELD])
        elif not isinstance(row.get("text"), str):
            raise DataSourceError(f"{where}: missing string field 'text'")
        elif wikitext_rows:
            lines.extend(split_lines(row["text"]))
        else:
            docs.extend(_document_units(row["text"], unit))
    texts = to_units(lines, unit) + docs
    if not texts:
        raise DataSourceError(f"text source {source!r} (split {split!r}) holds no text")
    return texts if limit is None else texts[:limit]


def load(source: str, split: str = "test", config: str = DEFAULT_CONFIG, unit: str = "document",
         limit: int | None = None) -> list[Example]:
    """`load_texts` wrapped in `Example(prompt="", answer=text, gold="")`."""
    return [Example(prompt="", answer=t, gold="", task=TASK, meta={"unit": unit})
            for t in load_texts(source, split, config, unit, limit)]


def extract_answer(text: str) -> str | None:
    """The text itself (stripped); None when empty."""
    return text.strip() or None


def score(completion: str, example: Example) -> dict[str, float]:
    """`score` = token F1 of the completion against the reference text."""
    return {"score": token_f1(completion, example.answer)}
