"""Shared pieces of every task: the `Example` record, data-source errors, hub/local loading helpers,
and the exact numeric answer comparison used by gsm8k, arith, word_problems and the rewards.

- `Example(prompt, answer, gold, task, meta)`: one item; `prompt` is the question text, `answer` the
  full target (trace / worked solution), `gold` the canonical final answer string used for scoring.
- `load_hub(name, config, split, task)`: `datasets.load_dataset` wrapped so that any failure becomes a
  `DataSourceError` naming the dataset and how to pass a local copy (`--source local:PATH`) or ask for
  generated data.
- `parse_source(source)`: `"hub"` or a local path (`"local:PATH"` or a bare path).
- `read_jsonl(path, required)` / `read_json_array(path, required)` / `read_records(path, required)`:
  local JSON/JSONL/parquet rows; a malformed line is an error naming `file:line`.
- `parse_number(s) -> Fraction | None` / `numbers_equal(a, b)`: exact rational comparison of final
  answers (`$`, thousands commas, a trailing `.` stripped; `10.0 == 10`); bounded input (at most 64
  characters, at most 15 digits, no exponent syntax), never float, never eval.
- `token_f1(prediction, reference)`: bag-of-words F1 for free-text tasks (alpaca, text).
- `in_split(prompt, split)`: the hash partition that keeps generated train and eval items disjoint.
- `extract_hash_answer(text)`: lm-eval-harness's GSM8K strict regex `#### (\\-?[0-9\\.\\,]+)`, first
  match.

Simplification: local JSONL is parsed here (not via `datasets`) so that errors can name the line;
parquet goes through `datasets.load_dataset("parquet", ...)`.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable


class DataSourceError(RuntimeError):
    """A dataset could not be loaded (hub down, file missing or malformed); the message says why and
    what to do instead."""


@dataclass
class Example:
    """One task item. `gold` is the canonical final answer used by the task's `score`."""

    prompt: str
    answer: str
    gold: str
    task: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "answer": self.answer, "gold": self.gold, "task": self.task,
                "meta": dict(self.meta)}


# ----------------------------------------------------------------------------- sources


def parse_source(source: str) -> tuple[str, Path | None]:
    """`"hub"` -> ("hub", None); `"local:PATH"` or a bare path -> ("local", Path). Empty is an error."""
    if not isinstance(source, str) or not source.strip():
        raise DataSourceError(f"source must be 'hub' or a local path ('local:PATH'), got {source!r}")
    if source == "hub":
        return "hub", None
    path = source[len("local:"):] if source.startswith("local:") else source
    if not path:
        raise DataSourceError("source 'local:' needs a path after the colon, e.g. local:data/x.jsonl")
    return "local", Path(path)


def remedy_text(task: str) -> str:
    """How to avoid the hub: the same sentence in every hub error."""
    return (f"pass a local copy with --source local:PATH (for task '{task}'), "
            f"or ask for generated data explicitly instead")


def load_hub(name: str, config: str | None = None, split: str = "train", task: str = "?") -> Any:
    """`datasets.load_dataset(name, config, split=split)`; any failure -> `DataSourceError` naming the
    dataset (and config/split) and the remedy. Returns the `datasets.Dataset`."""
    label = name + (f" (config {config!r})" if config else "") + f", split {split!r}"
    try:
        import datasets  # imported lazily: it is slow to import and only the hub path needs it
    except ImportError as e:  # pragma: no cover - datasets is a dependency
        raise DataSourceError(f"cannot load hub dataset {label}: the 'datasets' package is missing "
                              f"({e}); {remedy_text(task)}") from e
    try:
        args = (name, config) if config else (name,)
        return datasets.load_dataset(*args, split=split)
    except Exception as e:  # noqa: BLE001 - every hub failure gets the same clear message
        raise DataSourceError(f"could not load hub dataset {label}: {type(e).__name__}: {e}; "
                              f"{remedy_text(task)}") from e


