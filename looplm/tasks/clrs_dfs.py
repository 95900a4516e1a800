"""CLRS-Text DFS: directed Erdős–Rényi graphs in DeepMind's CLRS-Text format, byte for byte.

Format (what google-deepmind/clrs `clrs/_src/clrs_text/` produces for `dfs`):

    question (hints): "dfs:\\nA: [[1 1 0 1], [1 1 0 0], ...], initial_trace: [0 1 2 3]\\ntrace | pi:\\n"
    answer   (hints): "[0 1 2 3], [0 0 2 3], ... | [0 0 3 0]\\n\\n"
    question (no hints): "dfs:\\nA: [[...], ...]\\npi:\\n"      answer: "[0 0 3 0]\\n\\n"

`A[u][v] = 1` for an edge u->v (p = 0.5, self-loops allowed). DFS runs from node 0 upward over
unvisited roots, neighbours in index order. The CLRS algorithm pushes a `pi_h` (predecessor array)
snapshot at each root start, each discovery, each tree edge and each finish (3n pushes); the first is
the `initial_trace` and the last is dropped from the trace (it equals the output), so the answer lists
3n - 2 snapshots, then ` | ` and the final `pi`.

Scoring: `score` = exact match of the final `pi` (after the last ` | `), `trace_exact` = the whole
answer (up to the `\\n\\n` terminator) matches, `pi_element_acc` = fraction of gold `pi` entries
predicted at the right position.

Simplification: graphs are sampled with Python's `random` (not DeepMind's numpy sampler), so the
*distribution* matches the official one but not the individual samples for a given seed.
"""

from __future__ import annotations

import random
import re
from itertools import islice
from typing import Iterator

from looplm.tasks.base import Example, check_positive_int, check_split_misses, in_split

TASK = "clrs_dfs"
DEFAULT_NODE_COUNTS: tuple[int, ...] = (4, 5)


def dfs_pi_snapshots(adjacency: list[list[int]]) -> list[list[int]]:
    """All 3n `pi_h` snapshots of CLRS's `dfs` probe, in push order (root start, discovery, tree
    edge, finish)."""
    n = len(adjacency)
    pi = list(range(n))
    visited = [False] * n
    next_nb = [0] * n  # scan position per node: earlier neighbours are already visited
    snaps: list[list[int]] = []
    for root in range(n):
        if visited[root]:
            continue
        snaps.append(pi.copy())  # root start
        visited[root] = True
        snaps.append(pi.copy())  # discovery of the root
        stack = [root]
        while stack:
            u = stack[-1]
            row = adjacency[u]
            v = next_nb[u]
            while v < n and not (row[v] and not visited[v]):
                v += 1
            next_nb[u] = v
            if v < n:
                pi[v] = u
                visited[v] = True
                snaps.append(pi.copy())  # tree edge u -> v
                snaps.append(pi.copy())  # discovery of v
                stack.append(v)
            else:
                snaps.append(pi.copy())  # finish u
                stack.pop()
    return snaps


def _vec(xs: list[int]) -> str:
    return "[" + " ".join(map(str, xs)) + "]"


def format_sample(adjacency: list[list[int]], hints: bool = True) -> tuple[str, str]:
    """(question, answer) exactly as DeepMind's CLRS-Text generator writes a `dfs` sample."""
    _check_adjacency(adjacency)
    a_str = "[" + ", ".join(_vec(row) for row in adjacency) + "]"
    snaps = dfs_pi_snapshots(adjacency)
    final = _vec(snaps[-1])
    if not hints:
        return f"dfs:\nA: {a_str}\npi:\n", f"{final}\n\n"
    question = f"dfs:\nA: {a_str}, initial_trace: {_vec(snaps[0])}\ntrace | pi:\n"
    trace = ", ".join(_vec(s) for s in snaps[1:-1])
    return question, f"{trace} | {final}\n\n"


