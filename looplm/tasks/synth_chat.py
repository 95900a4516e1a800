"""Generated English: Alpaca-style instruction/response pairs ("synthetic chat") and paragraphs.

Offline stand-ins for the two English sources of the report (Alpaca for SFT chat, WikiText for the
pre-training `text` domain), used only when asked for explicitly (`looplm data sft --alpaca
generated`, `looplm data pretrain-mix --source text=generated`). Every item is built from small word
lists (names, nouns with plurals, verbs with past forms, things, adjectives, places, times).

    prompt: "Rewrite the following sentence in the past tense.\\n\\nInput:\\nThe old fox carries a red
             box near the river."                    (`alpaca.format_prompt(instruction, input)`)
    answer: "The old fox carried a red box near the river."
    gold:   the same as answer

28 templates (`TEMPLATES`), each with a few instruction phrasings, and every response computable from
the prompt alone: reverse / sort / count / list words, spell a word, reverse it, count its letters,
vowels or one letter, number ranges (all, even, odd), numbers in words, sort / sum / compare numbers,
the longest / shortest / alphabetically first word, first letters, capitalisation, a numbered list,
removing a word, plural subject, past tense, and who / what / where / to-whom questions about a given
sentence. `split` ("train" | "eval" | "any") keeps train and eval prompts disjoint by hash
(`base.in_split`).

`score`: `score` = `exact` = exact match after `normalize` (surrounding whitespace and one final `.`
removed, inner whitespace collapsed; case kept), plus `f1` (bag-of-words token F1, case-folded).

`iter_paragraphs(seed, split)`: endless English-like paragraphs (3-6 short narrative sentences from
the same vocabulary) for the pre-training `text` domain, split by hash of the paragraph text.

Simplification: the language is small and formulaic (a few hundred words, fixed sentence shapes);
it exercises instruction following and the chat template, not world knowledge or fluent prose.
"""

from __future__ import annotations

import random
import re
from itertools import islice
from typing import Callable, Iterator

from looplm.tasks.alpaca import format_prompt
from looplm.tasks.base import Example, check_split_misses, in_split, iter_template_examples, token_f1

TASK = "synth_chat"

NAMES = (("Anna", "she"), ("Tom", "he"), ("Maria", "she"), ("Liam", "he"), ("Emma", "she"),
         ("Noah", "he"), ("Sara", "she"), ("Omar", "he"), ("Mei", "she"), ("Ravi", "he"),
         ("Lucia", "she"), ("Ben", "he"), ("Aisha", "she"), ("Leo", "he"), ("Nina", "she"),
         ("Jack", "he"))
NOUNS = (("cat", "cats"), ("dog", "dogs"), ("bird", "birds"), ("child", "children"), ("man", "men"),
         ("woman", "women"), ("fox", "foxes"), ("teacher", "teachers"), ("farmer", "farmers"),
         ("baker", "bakers"), ("girl", "girls"), ("boy", "boys"), ("horse", "horses"),
         ("mouse", "mice"), ("student", "students"), ("friend", "friends"), ("goose", "geese"),
         ("painter", "painters"), ("sailor", "sailors"), ("neighbour", "neighbours"))
VERBS = (("sees", "see", "saw"), ("finds", "find", "found"), ("carries", "carry", "carried"),
         ("likes", "like", "liked"), ("watches", "watch", "watched"), ("paints", "paint", "painted"),
         ("takes", "take", "took"), ("brings", "bring", "brought"), ("holds", "hold", "held"),
         ("buys", "buy", "bought"), ("makes", "make", "made"), ("draws", "draw", "drew"),
         ("follows", "follow", "followed"), ("cleans", "clean", "cleaned"), ("opens", "open", "opened"),
         ("wants", "want", "wanted"), ("chooses", "choose", "chose"), ("catches", "catch", "caught"),
         ("throws", "throw", "threw"), ("drops", "drop", "dropped"))  # (3rd person, base, past)
