"""Generated multi-step word problems with GSM8K-style worked solutions.

    prompt: "Tom has 5 boxes with 12 apples in each box. He gives away 7 apples. How many apples
             does he have left?"
    answer: "Tom has 5 * 12 = 60 apples.\\nHe has 60 - 7 = 53 apples left.\\n#### 53"
    gold:   "53"

15 templates (2-4 steps each, `+ - * /`), every step a line containing one `X op Y = Z` equation
whose operands come from the question or earlier results, every result an exact non-negative
integer (divisions are built backwards from the quotient), and `#### N` the last result.
`split` ("train" | "eval" | "any") keeps train and eval prompts disjoint by hash (see
`base.in_split`); `base.overlap` checks two sets. Scoring as arith/gsm8k: `score` = numeric match of
the first `#### N`, plus `strict` and `has_answer`.

Simplification: the templates are few and formulaic; they teach the equation format and multi-step
bookkeeping, not language variety (use GSM8K / Orca-Math for that).
"""

from __future__ import annotations

import random
from itertools import islice
from typing import Callable, Iterator

from looplm.tasks.arith import apply_op
from looplm.tasks.base import Example, extract_hash_answer, hash_answer_scores, iter_template_examples

TASK = "word_problems"
NAMES = ("Tom", "Maria", "Liam", "Emma", "Noah", "Sara", "Omar", "Mei", "Ravi", "Anna", "Jack",
         "Lucia", "Ben", "Aisha", "Leo", "Nina")
FRUITS = ("apples", "oranges", "pears", "lemons", "plums", "peaches")
Steps = list[tuple[str, int, str, int]]  # (sentence with {eq} placeholder, x, op, y)


def _solve(steps: Steps) -> tuple[list[str], int]:
    """Solution lines (each sentence with `x op y = z` filled in) and the final result."""
    lines, z = [], 0
    for sentence, x, op, y in steps:
        z = apply_op(x, op, y)
        lines.append(sentence.format(eq=f"{x} {op} {y} = {z}"))
    return lines, z


# Each template takes (rng, name) and returns (question, steps); later steps use earlier results,
# so templates compute intermediate values themselves.

def _boxes_give_away(r: random.Random, who: str):
    boxes, per, fruit = r.randint(2, 9), r.randint(4, 15), r.choice(FRUITS)
    total = boxes * per
    gone = r.randint(1, total - 1)
    q = (f"{who} has {boxes} boxes with {per} {fruit} in each box. {who} gives away {gone} {fruit}. "
         f"How many {fruit} does {who} have left?")
    return q, [(f"{who} has {{eq}} {fruit}.", boxes, "*", per),
               (f"{who} has {{eq}} {fruit} left.", total, "-", gone)]


def _shopping_change(r: random.Random, who: str):
    a, p, b, c = r.randint(2, 6), r.randint(2, 9), r.randint(2, 6), r.randint(1, 5)
    spent = a * p + b * c
    paid = spent + r.randint(1, 30)
    q = (f"{who} buys {a} notebooks at {p} dollars each and {b} pens at {c} dollars each. "
         f"{who} pays with {paid} dollars. How much change does {who} get?")
    return q, [(f"The notebooks cost {{eq}} dollars.", a, "*", p),
               (f"The pens cost {{eq}} dollars.", b, "*", c),
               (f"Altogether {who} spends {{eq}} dollars.", a * p, "+", b * c),
               (f"The change is {{eq}} dollars.", paid, "-", spent)]


def _cookies_shared(r: random.Random, who: str):
    k, m, per = r.randint(2, 8), r.randint(1, 4), r.randint(3, 12)
    trays = k * m
    q = (f"{who} bakes {trays} trays of cookies with {per} cookies on each tray. The cookies are "
         f"shared equally among {k} friends. How many cookies does each friend get?")
    return q, [(f"{who} bakes {{eq}} cookies.", trays, "*", per),
               (f"Each friend gets {{eq}} cookies.", trays * per, "/", k)]


def _savings(r: random.Random, who: str):
    a, w = r.randint(3, 25), r.randint(2, 12)
    spend = r.randint(1, a * w - 1)
    q = (f"{who} saves {a} dollars every week for {w} weeks, then spends {spend} dollars on a game. "
         f"How much money does {who} have left?")
    return q, [(f"{who} saves {{eq}} dollars.", a, "*", w),
               (f"{who} has {{eq}} dollars left.", a * w, "-", spend)]


