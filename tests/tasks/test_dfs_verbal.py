"""Tests for looplm.tasks.dfs_verbal: the design-doc example, property tests that every generated
trace is a valid DFS and that corrupted traces are caught, generator options and the scorer."""

from __future__ import annotations


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from looplm.tasks import dfs_verbal as dv

DOC_PROMPT = "Algorithm: DFS\nQuestion: Graph: A-[B,C], B-[D], C-[], D-[C]. Start: A"
DOC_ANSWER = ("Trace: <search> A <search> B <search> D <search> C <backtrack> D <backtrack> B "
              "<backtrack> A\nAnswer: Path is [A, B, D, C]")


def test_design_doc_example():
    graph = {"A": ["B", "C"], "B": ["D"], "C": [], "D": ["C"]}
    assert dv.format_sample(graph, "A") == (DOC_PROMPT, DOC_ANSWER, "[A, B, D, C]")
    assert dv.parse_prompt(DOC_PROMPT) == (graph, "A")


@st.composite
def graphs(draw):
    n = draw(st.integers(1, 8))
    labels = dv.LABELS[:n]
    graph = {}
    for u in labels:
        others = [v for v in labels if v != u]
        graph[u] = draw(st.lists(st.sampled_from(others), unique=True, max_size=len(others))) if others else []
    return graph, draw(st.sampled_from(labels))


def _render(events):
    return "Trace: " + " ".join(f"<{t}> {x}" for t, x in events)


@settings(max_examples=300, deadline=None)
@given(graphs())
def test_canonical_trace_is_a_valid_dfs(gs):
    graph, start = gs
    prompt, answer, gold = dv.format_sample(graph, start)
    assert dv.parse_prompt(prompt) == (graph, start)
    assert dv.is_valid_dfs_trace(graph, start, answer, ordered=True)
    assert dv.is_valid_dfs_trace(graph, start, answer)
    events = dv.parse_trace(answer)
    searched = [x for t, x in events if t == "search"]
    assert len(searched) == len(set(searched))
    assert sum(t == "backtrack" for t, _ in events) == len(searched) - 1
    assert gold == "[" + ", ".join(searched) + "]" and answer.endswith(f"Path is {gold}")
    # visited set == nodes reachable from start
    reach, todo = {start}, [start]
    while todo:
        for v in graph[todo.pop()]:
            if v not in reach:
                reach.add(v)
                todo.append(v)
    assert set(searched) == reach


def _corrupt(events, kind, i, j):
    ev = list(events)
    if kind == "swap":
        ev[i], ev[j] = ev[j], ev[i]
    elif kind == "swap_nodes":
        ev[i], ev[j] = (ev[i][0], ev[j][1]), (ev[j][0], ev[i][1])
    elif kind == "drop":
        del ev[i]
    elif kind == "duplicate":
        ev.insert(i, ev[i])
    elif kind == "truncate":
        ev = ev[:i]
    elif kind == "retag":
        ev[i] = ("backtrack" if ev[i][0] == "search" else "search", ev[i][1])
    elif kind == "extra_search":
        ev.append(("search", ev[i][1]))
    elif kind == "prune" and i > 0 and ev[i][0] == "search":
        depth, k = 0, i  # drop the subtree searched at i: a premature backtrack
        while k < len(ev):
            depth += 1 if ev[k][0] == "search" else -1
            if depth == 0:
                break
            k += 1
        del ev[i:k + 1]
    return ev


@settings(max_examples=400, deadline=None)
@given(graphs(), st.sampled_from(["swap", "swap_nodes", "drop", "duplicate", "truncate", "retag",
                                  "extra_search", "prune"]), st.data())
def test_corrupted_traces_are_caught(gs, kind, data):
    graph, start = gs
    events = dv.dfs_events(graph, start)
    i = data.draw(st.integers(0, len(events) - 1))
    j = data.draw(st.integers(0, len(events) - 1))
    bad = _corrupt(events, kind, i, j)
    if bad == events:
        return  # e.g. swapping an event with itself changes nothing
    text = _render(bad) if bad else "Trace:"
    # the ordered checker accepts only the canonical trace
    assert not dv.is_valid_dfs_trace(graph, start, text, ordered=True)
    # structural corruptions are caught even when any neighbour order is allowed
    if kind in ("drop", "duplicate", "truncate", "retag", "extra_search", "prune"):
        assert not dv.is_valid_dfs_trace(graph, start, text)


