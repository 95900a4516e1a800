"""Tests for looplm.tasks.arith and looplm.tasks.word_problems: formats, exact arithmetic of every
worked equation, `####` answers that follow from them, options, determinism and split disjointness."""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction

import pytest

from looplm.tasks import arith, word_problems as wp
from looplm.tasks.base import extract_hash_answer, numbers_equal, overlap

EQ_RE = re.compile(r"(-?\d+) ([-+*/]) (-?\d+) = (-?\d+)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
       "/": lambda a, b: Fraction(a, b)}


def test_arith_format():
    assert arith.format_sample(95, "*", 98) == ("What is 95 * 98?", "95 * 98 = 9310\n#### 9310", "9310")
    assert arith.format_sample(84, "/", 12)[1] == "84 / 12 = 7\n#### 7"
    with pytest.raises(ValueError):
        arith.format_sample(85, "/", 12)


@pytest.mark.parametrize("digits, ops", [(2, ("+", "-", "*")), (1, ("+",)), (3, ("*", "/")), (2, ("/",))])
def test_arith_items_are_right(digits, ops):
    items = arith.generate(300, seed=0, digits=digits, ops=ops)
    lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10 ** digits - 1
    assert {e.meta["op"] for e in items} == set(ops)
    for e in items:
        a, op, b = e.meta["a"], e.meta["op"], e.meta["b"]
        assert e.prompt == f"What is {a} {op} {b}?"
        assert lo <= b <= hi and (op == "/" or lo <= a <= hi)
        x, o, y, z = EQ_RE.fullmatch(e.answer.split("\n")[0]).groups()
        assert OPS[o](int(x), int(y)) == int(z) == int(e.gold)
        assert extract_hash_answer(e.answer) == e.gold
        assert arith.score(e.answer, e)["score"] == 1.0
        assert arith.score(f"#### {int(e.gold) + 1}", e)["score"] == 0.0


def test_arith_determinism_options_and_splits():
    a = arith.generate(100, seed=0)
    assert [e.prompt for e in a] == [e.prompt for e in arith.generate(100, seed=0)]
    assert [e.prompt for e in a] != [e.prompt for e in arith.generate(100, seed=1)]
    assert not overlap(arith.generate(2000, seed=0), arith.generate(200, seed=0, split="eval"))
    for kw in ({"digits": 0}, {"digits": 8}, {"ops": ()}, {"ops": ("^",)}, {"split": "test"}):
        with pytest.raises(ValueError):
            arith.generate(1, seed=0, **kw)


def _check_solution(question: str, answer: str) -> int:
    """Every line is one right equation whose operands come from the question or earlier results;
    returns the number of steps. Fails the test otherwise."""
    known = Counter(int(x) for x in re.findall(r"\d+", question))
    *lines, final = answer.split("\n")
    assert final.startswith("#### ")
    results = []
    for line in lines:
        eqs = EQ_RE.findall(line)
        assert len(eqs) == 1, line
        x, op, y, z = eqs[0]
        x, y, z = int(x), int(y), int(z)
        assert OPS[op](x, y) == z, line  # exact, including division
        assert z >= 0
        for v in (x, y):
            assert v in known or v in results, f"ungrounded operand {v} in {line!r}"
        results.append(z)
    assert numbers_equal(extract_hash_answer(answer), results[-1])
    return len(lines)


def test_word_problem_equations_and_answers():
    items = wp.generate(3000, seed=0)
    assert len(wp.TEMPLATES) >= 10
    assert set(Counter(e.meta["template"] for e in items)) == set(wp.TEMPLATES)
    steps = Counter()
    for e in items:
        n = _check_solution(e.prompt, e.answer)
        assert n == e.meta["steps"] and 2 <= n <= 4
        steps[n] += 1
        assert e.gold == extract_hash_answer(e.answer)
        assert wp.score(e.answer, e) == {"score": 1.0, "numeric": 1.0, "strict": 1.0, "has_answer": 1.0}
    assert set(steps) == {2, 3, 4}
    ops = Counter(m[1] for e in items for m in EQ_RE.findall(e.answer))
    assert set(ops) == {"+", "-", "*", "/"}


def test_word_problems_determinism_and_splits():
    a = wp.generate(200, seed=0)
    assert [e.answer for e in a] == [e.answer for e in wp.generate(200, seed=0)]
    assert [e.prompt for e in a] != [e.prompt for e in wp.generate(200, seed=1)]
    train, evals = wp.generate(5000, seed=0), wp.generate(500, seed=0, split="eval")
    assert not overlap(train, evals)
    only = wp.generate(20, seed=0, templates=["pizza"])
    assert {e.meta["template"] for e in only} == {"pizza"}
    with pytest.raises(ValueError, match="templates"):
        wp.generate(1, seed=0, templates=["nope"])


def test_checker_catches_a_wrong_equation():
    e = wp.generate(1, seed=0)[0]
    x, op, y, z = EQ_RE.findall(e.answer)[0]
    broken = e.answer.replace(f"{x} {op} {y} = {z}", f"{x} {op} {y} = {int(z) + 1}", 1)
    with pytest.raises(AssertionError):
        _check_solution(e.prompt, broken)
