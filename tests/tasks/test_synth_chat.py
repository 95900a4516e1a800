"""synth_chat: every response recomputed from the prompt text alone by independent solvers,
determinism, hash splits, diversity, scoring, numbers in words, and the generated paragraphs."""

from __future__ import annotations

import re
from itertools import islice

import pytest

from looplm.tasks import GENERATED_TASKS, get_task
from looplm.tasks import synth_chat as sc
from looplm.tasks.base import in_split, overlap

# ----------------------------------------------------------------------------- independent solvers


def quoted(instruction: str) -> list[str]:
    return re.findall(r'"([^"]+)"', instruction)


def ints(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", text)]


def times(k: int, word: str) -> str:
    return f"{k} {word}" if k == 1 else f"{k} {word}s"


_UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve "
                                     "thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i > 1}


def words_to_number(text: str) -> int:
    """Parse "ninety-nine thousand three hundred one" back to an int (the inverse direction)."""
    total, current = 0, 0
    for w in text.replace("-", " ").split():
        if w in _UNITS:
            current += _UNITS[w]
        elif w in _TENS:
            current += _TENS[w]
        elif w == "hundred":
            current *= 100
        elif w == "thousand":
            total, current = total + current * 1000, 0
        else:
            raise ValueError(w)
    return total + current


def solve_give_question(inp: str) -> str:
    sentence, question = inp.split("\n")
    places = "|".join(map(re.escape, sc.PLACES))
    m = re.fullmatch(rf"Sentence: (\w+) (\w+) (.+) to (\w+) ({places})\.", sentence)
    giver, _, thing, receiver, place = m.groups()
    if question.startswith("Question: Who"):
        return giver
    if question.startswith("Question: What"):
        return thing
    if question.startswith("Question: Where"):
        return place
    assert question.startswith("Question: To whom")
    return receiver


def solve(template: str, instruction: str, inp: str) -> str:
    """The expected response computed from the visible prompt (plus the public word lists)."""
    words = inp.split()
    items = inp.split(", ")
    q = quoted(instruction)
    if template == "reverse_words":
        return " ".join(words[::-1])
    if template == "sort_words":
        return ", ".join(sorted(items))
    if template == "count_words":
        return f"The sentence has {len(words)} words."
    if template == "spell_word":
        return "-".join(q[0])
    if template == "backwards":
        return q[0][::-1]
    if template == "word_length":
        return f'The word "{q[0]}" has {times(len(q[0]), "letter")}.'
    if template == "count_letter":
        c, w = q
        return f'The letter "{c}" appears {times(w.count(c), "time")} in "{w}".'
    if template == "vowels":
        return f'The word "{q[0]}" has {times(sum(ch in "aeiou" for ch in q[0]), "vowel")}.'
    if template == "number_range":
        a, b = ints(instruction)
        return ", ".join(str(x) for x in range(a, b + 1))
    if template == "parity_range":
        a, b = ints(instruction)
        odd = "odd" in instruction
        return ", ".join(str(x) for x in range(a, b + 1) if x % 2 == odd)
    if template == "number_words":
        return f"<{ints(instruction)[0]}>"  # checked through words_to_number below
    if template == "sort_numbers":
        return ", ".join(map(str, sorted(map(int, items), reverse="largest to smallest" in instruction)))
    if template == "extreme_number":
        return str((max if "largest" in instruction else min)(map(int, items)))
    if template == "sum_numbers":
        xs = list(map(int, items))
        return " + ".join(map(str, xs)) + f" = {sum(xs)}"
    if template == "compare_numbers":
        a, b = ints(instruction)
        return "Yes" if (a > b if "greater" in instruction else a < b) else "No"
    if template == "longest_word":
        ws = inp.rstrip(".").split()
        key = len if "longest" in instruction else (lambda w: -len(w))
        return next(w for w in ws if key(w) == max(map(key, ws)))
    if template == "first_alphabetical":
        return sorted(items)[0]
    if template == "first_letters":
        return " ".join(w[0] for w in words)
    if template == "capitalize_words":
        return " ".join(w[:1].upper() + w[1:] for w in words)
    if template == "uppercase":
        return inp.upper()
    if template == "numbered_list":
        return "\n".join(f"{i + 1}. {x}" for i, x in enumerate(items))
    if template == "remove_word":
        return " ".join(w for w in words if w != q[0])
    if template in ("plural_subject", "past_tense"):
        noun_pl = {s: p for s, p in sc.NOUNS}
        base = {t: b for t, b, _ in sc.VERBS}
        past = {f: p for t, b, p in sc.VERBS for f in (t, b)}
        the, adj, noun, verb, *rest = words
        if template == "plural_subject":
            return " ".join([the, adj, noun_pl[noun], base[verb], *rest])
        return " ".join([the, adj, noun, past[verb], *rest])
    if template in ("who", "what", "where", "to_whom"):
        return solve_give_question(inp)
    raise AssertionError(f"no solver for template {template!r}")


def split_prompt(prompt: str) -> tuple[str, str]:
    instruction, _, inp = prompt.partition("\n\nInput:\n")
    return instruction, inp


# ----------------------------------------------------------------------------- tests


def test_registered_as_generated_task():
    assert "synth_chat" in GENERATED_TASKS and get_task("synth-chat") is sc
    assert len(sc.TEMPLATES) >= 20


def test_every_response_matches_an_independent_solver():
    exs = sc.generate(1500, seed=0, split="any")
    seen = set()
    for ex in exs:
        t = ex.meta["template"]
        seen.add(t)
        instruction, inp = split_prompt(ex.prompt)
        assert (instruction, inp) == (ex.meta["instruction"], ex.meta["input"])
        assert ex.answer == ex.gold and ex.answer.strip()
        if t == "number_words":
            assert words_to_number(ex.answer) == ints(instruction)[0], ex.prompt
        else:
            assert ex.answer == solve(t, instruction, inp), (t, ex.prompt)
        assert sc.score(ex.answer, ex)["score"] == 1.0
    assert seen == set(sc.TEMPLATES)  # every template shows up in 1500 items


def test_deterministic_and_seed_dependent():
    a, b = sc.generate(80, seed=5), sc.generate(80, seed=5)
    assert [e.to_dict() for e in a] == [e.to_dict() for e in b]
    assert [e.prompt for e in a] != [e.prompt for e in sc.generate(80, seed=6)]
    pa = list(islice(sc.iter_paragraphs(5), 20))
    assert pa == list(islice(sc.iter_paragraphs(5), 20)) != list(islice(sc.iter_paragraphs(6), 20))


def test_train_and_eval_splits_are_disjoint():
    train = sc.generate(3000, seed=0, split="train")
    evals = sc.generate(400, seed=0, split="eval")
    assert all(in_split(e.prompt, "train") for e in train)
    assert all(in_split(e.prompt, "eval") for e in evals)
    assert not overlap(train, evals)
    ptrain = set(islice(sc.iter_paragraphs(0, "train"), 2000))
    peval = set(islice(sc.iter_paragraphs(0, "eval"), 300))
    assert not ptrain & peval and all(in_split(p, "eval") for p in peval)
    with pytest.raises(ValueError, match="split"):
        sc.generate(1, seed=0, split="test")


def test_diverse_prompts_and_template_option():
    exs = sc.generate(2000, seed=1)
    assert len({e.prompt for e in exs}) > 0.9 * len(exs)
    assert len({e.meta["instruction"] for e in exs}) > 500
    only = sc.generate(30, seed=0, templates=["past_tense", "who"])
    assert {e.meta["template"] for e in only} == {"past_tense", "who"}
    with pytest.raises(ValueError, match="templates"):
        sc.generate(1, seed=0, templates=["poetry"])


def test_score_and_extract_answer():
    ex = next(e for e in sc.generate(200, seed=2) if e.meta["template"] == "count_words")
    assert sc.score(f"  {ex.gold[:-1]}  ", ex)["score"] == 1.0  # whitespace and final period ignored
    assert sc.score(ex.gold.lower(), ex)["score"] == 0.0  # case is kept
    assert sc.score(ex.gold.lower(), ex)["f1"] == 1.0
    wrong = sc.score("The sentence has 999 words.", ex)
    assert wrong["score"] == 0.0 and 0.5 < wrong["f1"] < 1.0
    assert sc.score("", ex) == {"score": 0.0, "exact": 0.0, "f1": 0.0}
    assert sc.extract_answer("  Yes \n") == "Yes" and sc.extract_answer(" \n") is None
    assert sc.normalize("a\n b  c.") == "a b c"


@pytest.mark.parametrize("n, words", [(0, "zero"), (13, "thirteen"), (40, "forty"), (99, "ninety-nine"),
                                      (101, "one hundred one"), (1000, "one thousand"),
                                      (2005, "two thousand five"),
                                      (99_999, "ninety-nine thousand nine hundred ninety-nine")])
def test_number_to_words(n, words):
    assert sc.number_to_words(n) == words
    assert words_to_number(words) == n


def test_number_to_words_range():
    assert all(words_to_number(sc.number_to_words(n)) == n for n in range(0, 100_000, 37))
    for bad in (-1, 1_000_000):
        with pytest.raises(ValueError, match="number_to_words"):
            sc.number_to_words(bad)


def test_paragraphs_are_english_like_from_the_vocabulary():
    vocab = {w.lower() for w in sc.WORDS} | {n.lower() for n, _ in sc.NAMES} | {p for _, p in sc.NAMES}
    for phrase in sc.PLACES + sc.TIMES:
        vocab |= set(phrase.lower().split())
    vocab |= {w for w in sc.ADJECTIVES} | {v for g in sc.GIVE_VERBS for v in g}
    vocab |= set(sc.number_to_words(k) for k in range(2, 13))
    vocab |= set("a an the to with lived and walked there were was because said that".split())
    paras = list(islice(sc.iter_paragraphs(3), 300))
    lengths = []
    for p in paras:
        sentences = re.split(r"(?<=\.) ", p)
        lengths.append(len(sentences))
        assert all(s[0].isupper() and s.endswith(".") for s in sentences), p
        tokens = re.findall(r"[a-z]+", p.lower())
        assert set(tokens) <= vocab, set(tokens) - vocab
    assert min(lengths) == 3 and max(lengths) == 6
    assert len(set(paras)) == len(paras)
    with pytest.raises(ValueError, match="min_sentences"):
        next(sc.iter_paragraphs(0, min_sentences=0))