GIVE_VERBS = (("gave", "give"), ("showed", "show"), ("sent", "send"), ("handed", "hand"),
              ("threw", "throw"), ("sold", "sell"), ("lent", "lend"), ("brought", "bring"))
THINGS = (("ball", "balls"), ("book", "books"), ("box", "boxes"), ("apple", "apples"),
          ("letter", "letters"), ("basket", "baskets"), ("lamp", "lamps"), ("kite", "kites"),
          ("hat", "hats"), ("cup", "cups"), ("map", "maps"), ("key", "keys"), ("bag", "bags"),
          ("chair", "chairs"), ("drum", "drums"), ("shell", "shells"), ("coin", "coins"),
          ("flower", "flowers"), ("ribbon", "ribbons"), ("candle", "candles"), ("orange", "oranges"),
          ("umbrella", "umbrellas"))
THING_ADJECTIVES = ("small", "big", "red", "green", "blue", "old", "brown", "yellow", "bright", "little",
                    "heavy", "round", "new", "orange", "empty", "shiny")
BEING_ADJECTIVES = ("small", "big", "old", "young", "quiet", "happy", "tall", "brown", "little", "clever",
                    "busy", "gentle", "hungry", "brave")
ADJECTIVES = tuple(sorted(set(THING_ADJECTIVES) | set(BEING_ADJECTIVES)))
PLACES = ("in the garden", "near the river", "at the market", "on the hill", "by the lake",
          "in the kitchen", "at school", "in the park", "under the bridge", "beside the road",
          "in the village", "at the station")
TIMES = ("in the morning", "after lunch", "in the evening", "on Sunday", "at night", "before dinner",
         "after school", "on a rainy day")
DESTINATIONS = ("market", "river", "station", "library", "beach", "forest", "bakery", "harbour")
WORDS: tuple[str, ...] = tuple(sorted({w for pair in NOUNS + THINGS for w in pair} | set(ADJECTIVES)
                                      | {w for triple in VERBS for w in triple} | set(DESTINATIONS)))