def _book_pages(r: random.Random, who: str):
    per, days = r.randint(5, 30), r.randint(2, 9)
    pages = per * days + r.randint(1, 200)
    q = (f"A book has {pages} pages. {who} reads {per} pages a day for {days} days. How many pages "
         f"are left to read?")
    return q, [(f"{who} reads {{eq}} pages.", per, "*", days),
               (f"There are {{eq}} pages left.", pages, "-", per * days)]


def _garden(r: random.Random, who: str):
    rows, cols, each = r.randint(2, 9), r.randint(2, 12), r.randint(2, 8)
    q = (f"{who}'s garden has {rows} rows of tomato plants with {cols} plants in each row. Each plant "
         f"gives {each} tomatoes. How many tomatoes does the garden give?")
    return q, [(f"There are {{eq}} plants.", rows, "*", cols),
               (f"They give {{eq}} tomatoes.", rows * cols, "*", each)]


def _bus(r: random.Random, who: str):
    start = r.randint(15, 60)
    off1 = r.randint(1, start - 1)
    on1 = r.randint(1, 20)
    off2 = r.randint(1, start - off1 + on1)
    q = (f"A bus leaves with {start} passengers. At the first stop {off1} passengers get off and "
         f"{on1} get on. At the second stop {off2} passengers get off. How many passengers are on "
         f"the bus now?")
    return q, [(f"After {off1} get off there are {{eq}} passengers.", start, "-", off1),
               (f"After {on1} get on there are {{eq}} passengers.", start - off1, "+", on1),
               (f"At the end there are {{eq}} passengers.", start - off1 + on1, "-", off2)]


def _trip(r: random.Random, who: str):
    s1, h1, s2, h2 = r.randint(30, 90), r.randint(2, 5), r.randint(30, 90), r.randint(2, 5)
    q = (f"{who} drives at {s1} km per hour for {h1} hours, then at {s2} km per hour for {h2} "
         f"hours. How many km does {who} drive in total?")
    return q, [(f"The first part is {{eq}} km.", s1, "*", h1),
               (f"The second part is {{eq}} km.", s2, "*", h2),
               (f"In total {who} drives {{eq}} km.", s1 * h1, "+", s2 * h2)]


def _fruit_bags(r: random.Random, who: str):
    k = r.randint(2, 9)
    total = k * r.randint(2, 15)
    a = r.randint(1, total - 1)
    f1, f2 = r.sample(FRUITS, 2)
    q = (f"{who} picks {a} {f1} and {total - a} {f2} and puts all the fruit into bags of {k}. How "
         f"many bags does {who} fill?")
    return q, [(f"{who} picks {{eq}} pieces of fruit.", a, "+", total - a),
               (f"{who} fills {{eq}} bags.", total, "/", k)]


def _tickets(r: random.Random, who: str):
    adult, child, x, y = r.randint(8, 30), r.randint(3, 15), r.randint(2, 4), r.randint(2, 5)
    q = (f"Tickets cost {adult} dollars for adults and {child} dollars for children. {who}'s family "
         f"buys {x} adult tickets and {y} child tickets. How much do they pay?")
    return q, [(f"Adult tickets cost {{eq}} dollars.", x, "*", adult),
               (f"Child tickets cost {{eq}} dollars.", y, "*", child),
               (f"They pay {{eq}} dollars.", x * adult, "+", y * child)]


