"""Rewards for GRPO on maths completions: the binary outcome reward and the programmatic process
reward (docs/pipeline.md, Rewards).

- `outcome_reward(completion, gold)`: 1.0 iff the first `#### N` answer equals `gold` as a number.
- `process_reward(completion, gold, question="", mode="strict")`: per-step credit for arithmetic
  equations `X op Y = Z` plus 1.0 for a correct answer; `process_breakdown(...)` returns the counts.
  `report` mode is the report's arithmetic (`min(0.25*correct, 0.75) - 0.15*incorrect`, clamped to
  [-0.75, 0.75]); `strict` mode (the training default) counts each distinct equation once and gives
  no credit for trivial steps or, when the question is given, for ungrounded ones.

Safety: model text is never evaluated (no eval/exec/sympy). Equations are found by a linear
tokenizer (regex alternatives that are single character-class runs, so no catastrophic
backtracking) and checked with `fractions.Fraction`. Work is bounded: at most `MAX_SCAN_CHARS`
characters are read, at most `MAX_EQUATIONS` equations are checked, numbers with more than
`MAX_DIGITS` digits are ignored, and there is no exponent syntax (`1e309` is not a number).

Simplifications: only binary equations with a single operator (`X op Y = Z`) are checked; an
equation that is part of a longer expression (an operator right before X or right after Z, or a
power `^`) is skipped (neither credited nor penalised); in a chain `a op b = c op d = e` only the
last link is checked. A `Z` with d decimals is correct within 0.5*10^-d inclusive, so with d = 0 an
integer Z may round a non-integer result (`10 / 3 = 3` counts). Grounding compares numbers exactly
(spelled-out numbers such as "twice" are not question numbers; one grounded operand suffices).
This module keeps its own strict number parser (thousands commas must group by three) rather than
`looplm.tasks.base.parse_number`, which accepts commas anywhere and a leading `+`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MAX_SCAN_CHARS = 16_384  # characters of completion/question read; the rest is ignored
MAX_EQUATIONS = 64  # equations checked per completion
MAX_DIGITS = 15  # numbers with more digits are ignored
MODES = ("strict", "report")

STEP_REWARD = Fraction(1, 4)
STEP_CAP = Fraction(3, 4)  # the process part lies in [-STEP_CAP, STEP_CAP]
STEP_PENALTY = Fraction(3, 20)
ANSWER_REWARD = Fraction(1)

# One token per match. Every alternative is a single character-class run: linear time.
_TOKEN_RE = re.compile(
    r"(?P<num>[0-9][0-9,.]*)"  # digits with commas/points; validated by _parse_run
    r"|(?P<word>[^\W\d]+)"  # letters/underscore (unicode); the word "x" is the times operator
    r"|(?P<eq>=+)"  # "=" is an equals sign, "==" and longer runs are not
    r"|(?P<op>[-+*/×÷])"
    r"|(?P<other>\S)",  # whitespace matches nothing: the regex engine skips it
)
_RUN_RE = re.compile(r"[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?")
_ANSWER_RE = re.compile(r"(-?)\$?(-?)([0-9][0-9,.]*)")  # after "####" and spaces
_WORD_CHAR_RE = re.compile(r"[^\W\d]")
_OPS = {"+": "+", "-": "-", "*": "*", "x": "*", "×": "*", "/": "/", "÷": "/"}
_MAX_RUN_CHARS = MAX_DIGITS + MAX_DIGITS // 3 + 1  # digits + thousands commas + decimal point


@dataclass(frozen=True)
class Equation:
    """One extracted step `x op y = z`; `op` is normalised to one of `+ - * /`, `decimals` is the
    number of decimals written in `z` (its tolerance is 0.5*10^-decimals)."""

    x: Fraction
    op: str
    y: Fraction
    z: Fraction
    decimals: int

    def key(self) -> tuple:
        """Identity for duplicate detection: exact values, operands sorted for `+` and `*`."""
        x, y = (min(self.x, self.y), max(self.x, self.y)) if self.op in "+*" else (self.x, self.y)
        return (self.op, x, y, self.z)


@dataclass(frozen=True)
class ProcessBreakdown:
    """What `process_reward` counted. In `strict` mode every equation falls in exactly one of
    correct / incorrect / trivial / duplicate / ungrounded; in `report` mode only the first two."""

    mode: str
    equations: int  # equations found (at most MAX_EQUATIONS)
    correct: int  # credited steps
    incorrect: int  # penalised steps (wrong result or division by zero)
    trivial: int  # correct steps ignored as trivial (x1, /1, +-0, result equal to an operand)
    duplicate: int  # repeats of an earlier equation, ignored
    ungrounded: int  # correct steps with no operand from the question or an earlier credited result
    answer: str | None  # the first `#### N` number as written, or None
    answer_correct: bool
    process: float  # the step part, in [-0.75, 0.75]
    total: float  # process + 1.0 if the answer is correct
    truncated: bool  # the text was longer than MAX_SCAN_CHARS or MAX_EQUATIONS was reached


# ----------------------------------------------------------------------------- numbers


def _parse_run(run: str) -> tuple[Fraction, int] | None:
    """Exact value and decimal count of a digit run such as `1,234.5`; None if malformed or longer
    than MAX_DIGITS digits. Commas must group the integer part by three."""
    if len(run) > _MAX_RUN_CHARS or not _RUN_RE.fullmatch(run):
        return None
    whole, _, frac = run.replace(",", "").partition(".")
    if len(whole) + len(frac) > MAX_DIGITS:
        return None
    scale = 10 ** len(frac)
    return Fraction(int(whole) * scale + int(frac or "0"), scale), len(frac)


def parse_number(text: str) -> Fraction | None:
    """Exact value of a whole string that is one number (`-`, `$`, thousands commas, decimals and one
    trailing `.` allowed; surrounding whitespace ignored), else None. Strict and bounded."""
    if not isinstance(text, str) or len(text) > 4 * _MAX_RUN_CHARS:
        return None
    m = _ANSWER_RE.fullmatch(text.strip())
    if m is None or (m.group(1) and m.group(2)):
        return None
    run = m.group(3)[:-1] if m.group(3).endswith(".") else m.group(3)
    parsed = _parse_run(run)
    if parsed is None:
        return None
    return -parsed[0] if (m.group(1) or m.group(2)) else parsed[0]


def _gold_value(gold: str) -> Fraction:
    value = parse_number(gold)
    if value is None:
        raise ValueError(f"gold answer {gold!r} is not a number (expected e.g. '12', '-3.5', "
                         f"'1,234' or '$7'; at most {MAX_DIGITS} digits, no exponent)")
    return value


def first_answer(text: str) -> tuple[str, Fraction] | None:
    """The first `#### N` answer of `text` (as written, and its exact value), or None.

    The first `####` followed (after spaces/tabs) by a number-like run decides; if that run is not a
    valid number (bad commas, too many digits, glued to letters as in `1e309`) there is no answer.
    """
    text = text[:MAX_SCAN_CHARS]
    pos = text.find("####")
    while pos != -1:
        j = pos + 4
        while j < len(text) and text[j] in " \t":
            j += 1
        m = _ANSWER_RE.match(text, j)
        if m is not None:
            return _answer_from_match(text, m)
        pos = text.find("####", pos + 1)
    return None


def _answer_from_match(text: str, m: re.Match) -> tuple[str, Fraction] | None:
    raw = m.group(3)
    run = raw.rstrip(".,")
    if m.group(1) and m.group(2):
        return None
    if run == raw and _WORD_CHAR_RE.match(text, m.end()):
        return None  # glued to letters: "12abc", "1e309"
    parsed = _parse_run(run)
    if parsed is None:
        return None
    value = -parsed[0] if (m.group(1) or m.group(2)) else parsed[0]
    return text[m.start():m.start(3) + len(run)], value


# ----------------------------------------------------------------------------- equations

# token: (kind, text, start, end) with kind in num/bad/op/eq/word/other; a num's text is its digit
# run with a leading "-" when negative (parsed only when it is part of an equation); "bad" is a
# number glued to letters or to a leading "." ("v2", "1e309", ".5"), never part of an equation.
_KIND_LETTER = {"num": "N", "bad": "B", "op": "O", "eq": "E", "word": "W", "other": "T"}
_EQUATION_SHAPE = re.compile(r"(?=NONEN)")


def _number_token(toks: list, raw: str, start: int) -> tuple:
    run = raw.rstrip(".,")  # sentence punctuation after a number is not part of it
    end, kind = start + len(run), "num"
    if toks and toks[-1][3] == start:  # glued to the previous token
        prev_kind, prev_text = toks[-1][0], toks[-1][1]
        if prev_kind == "word" or (prev_kind == "other" and prev_text == "."):
            kind = "bad"
        elif prev_kind == "other" and prev_text == "$":
            start = toks.pop()[2]
    if (kind == "num" and toks and toks[-1][0] == "op" and toks[-1][1] == "-"
            and toks[-1][3] == start and (len(toks) < 2 or toks[-2][0] not in ("num", "bad"))):
        start = toks.pop()[2]  # unary minus: "-3", "= -3", "- -4"
        run = "-" + run
    return (kind, run, start, end)


def _tokens(text: str) -> list[tuple]:
    """Significant tokens of `text` (whitespace is skipped by the regex), left to right, linear."""
    toks: list[tuple] = []
    for m in _TOKEN_RE.finditer(text):
        kind, raw, start = m.lastgroup, m.group(), m.start()
        if kind == "num":
            toks.append(_number_token(toks, raw, start))
        elif kind == "word":
            if raw == "x":
                toks.append(("op", "*", start, m.end()))
                continue
            if toks and toks[-1][0] == "num" and toks[-1][3] == start:
                toks[-1] = ("bad",) + toks[-1][1:]  # "2e", "3rd"
            toks.append(("word", raw, start, m.end()))
        elif kind == "op":
            toks.append(("op", _OPS[raw], start, m.end()))
        elif kind == "eq":
            toks.append(("eq" if len(raw) == 1 else "other", raw, start, m.end()))
        else:
            toks.append(("other", raw, start, m.end()))
    return toks


def _value(run: str) -> tuple[Fraction, int] | None:
    parsed = _parse_run(run[1:] if run.startswith("-") else run)
    if parsed is None or not run.startswith("-"):
        return parsed
    return -parsed[0], parsed[1]


def _extends(tok: tuple) -> bool:
    """An operator or a power sign next to an equation makes it part of a longer expression."""
    return tok[0] == "op" or (tok[0] == "other" and tok[1] == "^")


def _scan_equations(text: str) -> tuple[list[Equation], bool]:
    """Equations `X op Y = Z` in `text` (first MAX_SCAN_CHARS chars) and whether a cap was hit."""
    truncated = len(text) > MAX_SCAN_CHARS
    toks = _tokens(text[:MAX_SCAN_CHARS])
    kinds = "".join(_KIND_LETTER[t[0]] for t in toks)
    found: list[Equation] = []
    for m in _EQUATION_SHAPE.finditer(kinds):
        i = m.start()
        if (i > 0 and _extends(toks[i - 1])) or (i + 5 < len(toks) and _extends(toks[i + 5])):
            continue  # part of a longer expression
        x, y, z = _value(toks[i][1]), _value(toks[i + 2][1]), _value(toks[i + 4][1])
        if x is None or y is None or z is None:
            continue  # malformed or longer than MAX_DIGITS digits: ignored
        found.append(Equation(x[0], toks[i + 1][1], y[0], z[0], z[1]))
        if len(found) >= MAX_EQUATIONS:
            return found, True
    return found, truncated


def extract_equations(text: str) -> list[Equation]:
    """The equations `X op Y = Z` found in `text` (bounded; see module docstring)."""
    return _scan_equations(text)[0]


def check_equation(eq: Equation) -> bool:
    """Exact check: |x op y - z| <= 0.5*10^-decimals; division by zero is incorrect."""
    if eq.op == "/" and eq.y == 0:
        return False
    value = {"+": eq.x + eq.y, "-": eq.x - eq.y, "*": eq.x * eq.y}.get(eq.op)
    if value is None:
        value = eq.x / eq.y
    return abs(value - eq.z) <= Fraction(1, 2 * 10 ** eq.decimals)


def is_trivial(eq: Equation) -> bool:
    """x1, /1, +-0, or a result equal to an operand."""
    return (eq.z == eq.x or eq.z == eq.y
            or (eq.op == "*" and 1 in (eq.x, eq.y)) or (eq.op == "/" and eq.y == 1)
            or (eq.op == "+" and 0 in (eq.x, eq.y)) or (eq.op == "-" and eq.y == 0))


def question_numbers(question: str) -> set[Fraction]:
    """The valid numbers written in a question (same tokenizer as the equations)."""
    values = (_value(t[1]) for t in _tokens(question[:MAX_SCAN_CHARS]) if t[0] == "num")
    return {v[0] for v in values if v is not None}


# ----------------------------------------------------------------------------- rewards


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")


def outcome_reward(completion: str, gold: str) -> float:
    """1.0 iff the first `#### N` in `completion` equals `gold` as a number, else 0.0."""
    _check_text("completion", completion)
    gold_value = _gold_value(gold)
    answer = first_answer(completion)
    return 1.0 if answer is not None and answer[1] == gold_value else 0.0


def _report_counts(eqs: list[Equation]) -> dict[str, int]:
    correct = sum(check_equation(e) for e in eqs)
    return {"correct": correct, "incorrect": len(eqs) - correct}


def _strict_counts(eqs: list[Equation], question: str) -> dict[str, int]:
    counts = dict.fromkeys(("correct", "incorrect", "trivial", "duplicate", "ungrounded"), 0)
    grounded = question_numbers(question) if question else None
    seen: set[tuple] = set()
    for eq in eqs:
        key = eq.key()
        if key in seen:
            counts["duplicate"] += 1
            continue
        seen.add(key)
        if not check_equation(eq):
            counts["incorrect"] += 1
        elif is_trivial(eq):
            counts["trivial"] += 1
        elif grounded is not None and eq.x not in grounded and eq.y not in grounded:
            counts["ungrounded"] += 1
        else:
            counts["correct"] += 1
            if grounded is not None:
                grounded.add(eq.z)  # a credited result grounds later steps
    return counts


def process_breakdown(completion: str, gold: str, question: str = "",
                      mode: str = "strict") -> ProcessBreakdown:
    """Score `completion` against `gold` and return every count (see `ProcessBreakdown`)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    _check_text("completion", completion)
    _check_text("question", question)
    gold_value = _gold_value(gold)
    eqs, truncated = _scan_equations(completion)
    counts = _report_counts(eqs) if mode == "report" else _strict_counts(eqs, question)
    steps = min(STEP_REWARD * counts["correct"], STEP_CAP) - STEP_PENALTY * counts["incorrect"]
    process = max(-STEP_CAP, min(STEP_CAP, steps))
    answer = first_answer(completion)
    answer_correct = answer is not None and answer[1] == gold_value
    total = process + (ANSWER_REWARD if answer_correct else 0)
    return ProcessBreakdown(
        mode=mode, equations=len(eqs), correct=counts["correct"], incorrect=counts["incorrect"],
        trivial=counts.get("trivial", 0), duplicate=counts.get("duplicate", 0),
        ungrounded=counts.get("ungrounded", 0), answer=None if answer is None else answer[0],
        answer_correct=answer_correct, process=float(process), total=float(total),
        truncated=truncated)


def process_reward(completion: str, gold: str, question: str = "", mode: str = "strict") -> float:
    """The process reward in [-0.75, 1.75]: the step part plus 1.0 for a correct `#### N` answer."""
    return process_breakdown(completion, gold, question, mode).total
