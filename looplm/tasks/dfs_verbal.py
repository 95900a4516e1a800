"""Verbal DFS traces (the report's SFT logic domain) and their checker.

One item, with the prompt/answer split used everywhere in looplm:

    prompt: "Algorithm: DFS\\nQuestion: Graph: A-[B,C], B-[D], C-[], D-[C]. Start: A"
    answer: "Trace: <search> A <search> B <search> D <search> C <backtrack> D <backtrack> B "
            "<backtrack> A\\nAnswer: Path is [A, B, D, C]"
    gold:   "[A, B, D, C]"

The prompt ends after the question (the chat template adds the newline), the response starts at
`Trace:`. Neighbours are visited in listed order; every push is `<search> X`, every pop is
`<backtrack> Y` naming the node returned to (popping the start node writes nothing). Only nodes
reachable from the start are visited. Graphs: `min_nodes..max_nodes` nodes labelled A, B, C, ...
(at most 26), each with an out-degree drawn from `min_out_degree..max_out_degree` (capped at n - 1),
distinct targets, no self-loops, neighbours listed in alphabetical order unless `shuffle_neighbours`.

Scoring: `score` = exact visit order (the `Answer: Path is [...]`), `trace_exact` = the trace equals
the canonical one, `valid_dfs` = the trace is *a* complete DFS of the graph from the start (any
neighbour order, see `is_valid_dfs_trace`), parsed from the prompt and simulated.
"""

from __future__ import annotations

import random
import re
import string
from itertools import islice
from typing import Iterator

from looplm.tasks.base import Example, check_positive_int, check_split_misses, in_split

TASK = "dfs_verbal"
LABELS = string.ascii_uppercase
Graph = dict[str, list[str]]


def dfs_events(graph: Graph, start: str) -> list[tuple[str, str]]:
    """Canonical events `("search", X)` / `("backtrack", Y)` of a DFS in listed neighbour order."""
    visited = {start}
    events = [("search", start)]
    stack = [start]
    pos = {start: 0}
    while stack:
        u = stack[-1]
        nbs = graph[u]
        i = pos[u]
        while i < len(nbs) and nbs[i] in visited:
            i += 1
        pos[u] = i
        if i < len(nbs):
            v = nbs[i]
            visited.add(v)
            pos[v] = 0
            stack.append(v)
            events.append(("search", v))
        else:
            stack.pop()
            if stack:
                events.append(("backtrack", stack[-1]))
    return events


def format_graph(graph: Graph) -> str:
    return ", ".join(f"{u}-[{','.join(nbs)}]" for u, nbs in graph.items())


def format_sample(graph: Graph, start: str) -> tuple[str, str, str]:
    """(prompt, answer, gold) for a graph (ordered adjacency lists) and a start node."""
    events = dfs_events(graph, start)
    trace = " ".join(f"<{tag}> {x}" for tag, x in events)
    path = "[" + ", ".join(x for tag, x in events if tag == "search") + "]"
    prompt = f"Algorithm: DFS\nQuestion: Graph: {format_graph(graph)}. Start: {start}"
    return prompt, f"Trace: {trace}\nAnswer: Path is {path}", path


_GRAPH_RE = re.compile(r"Graph: (.*)\. Start: ([A-Z])\s*$", re.M)
_ENTRY_RE = re.compile(r"([A-Z])-\[([A-Z](?:,[A-Z])*)?\]")


def parse_prompt(prompt: str) -> tuple[Graph, str]:
    """(graph, start) from a verbal DFS prompt; ValueError when it is malformed."""
    m = _GRAPH_RE.search(prompt)
    if not m:
        raise ValueError("no 'Graph: ... . Start: X' in the prompt")
    entries = m.group(1).split(", ")
    graph: Graph = {}
    for e in entries:
        em = _ENTRY_RE.fullmatch(e)
        if not em or em.group(1) in graph:
            raise ValueError(f"malformed or repeated graph entry {e!r}")
        graph[em.group(1)] = em.group(2).split(",") if em.group(2) else []
    start = m.group(2)
    unknown = {v for nbs in graph.values() for v in nbs} - graph.keys()
    if start not in graph or unknown:
        raise ValueError(f"graph mentions undefined nodes {sorted(unknown | ({start} - graph.keys()))}")
    return graph, start


_TRACE_LINE_RE = re.compile(r"Trace:(.*)")


def parse_trace(trace_text: str) -> list[tuple[str, str]] | None:
    """Events of a trace (the `Trace:` line if there is one, else the whole text); None when any
    token is not a `<search> X` / `<backtrack> X` pair."""
    m = _TRACE_LINE_RE.search(trace_text)
    tokens = (m.group(1) if m else trace_text).split()
    if not tokens or len(tokens) % 2:
        return None
    events = []
    for tag, x in zip(tokens[0::2], tokens[1::2]):
        if tag not in ("<search>", "<backtrack>") or not re.fullmatch(r"[A-Z]", x):
            return None
        events.append((tag[1:-1], x))
    return events