def _check_fields(row: Any, required: Iterable[str], where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataSourceError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [k for k in required if k not in row]
    if missing:
        raise DataSourceError(f"{where}: missing field(s) {missing}")
    bad = [k for k in required if not isinstance(row[k], str)]
    if bad:
        raise DataSourceError(f"{where}: field(s) {bad} must be strings")
    return row


def read_jsonl(path: str | Path, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a blank line before the end is an error (nothing is silently skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"{path}: no such file")
    lines = path.read_text(encoding="utf-8").split("\n")
    while lines and not lines[-1].strip():  # blank lines at the very end carry nothing
        lines.pop()
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            raise DataSourceError(f"{path}:{i}: blank line")
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataSourceError(f"{path}:{i}: invalid JSON ({e.msg} at column {e.colno})") from e
        rows.append(_check_fields(row, required, f"{path}:{i}"))
    return rows


def read_json_array(path: str | Path, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Rows of a JSON file holding one array of objects; errors name the file and the row index."""
    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataSourceError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
    if not isinstance(data, list):
        raise DataSourceError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    return [_check_fields(row, required, f"{path}: row {i}") for i, row in enumerate(data)]


def read_records(path: str | Path, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Local rows by extension: `.jsonl`, `.json` (array, or JSONL if it does not start with `[`),
    `.parquet` (via `datasets.load_dataset("parquet", ...)`)."""
    path = Path(path)
    required = tuple(required)
    if not path.is_file():
        raise DataSourceError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path, required)
    if suffix == ".json":
        with path.open(encoding="utf-8") as f:
            head = f.read(256).lstrip()
        return read_json_array(path, required) if head.startswith("[") else read_jsonl(path, required)
    if suffix == ".parquet":
        try:
            import datasets
            ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
        except Exception as e:  # noqa: BLE001
            raise DataSourceError(f"{path}: could not read parquet: {type(e).__name__}: {e}") from e
        return [_check_fields(row, required, f"{path}: row {i}") for i, row in enumerate(ds)]
    raise DataSourceError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json or .parquet)")


def hub_rows(ds: Any, required: Iterable[str], label: str) -> list[dict[str, Any]]:
    """Rows of a hub `datasets.Dataset` (or any iterable of dicts) with their fields checked."""
    required = tuple(required)
    return [_check_fields(dict(row), required, f"{label}: row {i}") for i, row in enumerate(ds)]


# ----------------------------------------------------------------------------- numbers

MAX_NUMBER_CHARS = 64
MAX_DIGITS = 15
_NUMBER_RE = re.compile(r"([+-]?)(\d*)(?:\.(\d*))?")
HASH_ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")  # lm-eval-harness gsm8k strict-match


def parse_number(s: str) -> Fraction | None:
    """Exact value of a final-answer string, or None when it is not a plain number.

    Accepts an optional sign, an optional `$` (before or after the sign), thousands commas anywhere in
    the integer part, a decimal part, and one trailing `.`; surrounding whitespace is ignored. Rejects
    exponent syntax, more than `MAX_DIGITS` digits and strings over `MAX_NUMBER_CHARS` characters.
    """
    if not isinstance(s, str) or len(s) > MAX_NUMBER_CHARS:
        return None
    t = s.strip()
    if t.startswith("$"):
        t = t[1:]
    elif t[:2] in ("-$", "+$"):
        t = t[0] + t[2:]
    t = t.replace(",", "")
    if t.endswith("."):
        t = t[:-1]
    m = _NUMBER_RE.fullmatch(t)
    if not m:
        return None
    sign, whole, frac = m.group(1), m.group(2), m.group(3) or ""
    if not whole and not frac:
        return None
    if len(whole) + len(frac) > MAX_DIGITS:
        return None
    value = Fraction(int(whole or "0")) + (Fraction(int(frac), 10 ** len(frac)) if frac else 0)
    return -value if sign == "-" else value


def numbers_equal(a: str | int | Fraction | None, b: str | int | Fraction | None) -> bool:
    """True iff both parse as numbers (see `parse_number`) with the same exact value."""
    va = a if isinstance(a, (int, Fraction)) else (parse_number(a) if isinstance(a, str) else None)
    vb = b if isinstance(b, (int, Fraction)) else (parse_number(b) if isinstance(b, str) else None)
    return va is not None and vb is not None and va == vb


def format_number(x: Fraction | int) -> str:
    """Canonical string of an exact number: integers plainly, others as a terminating decimal if one
    exists, else `p/q`."""
    x = Fraction(x)
    if x.denominator == 1:
        return str(x.numerator)
    d = x.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d != 1:
        return f"{x.numerator}/{x.denominator}"
    digits = 0
    while (x * 10 ** digits).denominator != 1:
        digits += 1
    scaled = abs(x.numerator * 10 ** digits // x.denominator)
    sign = "-" if x < 0 else ""
    return f"{sign}{scaled // 10 ** digits}.{scaled % 10 ** digits:0{digits}d}"


def extract_hash_answer(text: str) -> str | None:
    """First `#### N` answer (lm-eval-harness strict regex), the raw captured string, or None."""
    m = HASH_ANSWER_RE.search(text)
    return m.group(1) if m else None


_LM_EVAL_IGNORE = (re.compile(","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$"))


def lm_eval_normalize(s: str) -> str:
    """lm-eval-harness gsm8k `exact_match` normalisation (regexes_to_ignore `,` `$` `.*#### ` `\\.$`,
    case-insensitive, whitespace kept)."""
    for r in _LM_EVAL_IGNORE:
        s = r.sub("", s)
    return s.lower()


def hash_answer_scores(completion: str, gold: str) -> dict[str, float]:
    """Scores shared by the `#### N` tasks: `score` (= `numeric`: the strict-regex answer equals the
    gold as a number), `strict` (lm-eval exact match of the normalised strings), `has_answer`."""
    pred = extract_hash_answer(completion)
    if pred is None:
        return {"score": 0.0, "numeric": 0.0, "strict": 0.0, "has_answer": 0.0}
    numeric = float(numbers_equal(pred, gold))
    strict = float(lm_eval_normalize(pred) == lm_eval_normalize(gold))
    return {"score": numeric, "numeric": numeric, "strict": strict, "has_answer": 1.0}


_WORD_RE = re.compile(r"\w+")


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style bag-of-words F1 over lower-cased `\\w+` tokens (1.0 when both are empty)."""
    p = _WORD_RE.findall(prediction.lower())
    r = _WORD_RE.findall(reference.lower())
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


# ----------------------------------------------------------------------------- misc helpers


def stable_hash(text: str) -> str:
    """sha256 hex of a text (used to check that train and eval items do not overlap)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


SPLITS = ("train", "eval", "any")
EVAL_FRACTION_PER_MILLE = 100  # 10% of the generated item space is reserved for evaluation


def in_split(prompt: str, split: str) -> bool:
    """Whether a generated item belongs to `split`: a prompt whose sha256 falls in the first 10% of
    the hash space is "eval", every other prompt is "train"; "any" accepts all. Because the split
    is a function of the text, train and eval sets never share a prompt, whatever the seeds."""
    if split == "any":
        return True
    if split not in SPLITS:
        raise ValueError(f"option 'split' must be one of {SPLITS}, got {split!r}")
    h = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:4], "big") % 1000
    return (h < EVAL_FRACTION_PER_MILLE) == (split == "eval")


MAX_SPLIT_MISSES = 100_000


def check_split_misses(misses: int, task: str, split: str) -> int:
    """Guard for the split rejection loops: too many generated items in a row outside `split`
    means the item space has (almost) none in it."""
    if misses > MAX_SPLIT_MISSES:
        raise ValueError(f"task {task!r}: {MAX_SPLIT_MISSES} generated items in a row fell outside "
                         f"split {split!r}; the options leave too few distinct items (widen them)")
    return misses


def overlap(a: Iterable[Example], b: Iterable[Example]) -> set[str]:
    """Hashes of prompts present in both collections (empty = disjoint)."""
    return {stable_hash(e.prompt) for e in a} & {stable_hash(e.prompt) for e in b}


def check_positive_int(name: str, value: Any) -> int:
    """`value` as an int >= 1, else a ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"option {name!r} must be a positive integer, got {value!r}")
    return value


def iter_template_examples(task: str, templates: dict, make_example, seed: int,
                           chosen: tuple[str, ...] | list[str] | None = None, split: str = "train"):
    """Endless deterministic stream of `make_example(template_name, rng)` over `chosen` templates (default
    all of `templates`); only prompts hashing into `split` ("train" | "eval" | "any") are yielded."""
    names = list(templates) if chosen is None else list(chosen)
    unknown = [t for t in names if t not in templates]
    if not names or unknown:
        raise ValueError(f"option 'templates' must name some of {sorted(templates)}, got {names!r}")
    rng = random.Random(f"{task}:{seed}")
    misses = 0
    while True:
        ex = make_example(rng.choice(names), rng)
        if not in_split(ex.prompt, split):
            misses = check_split_misses(misses + 1, task, split)
            continue
        misses = 0
        yield ex