def _teams(r: random.Random, who: str):
    classes, size, k = r.randint(2, 6), r.randint(15, 30), r.randint(2, 6)
    total = classes * size
    present = k * r.randint(total // (2 * k) + 1, total // k)
    absent = total - present
    if absent == 0:
        present, absent = present - k, k
    q = (f"A school has {classes} classes with {size} students each. {absent} students are absent. "
         f"{who} splits the students who are present into teams of {k}. How many teams are there?")
    return q, [(f"The school has {{eq}} students.", classes, "*", size),
               (f"{{eq}} students are present.", total, "-", absent),
               (f"There are {{eq}} teams.", present, "/", k)]


def _factory(r: random.Random, who: str):
    rate, hours, days = r.randint(5, 40), r.randint(2, 10), r.randint(2, 7)
    broken = r.randint(1, rate * hours * days // 2)
    q = (f"A machine in {who}'s workshop makes {rate} toys an hour. It runs {hours} hours a day for "
         f"{days} days, and {broken} of the toys are broken. How many good toys are made?")
    return q, [(f"Each day it makes {{eq}} toys.", rate, "*", hours),
               (f"In {days} days it makes {{eq}} toys.", rate * hours, "*", days),
               (f"There are {{eq}} good toys.", rate * hours * days, "-", broken)]


def _pens(r: random.Random, who: str):
    pencil, m, k = r.randint(1, 9), r.randint(2, 6), r.randint(2, 8)
    pen = pencil * m
    q = (f"A pencil costs {pencil} dollars and a pen costs {m} times as much. {who} buys {k} pens "
         f"and one pencil. How much does {who} pay?")
    return q, [(f"A pen costs {{eq}} dollars.", pencil, "*", m),
               (f"{k} pens cost {{eq}} dollars.", k, "*", pen),
               (f"{who} pays {{eq}} dollars.", k * pen, "+", pencil)]


def _ages(r: random.Random, who: str):
    age, older, m = r.randint(3, 12), r.randint(2, 8), r.randint(2, 3)
    brother = age + older
    q = (f"{who} is {age} years old. {who}'s brother is {older} years older. Their grandfather is "
         f"{m} times as old as the brother. How old is the grandfather?")
    return q, [(f"The brother is {{eq}} years old.", age, "+", older),
               (f"The grandfather is {{eq}} years old.", brother, "*", m)]


def _pizza(r: random.Random, who: str):
    pizzas, slices, eaters = r.randint(2, 8), r.choice((6, 8, 10, 12)), r.randint(2, 6)
    total = pizzas * slices
    each = r.randint(1, total // eaters)
    q = (f"{who} orders {pizzas} pizzas cut into {slices} slices each. {eaters} people eat {each} "
         f"slices each. How many slices are left?")
    return q, [(f"There are {{eq}} slices.", pizzas, "*", slices),
               (f"They eat {{eq}} slices.", eaters, "*", each),
               (f"{{eq}} slices are left.", total, "-", eaters * each)]


TEMPLATES: dict[str, Callable[[random.Random, str], tuple[str, Steps]]] = {
    "boxes_give_away": _boxes_give_away, "shopping_change": _shopping_change,
    "cookies_shared": _cookies_shared, "savings": _savings, "book_pages": _book_pages,
    "garden": _garden, "bus": _bus, "trip": _trip, "fruit_bags": _fruit_bags, "tickets": _tickets,
    "teams": _teams, "factory": _factory, "pens": _pens, "ages": _ages, "pizza": _pizza,
}


def make_example(template: str, rng: random.Random) -> Example:
    """One example from the named template."""
    who = rng.choice(NAMES)
    question, steps = TEMPLATES[template](rng, who)
    lines, result = _solve(steps)
    answer = "\n".join(lines) + f"\n#### {result}"
    return Example(prompt=question, answer=answer, gold=str(result), task=TASK,
                   meta={"template": template, "steps": len(steps)})


def iter_examples(seed: int, templates: tuple[str, ...] | list[str] | None = None,
                  split: str = "train") -> Iterator[Example]:
    """Endless deterministic stream over `templates` (default all); only prompts hashing into
    `split` ("train" | "eval" | "any") are yielded."""
    return iter_template_examples(TASK, TEMPLATES, make_example, seed, templates, split)


def generate(n: int, seed: int, **opts) -> list[Example]:
    """`n` examples, deterministic for (`seed`, `opts`); see `iter_examples` for the options."""
    return list(islice(iter_examples(seed, **opts), n))


def extract_answer(text: str) -> str | None:
    """The first `#### N` answer (lm-eval-harness strict regex)."""
    return extract_hash_answer(text)


def score(completion: str, example: Example) -> dict[str, float]:
    """`score` (numeric match of `#### N`), `strict`, `numeric`, `has_answer`."""
    return hash_answer_scores(completion, example.gold)
