"""Tests for looplm.tasks.clrs_dfs: byte equality with DeepMind's CLRS-Text generator on every official
row, the generator's options and determinism, and the scorer."""

from __future__ import annotations

import json

import pytest

from looplm.tasks import clrs_dfs
from looplm.tasks.base import Example

FILES = {"dfs_train_like_seed0.jsonl": True, "dfs_val_like_seed3.jsonl": True,
         "dfs_nohints_seed0.jsonl": False}


def test_matches_every_official_row(shared_data):
    rows = 0
    for name, hints in FILES.items():
        path = shared_data(f"clrs_text/{name}")
        for i, line in enumerate(path.read_text().splitlines(), start=1):
            row = json.loads(line)
            adj = clrs_dfs.parse_adjacency(row["question"])
            assert len(adj) == row["length"]
            question, answer = clrs_dfs.format_sample(adj, hints=hints)
            assert question == row["question"], f"{path}:{i} question differs"
            assert answer == row["answer"], f"{path}:{i} answer differs"
            rows += 1
    assert rows == 300


def test_design_doc_example():
    adj = [[1, 1, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 1]]
    q, a = clrs_dfs.format_sample(adj)
    assert q == "dfs:\nA: [[1 1 0 1], [1 1 0 0], [0 0 0 0], [1 0 1 1]], initial_trace: [0 1 2 3]\ntrace | pi:\n"
    assert a.startswith("[0 1 2 3], [0 0 2 3], ") and a.endswith(" | [0 0 3 0]\n\n")
    assert len(a.split(" | ")[0].split("], [")) == 3 * 4 - 2
    assert clrs_dfs.format_sample(adj, hints=False) == ("dfs:\nA: [[1 1 0 1], [1 1 0 0], [0 0 0 0], [1 0 1 1]]\npi:\n",
                                                       "[0 0 3 0]\n\n")


def test_disconnected_graph_restarts_from_next_unvisited_root():
    adj = [[0, 0, 0], [0, 0, 1], [0, 0, 0]]  # 0 alone; 1 -> 2
    snaps = clrs_dfs.dfs_pi_snapshots(adj)
    assert len(snaps) == 9 and snaps[-1] == [0, 1, 1]


def test_bad_adjacency_is_an_error():
    for bad in ([], [[0, 1]], [[0, 2], [0, 0]]):
        with pytest.raises(ValueError):
            clrs_dfs.format_sample(bad)
    with pytest.raises(ValueError, match="no 'A:"):
        clrs_dfs.parse_adjacency("dfs:\npi:\n")


def test_generator_determinism_and_options():
    a = clrs_dfs.generate(50, seed=1)
    assert [e.prompt for e in a] == [e.prompt for e in clrs_dfs.generate(50, seed=1)]
    assert [e.prompt for e in a] != [e.prompt for e in clrs_dfs.generate(50, seed=2)]
    assert {e.meta["n"] for e in a} == {4, 5}
    big = clrs_dfs.generate(400, seed=0, node_counts=(7,))
    assert all(e.meta["n"] == 7 for e in big)
    cells = [x for e in big for row in e.meta["adjacency"] for x in row]
    assert 0.45 < sum(cells) / len(cells) < 0.55  # p = 0.5
    assert any(e.meta["adjacency"][i][i] for e in big for i in range(7))  # self-loops allowed
    for e in a:
        assert clrs_dfs.format_sample(e.meta["adjacency"]) == (e.prompt, e.answer)
        assert e.gold == e.answer.rstrip("\n").rsplit(" | ", 1)[1]
    nh = clrs_dfs.generate(5, seed=0, hints=False)
    assert all(e.answer == e.gold + "\n\n" and e.prompt.endswith("\npi:\n") for e in nh)
    with pytest.raises(ValueError, match="node_counts"):
        clrs_dfs.generate(1, seed=0, node_counts=(0,))


def test_train_and_eval_splits_are_disjoint():
    train = clrs_dfs.generate(300, seed=0, split="train")
    evals = clrs_dfs.generate(300, seed=0, split="eval")
    assert not {e.prompt for e in train} & {e.prompt for e in evals}


def test_score():
    ex = clrs_dfs.generate(1, seed=3, node_counts=(5,))[0]
    assert clrs_dfs.score(ex.answer, ex) == {"score": 1.0, "trace_exact": 1.0, "pi_element_acc": 1.0}
    assert clrs_dfs.score(ex.answer.rstrip("\n") + "\n\ndfs:\nA: [[1]]", ex)["trace_exact"] == 1.0
    gold = ex.gold[1:-1].split()
    wrong = gold.copy()
    wrong[0] = str((int(wrong[0]) + 1) % 5)
    wrong_pi = "[" + " ".join(wrong) + "]"
    bad = ex.answer.rsplit(" | ", 1)[0] + " | " + wrong_pi + "\n\n"
    s = clrs_dfs.score(bad, ex)
    assert s["score"] == 0.0 and s["trace_exact"] == 0.0 and s["pi_element_acc"] == pytest.approx(0.8)
    assert clrs_dfs.score("nonsense", ex) == {"score": 0.0, "trace_exact": 0.0, "pi_element_acc": 0.0}
    # the final pi alone (no-hints format) is still extracted
    assert clrs_dfs.extract_answer(ex.gold + "\n\n") == ex.gold
    assert clrs_dfs.score(ex.gold, ex)["score"] == 1.0
    short = Example(prompt="", answer="[0 0]\n\n", gold="[0 0]", task="clrs_dfs")
    assert clrs_dfs.score("[0]", short)["pi_element_acc"] == 0.5