@settings(max_examples=200, deadline=None)
@given(graphs(), st.randoms(use_true_random=False))
def test_other_neighbour_orders_are_valid_unordered_only(gs, rnd):
    graph, start = gs
    shuffled = {u: rnd.sample(nbs, len(nbs)) for u, nbs in graph.items()}
    events = dv.dfs_events(shuffled, start)
    text = _render(events)
    assert dv.is_valid_dfs_trace(graph, start, text)
    assert dv.is_valid_dfs_trace(graph, start, text, ordered=True) == (events == dv.dfs_events(graph, start))


def test_trace_text_variants():
    graph, start = dv.parse_prompt(DOC_PROMPT)
    assert dv.is_valid_dfs_trace(graph, start, DOC_ANSWER.split("\n")[0].removeprefix("Trace: "))
    assert not dv.is_valid_dfs_trace(graph, start, DOC_ANSWER.replace("<search> D", "<search> D!"))
    assert not dv.is_valid_dfs_trace(graph, start, "")
    assert not dv.is_valid_dfs_trace(graph, start, "Trace: <search> B <search> D")  # wrong start
    assert not dv.is_valid_dfs_trace(graph, "A", "Trace: <search> A <search> E")  # unknown node


def test_parse_prompt_errors():
    for bad in ("Graph: A-[B]. Start: A", "Graph: A-[B], A-[]. Start: A", "Graph: A-B. Start: A",
                "no graph"):
        with pytest.raises(ValueError):
            dv.parse_prompt(bad)


def test_generator_options_and_determinism():
    a = dv.generate(200, seed=5)
    assert [e.prompt for e in a] == [e.prompt for e in dv.generate(200, seed=5)]
    assert [e.prompt for e in a] != [e.prompt for e in dv.generate(200, seed=6)]
    assert {e.meta["n"] for e in a} == set(range(4, 9))
    assert all(e.meta["start"] == "A" for e in a)
    for e in dv.generate(200, seed=1, min_nodes=6, max_nodes=6, min_out_degree=2, max_out_degree=2):
        graph, start = dv.parse_prompt(e.prompt)
        assert len(graph) == 6 and all(len(nbs) == 2 for nbs in graph.values())
        assert all(nbs == sorted(nbs) for nbs in graph.values())
        assert dv.score(e.answer, e) == {"score": 1.0, "trace_exact": 1.0, "valid_dfs": 1.0}
    shuffled = dv.generate(100, seed=1, max_out_degree=4, shuffle_neighbours=True, random_start=True)
    assert any(nbs != sorted(nbs) for e in shuffled for nbs in e.meta["graph"].values())
    assert len({e.meta["start"] for e in shuffled}) > 1
    for kw in ({"min_nodes": 9, "max_nodes": 4}, {"max_nodes": 27}, {"min_out_degree": 3, "max_out_degree": 1},
               {"split": "dev"}):
        with pytest.raises(ValueError):
            dv.generate(1, seed=0, **kw)


def test_splits_disjoint():
    train = dv.generate(500, seed=0, min_nodes=3, max_nodes=4)
    evals = dv.generate(100, seed=0, min_nodes=3, max_nodes=4, split="eval")
    assert not {e.prompt for e in train} & {e.prompt for e in evals}


def test_score():
    ex = dv.generate(1, seed=0, min_nodes=5, max_nodes=5, min_out_degree=2)[0]
    assert dv.score(ex.answer, ex) == {"score": 1.0, "trace_exact": 1.0, "valid_dfs": 1.0}
    wrong_path = ex.answer.rsplit("Path is", 1)[0] + "Path is [A]"
    assert dv.score(wrong_path, ex)["score"] == 0.0
    graph, start = dv.parse_prompt(ex.prompt)
    events = dv.dfs_events(graph, start)
    truncated = _render(events[:-1]) + "\nAnswer: Path is " + ex.gold
    assert dv.score(truncated, ex) == {"score": 1.0, "trace_exact": 0.0, "valid_dfs": 0.0}
    assert dv.extract_answer("Answer: Path is [A,B ,C]") == "[A, B, C]"
    assert dv.extract_answer("Path is A, B") is None
