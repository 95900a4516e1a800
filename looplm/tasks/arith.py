"""Arithmetic items as in the report's SFT fallback: "What is 95 * 98?".

    prompt: "What is 95 * 98?"
    answer: "95 * 98 = 9310\\n#### 9310"
    gold:   "9310"

Options: `digits` (operand length, default 2, i.e. 10..99), `ops` (subset of `+ - * /`, default
`+ - *`). Division items are built as (b*q) / b so the result is an exact integer; subtraction may
go negative. Scoring (shared with gsm8k/word_problems): `score` = the first `#### N` equals the
gold as a number (`numbers_equal`), plus `strict` (lm-eval-harness exact match) and `has_answer`.
"""

from __future__ import annotations

import random
from itertools import islice
from typing import Iterator

from looplm.tasks.base import (Example, check_positive_int, extract_hash_answer, hash_answer_scores,
                               check_split_misses, in_split)

TASK = "arith"
ALL_OPS = ("+", "-", "*", "/")
DEFAULT_OPS = ("+", "-", "*")


def apply_op(a: int, op: str, b: int) -> int:
    """Exact integer result of `a op b` (division must be exact)."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0 or a % b:
            raise ValueError(f"{a} / {b} is not an exact integer division")
        return a // b
    raise ValueError(f"unknown operator {op!r}")


def format_sample(a: int, op: str, b: int) -> tuple[str, str, str]:
    """(prompt, answer, gold) for `a op b`."""
    c = apply_op(a, op, b)
    return f"What is {a} {op} {b}?", f"{a} {op} {b} = {c}\n#### {c}", str(c)


def _operands(rng: random.Random, op: str, lo: int, hi: int) -> tuple[int, int]:
    if op != "/":
        return rng.randint(lo, hi), rng.randint(lo, hi)
    b = rng.randint(max(lo, 2), hi) if hi >= 2 else 1  # avoid the trivial "/ 1" when possible
    q = rng.randint(max(1, lo // b), max(1, hi // b))  # keep the dividend near the operand range
    return b * q, b


def iter_examples(seed: int, digits: int = 2, ops: tuple[str, ...] | list[str] = DEFAULT_OPS,
                  split: str = "train") -> Iterator[Example]:
    """Endless deterministic stream; only prompts hashing into `split` are yielded."""
    check_positive_int("digits", digits)
    if digits > 7:
        raise ValueError(f"option 'digits' must be <= 7 (results stay under 15 digits), got {digits}")
    ops = tuple(ops)
    if not ops or any(o not in ALL_OPS for o in ops):
        raise ValueError(f"option 'ops' must be a non-empty subset of {ALL_OPS}, got {ops!r}")
    lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10 ** digits - 1
    rng = random.Random(f"{TASK}:{seed}")
    misses = 0
    while True:
        op = rng.choice(ops)
        a, b = _operands(rng, op, lo, hi)
        prompt, answer, gold = format_sample(a, op, b)
        if not in_split(prompt, split):
            misses = check_split_misses(misses + 1, TASK, split)
            continue
        misses = 0
        yield Example(prompt=prompt, answer=answer, gold=gold, task=TASK,
                      meta={"a": a, "op": op, "b": b})


def generate(n: int, seed: int, **opts) -> list[Example]:
    """`n` examples, deterministic for (`seed`, `opts`); see `iter_examples` for the options."""
    return list(islice(iter_examples(seed, **opts), n))


def extract_answer(text: str) -> str | None:
    """The first `#### N` answer (lm-eval-harness strict regex)."""
    return extract_hash_answer(text)


def score(completion: str, example: Example) -> dict[str, float]:
    """`score` (numeric match of `#### N`), `strict`, `numeric`, `has_answer`."""
    return hash_answer_scores(completion, example.gold)
