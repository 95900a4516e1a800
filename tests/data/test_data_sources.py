"""Document sources: spec parsing, paragraph reading, local row formats, seeds, generated splits."""

from __future__ import annotations

import json
from itertools import islice

import pytest

from looplm.data.jsonl import DataFormatError
from looplm.data.sources import (answer_start, derive_seed, generated_docs, local_docs, paragraphs, parse_source,
                                 resolve_sources)
from looplm.tasks.base import DataSourceError, in_split


def test_parse_and_resolve(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("hello\n")
    assert parse_source("text", f"local:{f}").path == f
    assert parse_source("clrs", "hub").kind == "hub"
    with pytest.raises(DataSourceError, match="unknown domain"):
        parse_source("code", "hub")
    with pytest.raises(DataSourceError, match="no such file"):
        parse_source("text", f"local:{tmp_path / 'missing'}")
    srcs = resolve_sources(["clrs", "math"], {})
    assert {d: s.spec for d, s in srcs.items()} == {"clrs": "generated", "math": "generated"}
    assert resolve_sources(["clrs"], {"clrs": "hub"})["clrs"].kind == "hub"


def test_paragraphs_wikitext_layout():
    lines = [" = Title = \r\n", " First para .\r\n", " = = Sub = = \r\n", " Second para .\r\n", "\r\n", " Third .\r\n"]
    assert list(paragraphs(iter(lines))) == [" = Title = \n First para .", " = = Sub = = \n Second para .", " Third ."]


def test_local_formats(tmp_path):
    j = tmp_path / "a.jsonl"
    j.write_text(json.dumps({"question": "dfs:\nA\n", "answer": "[0]\n\n"}) + "\n" + json.dumps({"text": "plain"}) + "\n")
    assert list(local_docs(j)) == ["dfs:\nA\n[0]\n\n", "plain"]
    q = tmp_path / "b.json"
    q.write_text(json.dumps([{"question": "Q?", "answer": "A"}]))
    assert list(local_docs(q)) == ["Q?\nA"]
    assert [answer_start(d) for d in local_docs(q)] == [3]  # the answer "A" after "Q?\n"
    assert [answer_start(d) for d in local_docs(j)] == [len("dfs:\nA\n"), 0]  # a text row is all answer
    bad = tmp_path / "c.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(DataFormatError, match=r"c\.jsonl:2: a row needs"):
        list(local_docs(bad))


def test_shared_clrs_file_reads_as_official_documents(shared_data):
    path = shared_data / "clrs_text" / "dfs_train_like_seed0.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    docs = list(local_docs(path))
    assert len(docs) == 200 and all(d.startswith("dfs:\nA: [[") and d.endswith("]\n\n") for d in docs)


def test_generated_text_is_explicit_english_with_disjoint_splits():
    with pytest.raises(DataSourceError, match="needs an explicit source.*--source text=generated"):
        resolve_sources(["clrs", "text"], {})
    src = resolve_sources(["text"], {"text": "generated"})["text"]
    assert src.kind == "generated" and not src.finite
    train = list(islice(generated_docs("text", 1, "train"), 200))
    val = list(islice(generated_docs("text", 2, "eval"), 50))
    assert train == list(islice(generated_docs("text", 1, "train"), 200))
    assert all(in_split(d, "train") for d in train) and all(in_split(d, "eval") for d in val)
    assert not set(train) & set(val)
    assert all(d.endswith(".") and d.count(". ") >= 2 for d in train)


def test_seeds_and_generated_splits():
    assert derive_seed(0, "clrs", "train") != derive_seed(0, "clrs", "val")
    assert derive_seed(0, "clrs", "train") == derive_seed(0, "clrs", "train")
    train = list(islice(generated_docs("clrs", 1, "train"), 30))
    val = list(islice(generated_docs("clrs", 2, "eval"), 30))
    assert all(in_split(d.split("trace | pi:\n")[0] + "trace | pi:\n", "train") for d in train)
    assert not set(train) & set(val)
    math = list(islice(generated_docs("math", 0, "train"), 4))
    assert math[0].startswith("What is") and "####" in math[1] and not math[1].startswith("What is")
    wide = list(islice(generated_docs("clrs", 0, "train", clrs_nodes=(7,)), 3))
    assert all(d.count("], [") >= 6 for d in wide)


def test_specs_for_directories_hub_names_and_bare_paths(tmp_path, monkeypatch):
    d = tmp_path / "corpus"
    (d / "data").mkdir(parents=True)
    (d / "data" / "train-00000-of-00001.jsonl").write_text(json.dumps({"text": "A document."}) + "\n")
    src = parse_source("text", str(d))  # a bare existing path is a local source
    assert src.kind == "local" and src.spec == f"local:{d}" and src.path == d
    assert list(local_docs(d)) == ["A document."]
    assert parse_source("text", "hub:someone/corpus@train").spec == "hub:someone/corpus@train"
    with pytest.raises(DataSourceError, match="expected hub:NAME"):
        parse_source("text", "hub:a:b:c")
    with pytest.raises(DataSourceError, match="expected hub, generated or local:PATH"):
        parse_source("text", str(tmp_path / "not-there"))


def test_hub_spec_documents(monkeypatch):
    import datasets

    from looplm.data.sources import describe, finite_docs

    calls = []
    rows = {"someone/docs": [{"text": "Doc one\nline two"}, {"text": "Doc two"}],
            "Salesforce/wikitext": [{"text": " = T = \n"}, {"text": " Body .\n"}, {"text": ""}, {"text": " More .\n"}]}
    monkeypatch.setattr(datasets, "load_dataset", lambda name, *c, split: calls.append((name, c, split)) or rows[name])
    src = parse_source("text", "hub:someone/docs@validation")
    assert list(finite_docs(src)) == ["Doc one\nline two", "Doc two"]  # a row of another dataset is a document
    assert describe(src, (4,)) == {"spec": "hub:someone/docs@validation", "kind": "hub", "dataset": "someone/docs",
                                   "config": None, "split": "validation"}
    assert list(finite_docs(parse_source("text", "hub"))) == [" = T = \n Body .", " More ."]  # WikiText lines
    assert calls == [("someone/docs", (), "validation"), ("Salesforce/wikitext", ("wikitext-103-raw-v1",), "train")]


def test_parquet_and_saved_sources_read_like_jsonl(tmp_path):
    import datasets

    rows = [{"question": "dfs:\nA\n", "answer": "[0]\n\n"}, {"question": "Q?", "answer": "A"}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "c.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    want = ["dfs:\nA\n[0]\n\n", "Q?\nA"]
    assert list(local_docs(tmp_path / "c.parquet")) == want and list(local_docs(tmp_path / "saved")) == want
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataFormatError, match=r"broken\.parquet: cannot read parquet"):
        list(local_docs(tmp_path / "broken.parquet"))


def test_join_qa_remembers_where_the_answer_starts():
    from looplm.data.sources import QADoc, join_qa

    doc = join_qa("What is 2 + 2?", "4")
    assert doc == "What is 2 + 2?\n4" and isinstance(doc, QADoc) and doc[answer_start(doc):] == "4"
    clrs = join_qa("dfs:\nA: [[0 1], [1 0]]\n", "[0 0]\n\n")  # a question ending in a newline is kept as is
    assert clrs[answer_start(clrs):] == "[0 0]\n\n" and answer_start("plain text") == 0
    for doc in islice(generated_docs("clrs", 3, "train"), 5):
        assert doc[:answer_start(doc)].endswith("trace | pi:\n") and doc[answer_start(doc):].startswith("[0 ")
    with pytest.raises(ValueError, match="answer_start 9 outside a document of 2 characters"):
        QADoc("ab", 9)