def _check_adjacency(adjacency: list[list[int]]) -> None:
    n = len(adjacency)
    if n < 1 or any(len(row) != n for row in adjacency):
        raise ValueError(f"adjacency must be a non-empty square matrix, got {n} rows "
                         f"of lengths {[len(r) for r in adjacency]}")
    if any(x not in (0, 1) for row in adjacency for x in row):
        raise ValueError("adjacency entries must be 0 or 1")


_A_RE = re.compile(r"A: (\[\[[0-9 \[\],]*\]\])")
_ROW_RE = re.compile(r"\[([0-9 ]*)\]")


def parse_adjacency(question: str) -> list[list[int]]:
    """The adjacency matrix `A` of a CLRS-Text `dfs` question; ValueError if absent or not square."""
    m = _A_RE.search(question)
    if not m:
        raise ValueError("no 'A: [[...]]' matrix in the question")
    rows = [[int(x) for x in r.split()] for r in _ROW_RE.findall(m.group(1)[1:-1])]
    _check_adjacency(rows)
    return rows


def random_adjacency(n: int, p: float, rng: random.Random) -> list[list[int]]:
    """Directed Erdős–Rényi graph: each of the n*n entries (diagonal included) is 1 with prob. p."""
    return [[1 if rng.random() < p else 0 for _ in range(n)] for _ in range(n)]


def iter_examples(seed: int, node_counts: tuple[int, ...] | list[int] = DEFAULT_NODE_COUNTS,
                  p: float = 0.5, hints: bool = True, split: str = "train") -> Iterator[Example]:
    """Endless deterministic stream of examples; n is drawn uniformly from `node_counts`; only items
    whose prompt hashes into `split` ("train" | "eval" | "any") are yielded."""
    counts = [check_positive_int("node_counts", k) for k in node_counts]
    if not counts:
        raise ValueError("option 'node_counts' must not be empty")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"option 'p' must be in [0, 1], got {p!r}")
    rng = random.Random(f"{TASK}:{seed}")
    misses = 0
    while True:
        n = rng.choice(counts)
        adj = random_adjacency(n, p, rng)
        question, answer = format_sample(adj, hints=hints)
        if not in_split(question, split):
            misses = check_split_misses(misses + 1, TASK, split)
            continue
        misses = 0
        gold = answer.rstrip("\n").rsplit(" | ", 1)[-1]
        yield Example(prompt=question, answer=answer, gold=gold, task=TASK,
                      meta={"n": n, "hints": hints, "adjacency": adj})


def generate(n: int, seed: int, **opts) -> list[Example]:
    """`n` examples, deterministic for (`seed`, `opts`); see `iter_examples` for the options."""
    return list(islice(iter_examples(seed, **opts), n))


_PI_RE = re.compile(r"\[(\d+(?: \d+)*)\]")


def extract_answer(text: str) -> str | None:
    """The final `pi` of a completion: the bracketed vector after the last ` | ` of the text up to the
    first blank line (`\\n\\n`), or the whole of it when there is no ` | ` (no-hints format)."""
    body = text.split("\n\n", 1)[0]
    tail = body.rsplit(" | ", 1)[-1].strip()
    m = _PI_RE.fullmatch(tail)
    return f"[{m.group(1)}]" if m else None


def score(completion: str, example: Example) -> dict[str, float]:
    """`score` (final pi exact), `trace_exact` (whole answer exact), `pi_element_acc`."""
    pred = extract_answer(completion)
    gold = example.gold
    trace_exact = float(completion.split("\n\n", 1)[0].strip() == example.answer.strip())
    if pred is None:
        return {"score": 0.0, "trace_exact": trace_exact, "pi_element_acc": 0.0}
    p, g = pred[1:-1].split(), gold[1:-1].split()
    acc = sum(a == b for a, b in zip(p, g)) / len(g)
    return {"score": float(pred == gold), "trace_exact": trace_exact, "pi_element_acc": acc}
