"""Shared pieces of every task: the `Example` record, data-source errors, hub/local loading helpers,
and the exact numeric answer comparison used by gsm8k, arith, word_problems and the rewards.

- `Example(prompt, answer, gold, task, meta)`: one item; `prompt` is the question text, `answer` the
  full target (trace / worked solution), `gold` the canonical final answer string used for scoring.
- `DataSourceError`, `load_hub`, `read_jsonl`, ...: re-exported from `looplm.tasks.datasource`, where
  source specs are parsed and every loader's rows are read.
- `parse_number(s) -> Fraction | None` / `numbers_equal(a, b)`: exact rational comparison of final
  answers (`$`, thousands commas, a trailing `.` stripped; `10.0 == 10`); bounded input (at most 64
  characters, at most 15 digits, no exponent syntax), never float, never eval.
- `token_f1(prediction, reference)`: bag-of-words F1 for free-text tasks (alpaca, text).
- `in_split(prompt, split)`: the hash partition that keeps generated train and eval items disjoint.
- `extract_hash_answer(text)`: lm-eval-harness's GSM8K strict regex `#### (\\-?[0-9\\.\\,]+)`, first
  match.

Simplification: the re-exports keep `from looplm.tasks.base import DataSourceError` working for the
many modules that only need the error.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterable

from looplm.tasks.datasource import (DataFormatError, DataSourceError, load_hub, parse_spec,  # noqa: F401
                                     read_json_array, read_jsonl, remedy_text)


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