VOWELS = "aeiou"

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_to_words(n: int) -> str:
    """English words for 0 <= n < 1,000,000, American style without "and": 347 -> "three hundred
    forty-seven", 2005 -> "two thousand five"."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number_to_words needs 0 <= n < 1000000, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + (f"-{_ONES[n % 10]}" if n % 10 else "")
    if n < 1000:
        return f"{_ONES[n // 100]} hundred" + (f" {number_to_words(n % 100)}" if n % 100 else "")
    return f"{number_to_words(n // 1000)} thousand" + (f" {number_to_words(n % 1000)}" if n % 1000 else "")


def article(word: str) -> str:
    return "an" if word[0] in VOWELS else "a"


def plural(k: int, word: str, words: str | None = None) -> str:
    return f"{k} {word if k == 1 else (words or word + 's')}"


# ----------------------------------------------------------------------------- sentences


def _thing_phrase(rng: random.Random) -> str:
    """"the red ball", "a new kite", "an old box" or "the umbrella"."""
    thing = rng.choice(THINGS)[0]
    if rng.random() < 0.25:
        return f"the {thing}"
    adj = rng.choice(THING_ADJECTIVES)
    return f"{rng.choice(('the', article(adj)))} {adj} {thing}"


def _clause(rng: random.Random) -> tuple[str, int, int, str, str]:
    """(adjective, noun index, verb index, object phrase, place) of "The ADJ NOUN VERB OBJ PLACE."."""
    return (rng.choice(BEING_ADJECTIVES), rng.randrange(len(NOUNS)), rng.randrange(len(VERBS)),
            _thing_phrase(rng), rng.choice(PLACES))


def render_clause(adj: str, noun: str, verb: str, obj: str, place: str) -> str:
    return f"The {adj} {noun} {verb} {obj} {place}."


def _give_event(rng: random.Random) -> tuple[str, tuple[str, str], str, str, str]:
    """(giver, (past, base) verb, thing phrase, receiver, place) of a "X gave Y to Z PLACE." event."""
    giver, receiver = (n for n, _ in rng.sample(NAMES, 2))
    return giver, rng.choice(GIVE_VERBS), _thing_phrase(rng), receiver, rng.choice(PLACES)


def sentence_words(rng: random.Random) -> list[str]:
    """The words of one generated sentence (no final period, lower case but for names), in one of
    three shapes."""
    kind = rng.randrange(3)
    if kind == 0:
        adj, n, v, obj, place = _clause(rng)
        return render_clause(adj, NOUNS[n][0], VERBS[v][0], obj, place)[:-1].lower().split()
    if kind == 1:
        who = rng.choice(NAMES)[0]
        return f"{who} {rng.choice(VERBS)[2]} {_thing_phrase(rng)} {rng.choice(TIMES)}".split()
    giver, (past, _), thing, receiver, place = _give_event(rng)
    return f"{giver} {past} {thing} to {receiver} {place}".split()


def as_sentence(words: list[str]) -> str:
    """Words -> "Capitalised sentence."."""
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def _distinct_words(rng: random.Random, lo: int, hi: int) -> list[str]:
    return rng.sample(WORDS, rng.randint(lo, hi))


def _numbers(rng: random.Random, lo: int, hi: int, k_lo: int = 3, k_hi: int = 7) -> list[int]:
    return rng.sample(range(lo, hi + 1), rng.randint(k_lo, k_hi))


def _join(xs: list) -> str:
    return ", ".join(str(x) for x in xs)


# ----------------------------------------------------------------------------- templates
# Each template takes an rng and returns (instruction, input, response).

Template = Callable[[random.Random], tuple[str, str, str]]


def _reverse_words(r: random.Random):
    words = sentence_words(r)
    ask = r.choice(("Reverse the order of the words in this sentence.",
                    "Write the words of the following sentence in reverse order.",
                    "Rewrite the sentence below with its words in reverse order."))
    return ask, " ".join(words), " ".join(reversed(words))


def _sort_words(r: random.Random):
    words = _distinct_words(r, 4, 8)
    ask = r.choice(("Sort the following words in alphabetical order.", "Put these words in alphabetical order.",
                    "Arrange the words below alphabetically."))
    return ask, _join(words), _join(sorted(words))


def _count_words(r: random.Random):
    words = sentence_words(r)
    ask = r.choice(("How many words are in the following sentence?", "Count the words in this sentence."))
    return ask, as_sentence(words), f"The sentence has {len(words)} words."


def _spell_word(r: random.Random):
    w = r.choice(WORDS)
    ask = r.choice((f'Spell the word "{w}" letter by letter.', f'Spell "{w}", separating the letters with hyphens.'))
    return ask, "", "-".join(w)


def _backwards(r: random.Random):
    w = r.choice(WORDS)
    return r.choice((f'Write the word "{w}" backwards.', f'Reverse the letters of "{w}".')), "", w[::-1]


def _word_length(r: random.Random):
    w = r.choice(WORDS)
    ask = r.choice((f'How many letters are in the word "{w}"?', f'Count the letters in "{w}".'))
    return ask, "", f'The word "{w}" has {plural(len(w), "letter")}.'


def _count_letter(r: random.Random):
    w = r.choice(WORDS)
    c = r.choice(w) if r.random() < 0.8 else r.choice([ch for ch in "abcdefghijklmnopqrstuvwxyz" if ch not in w])
    ask = f'How many times does the letter "{c}" appear in the word "{w}"?'
    return ask, "", f'The letter "{c}" appears {plural(w.count(c), "time")} in "{w}".'


def _vowels(r: random.Random):
    w = r.choice(WORDS)
    k = sum(ch in VOWELS for ch in w)
    ask = r.choice((f'How many vowels are in the word "{w}"?', f'Count the vowels (a, e, i, o, u) in "{w}".'))
    return ask, "", f'The word "{w}" has {plural(k, "vowel")}.'


def _number_range(r: random.Random):
    a = r.randint(0, 200)
    b = a + r.randint(2, 12)
    ask = r.choice((f"List the whole numbers from {a} to {b}.", f"Count from {a} to {b}.",
                    f"Write every number from {a} to {b}, separated by commas."))
    return ask, "", _join(range(a, b + 1))


def _parity_range(r: random.Random):
    a = r.randint(0, 200)
    b = a + r.randint(4, 20)
    parity = r.choice(("even", "odd"))
    first = a + ((a % 2) != (parity == "odd"))
    ask = r.choice((f"List the {parity} numbers from {a} to {b}.", f"Write all {parity} numbers between {a} and {b}, inclusive."))
    return ask, "", _join(range(first, b + 1, 2))


def _number_words(r: random.Random):
    n = r.choice((r.randint(0, 99), r.randint(100, 999), r.randint(1000, 99_999)))
    ask = r.choice((f"Write the number {n} in words.", f"How do you write {n} in English words?",
                    f"Spell out the number {n}."))
    return ask, "", number_to_words(n)


def _sort_numbers(r: random.Random):
    xs = _numbers(r, 0, 999)
    up = r.random() < 0.5
    ask = f"Sort these numbers from {'smallest to largest' if up else 'largest to smallest'}."
    return ask, _join(xs), _join(sorted(xs, reverse=not up))


def _extreme_number(r: random.Random):
    xs = _numbers(r, 0, 999)
    which = r.choice(("largest", "smallest"))
    ask = r.choice((f"Which of these numbers is the {which}?", f"Find the {which} number in this list."))
    return ask, _join(xs), str(max(xs) if which == "largest" else min(xs))


def _sum_numbers(r: random.Random):
    xs = [r.randint(1, 99) for _ in range(r.randint(2, 5))]
    ask = r.choice(("What is the sum of these numbers?", "Add up the following numbers."))
    return ask, _join(xs), f"{' + '.join(map(str, xs))} = {sum(xs)}"


def _compare_numbers(r: random.Random):
    a, b = r.sample(range(0, 1000), 2)
    rel = r.choice(("greater", "less"))
    yes = a > b if rel == "greater" else a < b
    return f"Is {a} {rel} than {b}? Answer yes or no.", "", "Yes" if yes else "No"


def _longest_word(r: random.Random):
    sentence = as_sentence(sentence_words(r))
    words = sentence[:-1].split()  # as shown, first word capitalised
    which = r.choice(("longest", "shortest"))
    best = (max if which == "longest" else min)(words, key=len)  # the first of equally long words
    ask = (f"Which word in the following sentence is the {which}? If several words are equally long, "
           f"give the first of them.")
    return ask, sentence, best


def _first_alphabetical(r: random.Random):
    words = _distinct_words(r, 3, 6)
    return "Which of the following words comes first in alphabetical order?", _join(words), min(words)


def _first_letters(r: random.Random):
    words = sentence_words(r)
    ask = r.choice(("Write the first letter of each word in the following sentence, separated by spaces.",
                    "Give the initial letter of every word in this sentence, separated by spaces."))
    return ask, " ".join(words), " ".join(w[0] for w in words)


def _capitalize_words(r: random.Random):
    words = [w.lower() for w in sentence_words(r)]
    ask = r.choice(("Capitalise the first letter of every word in this phrase.",
                    "Rewrite the phrase below in title case, capitalising every word."))
    return ask, " ".join(words), " ".join(w[0].upper() + w[1:] for w in words)


def _uppercase(r: random.Random):
    words = sentence_words(r)
    return "Rewrite the following sentence in capital letters.", as_sentence(words), as_sentence(words).upper()


def _numbered_list(r: random.Random):
    items = [t[1] for t in r.sample(THINGS, r.randint(3, 6))]
    ask = r.choice(("Make a numbered list of the following items.", "Turn these items into a numbered list."))
    return ask, _join(items), "\n".join(f"{i}. {x}" for i, x in enumerate(items, start=1))


def _remove_word(r: random.Random):
    words = sentence_words(r)
    w = r.choice(words)
    ask = f'Rewrite the following sentence without the word "{w}", removing every occurrence of it.'
    return ask, " ".join(words), " ".join(x for x in words if x != w)


def _plural_subject(r: random.Random):
    adj, n, v, obj, place = _clause(r)
    ask = r.choice(("Rewrite the following sentence with the subject in the plural.",
                    "Change the subject of this sentence to the plural form."))
    return (ask, render_clause(adj, NOUNS[n][0], VERBS[v][0], obj, place),
            render_clause(adj, NOUNS[n][1], VERBS[v][1], obj, place))


def _past_tense(r: random.Random):
    adj, n, v, obj, place = _clause(r)
    noun = NOUNS[n][r.randrange(2)]
    verb = VERBS[v][0] if noun == NOUNS[n][0] else VERBS[v][1]
    ask = r.choice(("Rewrite the following sentence in the past tense.", "Change this sentence to the past tense."))
    return ask, render_clause(adj, noun, verb, obj, place), render_clause(adj, noun, VERBS[v][2], obj, place)


def _question(kind: str) -> Template:
    """who / what / where / to-whom questions about a given "X gave Y to Z PLACE." sentence."""

    def make(r: random.Random):
        giver, (past, base), thing, receiver, place = _give_event(r)
        question, answer = {
            "who": (f"Who {past} {thing} to {receiver}?", giver),
            "what": (f"What did {giver} {base} to {receiver}?", thing),
            "where": (f"Where did {giver} {base} {thing} to {receiver}?", place),
            "to_whom": (f"To whom did {giver} {base} {thing}?", receiver),
        }[kind]
        ask = r.choice(("Read the sentence and answer the question.",
                        "Answer the question using only the sentence below."))
        return ask, f"Sentence: {giver} {past} {thing} to {receiver} {place}.\nQuestion: {question}", answer

    return make


TEMPLATES: dict[str, Template] = {
    "reverse_words": _reverse_words, "sort_words": _sort_words, "count_words": _count_words,
    "spell_word": _spell_word, "backwards": _backwards, "word_length": _word_length,
    "count_letter": _count_letter, "vowels": _vowels, "number_range": _number_range,
    "parity_range": _parity_range, "number_words": _number_words, "sort_numbers": _sort_numbers,
    "extreme_number": _extreme_number, "sum_numbers": _sum_numbers, "compare_numbers": _compare_numbers,
    "longest_word": _longest_word, "first_alphabetical": _first_alphabetical,
    "first_letters": _first_letters, "capitalize_words": _capitalize_words, "uppercase": _uppercase,
    "numbered_list": _numbered_list, "remove_word": _remove_word, "plural_subject": _plural_subject,
    "past_tense": _past_tense, "who": _question("who"), "what": _question("what"),
    "where": _question("where"), "to_whom": _question("to_whom"),
}


def make_example(template: str, rng: random.Random) -> Example:
    """One example from the named template."""
    instruction, input_text, response = TEMPLATES[template](rng)
    return Example(prompt=format_prompt(instruction, input_text), answer=response, gold=response, task=TASK,
                   meta={"template": template, "instruction": instruction, "input": input_text})


def iter_examples(seed: int, templates: tuple[str, ...] | list[str] | None = None,
                  split: str = "train") -> Iterator[Example]:
    """Endless deterministic stream over `templates` (default all); only prompts hashing into
    `split` ("train" | "eval" | "any") are yielded."""
    return iter_template_examples(TASK, TEMPLATES, make_example, seed, templates, split)


def generate(n: int, seed: int, **opts) -> list[Example]:
    """`n` examples, deterministic for (`seed`, `opts`); see `iter_examples` for the options."""
    return list(islice(iter_examples(seed, **opts), n))


# ----------------------------------------------------------------------------- paragraphs


def _story_sentence(r: random.Random, who: str, pron: str, other: str) -> str:
    """One narrative sentence about `who` (pronoun `pron`) and `other`, from one of nine shapes."""
    adj, adj2 = r.sample(THING_ADJECTIVES, 2)
    being = r.choice(BEING_ADJECTIVES)
    thing, things = r.choice(THINGS)
    k = number_to_words(r.randint(2, 12))
    shapes: tuple[Callable[[], str], ...] = (
        lambda: f"{who} {r.choice(VERBS)[2]} {_thing_phrase(r)} {r.choice(PLACES)}.",
        lambda: f"{pron.capitalize()} {r.choice(GIVE_VERBS)[0]} {_thing_phrase(r)} to {other} {r.choice(TIMES)}.",
        lambda: render_clause(being, r.choice(NOUNS)[0], r.choice(VERBS)[2], _thing_phrase(r), r.choice(PLACES)),
        lambda: f"There were {k} {being} {r.choice(NOUNS)[1]} {r.choice(PLACES)}.",
        lambda: f"{who} and {other} walked to the {r.choice(DESTINATIONS)} {r.choice(TIMES)}.",
        lambda: (f"{pron.capitalize()} {r.choice(VERBS)[2]} the {thing} because {pron} "
                 f"{r.choice(('liked', 'wanted'))} {adj} {things}."),
        lambda: f"The {thing} was {adj} and {adj2}.",
        lambda: f"{r.choice(TIMES).capitalize()}, {who} {r.choice(VERBS)[2]} {k} {things}.",
        lambda: f"{other} said that the {r.choice(NOUNS)[0]} {r.choice(VERBS)[2]} {_thing_phrase(r)}.",
    )
    return r.choice(shapes)()


def make_paragraph(r: random.Random, min_sentences: int = 3, max_sentences: int = 6) -> str:
    """A paragraph: an opening sentence naming two people, then short sentences about them."""
    (who, pron), (other, _) = r.sample(NAMES, 2)
    adj = r.choice(BEING_ADJECTIVES)
    first = f"{who} lived {r.choice(PLACES)} with {article(adj)} {adj} {r.choice(NOUNS)[0]}."
    rest = [_story_sentence(r, who, pron, other) for _ in range(r.randint(min_sentences, max_sentences) - 1)]
    return " ".join([first, *rest])


def iter_paragraphs(seed: int, split: str = "train", min_sentences: int = 3,
                    max_sentences: int = 6) -> Iterator[str]:
    """Endless deterministic English-like paragraphs; only texts hashing into `split` are yielded,
    so a train stream never shares a paragraph with an eval stream."""
    if not 1 <= min_sentences <= max_sentences:
        raise ValueError(f"options 'min_sentences' <= 'max_sentences' must be >= 1, got "
                         f"{min_sentences}, {max_sentences}")
    rng = random.Random(f"{TASK}:text:{seed}")
    misses = 0
    while True:
        text = make_paragraph(rng, min_sentences, max_sentences)
        if not in_split(text, split):
            misses = check_split_misses(misses + 1, TASK, split)
            continue
        misses = 0
        yield text


# ----------------------------------------------------------------------------- scoring

_SPACE_RE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Surrounding whitespace and one final `.` removed, inner whitespace runs -> one space; case kept."""
    text = _SPACE_RE.sub(" ", text.strip())
    return text[:-1].rstrip() if text.endswith(".") else text


def extract_answer(text: str) -> str | None:
    """The response text itself (stripped); None when empty."""
    return text.strip() or None


def score(completion: str, example: Example) -> dict[str, float]:
    """`score` = `exact` (normalised exact match with the reference response), and token `f1`."""
    exact = float(normalize(completion) == normalize(example.gold))
    return {"score": exact, "exact": exact, "f1": token_f1(completion, example.gold)}