def is_valid_dfs_trace(graph: Graph, start: str, trace_text: str, ordered: bool = False) -> bool:
    """Whether `trace_text` is a complete DFS of `graph` from `start`: each `<search> X` goes to an
    unvisited neighbour of the node on top of the stack, each `<backtrack> Y` leaves a node whose
    neighbours are all visited and names the node returned to, and the trace ends with only the
    start on the stack and all its neighbours visited. `ordered=True` also requires the listed
    neighbour order (then the only valid trace is the canonical one)."""
    events = parse_trace(trace_text)
    if not events or events[0] != ("search", start) or start not in graph:
        return False
    visited, stack = {start}, [start]
    for tag, x in events[1:]:
        if not stack:
            return False
        top = stack[-1]
        unvisited = [v for v in graph[top] if v not in visited]
        if tag == "search":
            if x not in unvisited or (ordered and x != unvisited[0]):
                return False
            visited.add(x)
            stack.append(x)
        else:
            if unvisited:
                return False
            stack.pop()
            if not stack or stack[-1] != x:
                return False
    return stack == [start] and all(v in visited for v in graph[start])


def random_graph(rng: random.Random, n: int, min_out: int, max_out: int,
                 shuffle_neighbours: bool = False) -> Graph:
    labels = LABELS[:n]
    graph: Graph = {}
    for u in labels:
        k = rng.randint(min(min_out, n - 1), min(max_out, n - 1))
        nbs = rng.sample([v for v in labels if v != u], k)
        graph[u] = nbs if shuffle_neighbours else sorted(nbs)
    return graph


def iter_examples(seed: int, min_nodes: int = 4, max_nodes: int = 8, min_out_degree: int = 1,
                  max_out_degree: int = 3, shuffle_neighbours: bool = False,
                  random_start: bool = False, split: str = "train") -> Iterator[Example]:
    """Endless deterministic stream; start is A unless `random_start`; only prompts hashing into
    `split` ("train" | "eval" | "any") are yielded."""
    check_positive_int("min_nodes", min_nodes)
    check_positive_int("max_nodes", max_nodes)
    if not min_nodes <= max_nodes <= len(LABELS):
        raise ValueError(f"options need min_nodes <= max_nodes <= {len(LABELS)}, "
                         f"got {min_nodes}..{max_nodes}")
    if not 0 <= min_out_degree <= max_out_degree:
        raise ValueError(f"options need 0 <= min_out_degree <= max_out_degree, "
                         f"got {min_out_degree}..{max_out_degree}")
    rng = random.Random(f"{TASK}:{seed}")
    misses = 0
    while True:
        n = rng.randint(min_nodes, max_nodes)
        graph = random_graph(rng, n, min_out_degree, max_out_degree, shuffle_neighbours)
        start = rng.choice(LABELS[:n]) if random_start else "A"
        prompt, answer, gold = format_sample(graph, start)
        if not in_split(prompt, split):
            misses = check_split_misses(misses + 1, TASK, split)
            continue
        misses = 0
        yield Example(prompt=prompt, answer=answer, gold=gold, task=TASK,
                      meta={"n": n, "start": start, "graph": graph})


def generate(n: int, seed: int, **opts) -> list[Example]:
    """`n` examples, deterministic for (`seed`, `opts`); see `iter_examples` for the options."""
    return list(islice(iter_examples(seed, **opts), n))


_PATH_RE = re.compile(r"Path is \[\s*([A-Z](?:\s*,\s*[A-Z])*)?\s*\]")


def extract_answer(text: str) -> str | None:
    """The visit order of the first `Path is [...]`, normalised to `[A, B, C]` (spacing around
    commas is not judged)."""
    m = _PATH_RE.search(text)
    if not m:
        return None
    nodes = [x.strip() for x in m.group(1).split(",")] if m.group(1) else []
    return "[" + ", ".join(nodes) + "]"


def score(completion: str, example: Example) -> dict[str, float]:
    """`score` (visit order exact), `trace_exact`, `valid_dfs` (graph parsed from the prompt)."""
    pred = extract_answer(completion)
    graph, start = parse_prompt(example.prompt)
    events = parse_trace(completion)
    canonical = parse_trace(example.answer)
    return {
        "score": float(pred == example.gold),
        "trace_exact": float(events is not None and events == canonical),
        "valid_dfs": float(is_valid_dfs_trace(graph, start, completion)),
    }
