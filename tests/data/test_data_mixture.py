"""Pre-training mixture: shares, determinism, fair prefixes, disjoint validation, finite sources,
hub failures, bounded memory, and the manifest."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from looplm.data.mixture import DataBuildError, MixConfig, build_pretrain_mix, interleave, parse_mix
from looplm.data.shards import PretrainData, file_sha256
from looplm.tasks.base import DataSourceError
from looplm.tokenizer import Tokenizer

from data_helpers import write_text_file


def build(tmp_path, tok_dir, text_file, name="out", **kw):
    kw.setdefault("tokens", 60_000)
    kw.setdefault("val_tokens", 3_000)
    kw.setdefault("sources", {"text": f"local:{text_file}"})
    return build_pretrain_mix(MixConfig(tokenizer=tok_dir, out=tmp_path / name, **kw))


def split_docs(tokens: np.ndarray, eos: int) -> list[tuple[int, ...]]:
    cuts = np.flatnonzero(tokens == eos)
    return [tuple(tokens[a + 1: b + 1].tolist()) for a, b in zip(np.r_[-1, cuts[:-1]], cuts)]


def test_shares_manifest_and_reader(tmp_path, tok_dir, text_file):
    m = build(tmp_path, tok_dir, text_file)
    tok = Tokenizer.load(tok_dir)
    assert m["train"]["tokens"] == 60_000
    for d, share in {"clrs": 0.5, "math": 0.33, "text": 0.17}.items():
        assert abs(m["achieved_shares"][d] - share) <= 0.01
        assert m["domains"][d]["train_tokens"] == round(m["achieved_shares"][d] * 60_000)
        assert m["domains"][d]["val_tokens"] >= 3_000
    assert m["tokenizer_sha256"] == tok.sha256() and m["vocab_size"] == tok.vocab_size
    assert m["dtype"] == "uint16"
    assert m["domains"]["clrs"]["generated"] and not m["domains"]["text"]["generated"]
    assert m["domains"]["text"]["source"]["path"] == str(text_file)
    assert m["domains"]["clrs"]["source"]["node_counts"] == [4, 5]
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["train"] == m["train"]
    data = PretrainData.open(tmp_path / "out", verify=True)
    assert data.train_tokens == 60_000 and set(data.val) == {"clrs", "math", "text"}
    assert data.vocab_size == tok.vocab_size and data.tokenizer_sha256 == tok.sha256()
    data.check_tokenizer(Tokenizer.load(tmp_path / "out"))
    for s in m["train"]["shards"]:
        assert file_sha256(tmp_path / "out" / s["file"]) == s["sha256"]
    text = tok.decode(data.train[0][:4000].tolist())
    assert "dfs:\nA: [[" in text and "What is" in text or "####" in text
    assert not (tmp_path / ".out.partial").exists()


def test_deterministic_per_seed(tmp_path, tok_dir, text_file):
    a = build(tmp_path, tok_dir, text_file, "a", tokens=20_000, seed=1)
    b = build(tmp_path, tok_dir, text_file, "b", tokens=20_000, seed=1)
    c = build(tmp_path, tok_dir, text_file, "c", tokens=20_000, seed=2)
    sha = lambda m: [s["sha256"] for s in m["train"]["shards"]] + [v["sha256"] for v in m["val"].values()]
    assert sha(a) == sha(b)
    assert sha(a) != sha(c)


def test_interleave_every_prefix_is_fair():
    rng = np.random.default_rng(0)
    lengths = {d: rng.integers(5, 80, size=5000) for d in ("a", "b", "c")}
    streams = {d: iter((np.zeros(n, dtype=np.uint16), np.ones(n, dtype=np.uint8)) for n in ls)
               for d, ls in lengths.items()}
    shares = {"a": 0.5, "b": 0.33, "c": 0.17}
    log: list[tuple[str, int]] = []
    counts = interleave(streams, shares, 100_000, lambda d, ids, mask: log.append((d, len(ids))))
    assert sum(counts.values()) == 100_000
    running = {d: 0 for d in shares}
    total = 0
    for d, n in log:
        running[d] += n
        total += n
        for k, s in shares.items():  # each domain within one (max-length) document of its share
            assert abs(running[k] - s * total) <= 80


def test_validation_disjoint_from_train(tmp_path, tok_dir, text_file):
    build(tmp_path, tok_dir, text_file, tokens=40_000)
    data = PretrainData.open(tmp_path / "out")
    train_docs = set(split_docs(np.asarray(data.train[0]), data.eos_id)[:-1])  # last doc may be cut
    for d, val in data.val.items():
        val_docs = split_docs(np.asarray(val), data.eos_id)
        assert len(val_docs) == data.manifest["domains"][d]["val_docs"]
        assert not train_docs & set(val_docs), d


def test_finite_source_duplicates_of_val_are_dropped_and_counted(tmp_path, tok_dir):
    path = write_text_file(tmp_path / "t.raw", 300)
    lines = path.read_bytes().split(b"\r\n")
    path.write_bytes(b"\r\n".join(lines[:10] + lines[:2] + lines[10:]))  # first article again, soon after
    m = build(tmp_path, tok_dir, path, mix={"text": 1.0}, tokens=10_000, val_tokens=50)
    assert m["domains"]["text"]["val_docs"] == 1
    assert m["domains"]["text"]["dropped_val_duplicates"] == 1


def test_exhausted_source_is_an_error_unless_allowed(tmp_path, tok_dir):
    small = write_text_file(tmp_path / "small.raw", 40)
    with pytest.raises(DataBuildError, match="allow-repeat"):
        build(tmp_path, tok_dir, small, "x", tokens=40_000)
    assert not (tmp_path / "x").exists() and not (tmp_path / ".x.partial").exists()
    m = build(tmp_path, tok_dir, small, "y", tokens=40_000, allow_repeat=True)
    assert m["domains"]["text"]["epochs"] > 1
    assert abs(m["achieved_shares"]["text"] - 0.17) <= 0.01


def test_failed_hub_load_is_clear_and_does_not_fall_back(tmp_path, tok_dir, text_file, monkeypatch):
    import datasets

    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataSourceError) as e:
        build(tmp_path, tok_dir, text_file, "h", sources={"text": f"local:{text_file}", "math": "hub"})
    msg = str(e.value)
    assert "microsoft/orca-math-word-problems-200k" in msg and "hub unreachable" in msg
    assert "--source math=local:PATH" in msg and "--source math=generated" in msg
    assert calls and not (tmp_path / "h").exists()
    with pytest.raises(DataSourceError, match=r"Salesforce/wikitext.*--source text=local:PATH"):
        build(tmp_path, tok_dir, text_file, "h2", sources={"text": "hub"})


def test_source_rules(tmp_path, tok_dir, text_file):
    with pytest.raises(DataSourceError, match="text.*needs an explicit source.*--source text=generated"):
        build(tmp_path, tok_dir, text_file, sources={})
    with pytest.raises(DataSourceError, match="text.*needs an explicit source"):  # generated others: still
        build(tmp_path, tok_dir, text_file, sources={"clrs": "generated", "math": "generated"})
    with pytest.raises(DataSourceError, match="expected hub, generated or local:PATH"):
        build(tmp_path, tok_dir, text_file, sources={"text": "wikitext"})
    with pytest.raises(DataSourceError, match="not in --mix"):
        build(tmp_path, tok_dir, text_file, mix={"clrs": 1.0})
    with pytest.raises(DataBuildError, match="sum to 1"):
        parse_mix("clrs=0.5,math=0.3")
    with pytest.raises(DataBuildError, match="DOMAIN=SHARE"):
        parse_mix("clrs")
    assert parse_mix("clrs=0.5,math=0.5") == {"clrs": 0.5, "math": 0.5}


def test_all_domains_generated_on_request(tmp_path, tok_dir):
    m = build(tmp_path, tok_dir, None, "gen", tokens=30_000, val_tokens=2_000,
              sources={"clrs": "generated", "math": "generated", "text": "generated"})
    for d, share in {"clrs": 0.5, "math": 0.33, "text": 0.17}.items():
        assert m["domains"][d]["generated"] is True and m["domains"][d]["source"]["kind"] == "generated"
        assert abs(m["achieved_shares"][d] - share) <= 0.01
    assert m["domains"]["text"]["source"]["generators"] == ["synth_chat"]
    disk = json.loads((tmp_path / "gen" / "manifest.json").read_text())
    assert disk["domains"]["text"]["generated"] and disk["domains"]["text"]["source"]["spec"] == "generated"
    data = PretrainData.open(tmp_path / "gen", verify=True)
    tok = Tokenizer.load(tok_dir)
    val_text = tok.decode(np.asarray(data.val["text"]).tolist())
    assert " lived " in val_text and "dfs:" not in val_text and "####" not in val_text
    train_docs = set(split_docs(np.asarray(data.train[0]), data.eos_id)[:-1])
    assert not train_docs & set(split_docs(np.asarray(data.val["text"]), data.eos_id))
    again = build(tmp_path, tok_dir, None, "gen2", tokens=30_000, val_tokens=2_000,
                  sources={"clrs": "generated", "math": "generated", "text": "generated"})
    assert [s["sha256"] for s in again["train"]["shards"]] == [s["sha256"] for s in m["train"]["shards"]]


def test_out_dir_protection(tmp_path, tok_dir, text_file):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(DataBuildError, match="not empty"):
        build(tmp_path, tok_dir, text_file, "busy", tokens=5000)
    with pytest.raises(DataBuildError, match="not a looplm data directory"):
        build(tmp_path, tok_dir, text_file, "busy", tokens=5000, overwrite=True)
    build(tmp_path, tok_dir, text_file, "ok", tokens=20_000)
    m = build(tmp_path, tok_dir, text_file, "ok", tokens=25_000, overwrite=True)
    assert PretrainData.open(tmp_path / "ok").train_tokens == m["tokens"] == 25_000


def test_memory_does_not_grow_with_tokens(tmp_path, tok_dir, text_file):
    def peak(tokens: int, name: str) -> int:
        tracemalloc.start()
        build(tmp_path, tok_dir, text_file, name, tokens=tokens, mix={"clrs": 0.6, "math": 0.4}, sources={},
              batch_docs=64)
        _, p = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return p

    small, large = peak(30_000, "s"), peak(240_000, "l")
    # A list of all 240k token ids would alone add ~8 MB (pointers + ints); streaming stays flat.
    assert large < small * 1.3 + 1_000_000, (small, large)


def test_shared_wikitext_mixture(tmp_path, tok_dir, shared_data):
    wiki = shared_data / "wikitext2" / "wiki.test.raw"
    if not wiki.is_file():
        pytest.skip(f"{wiki} absent")
    m = build(tmp_path, tok_dir, wiki, tokens=100_000)
    assert abs(m["achieved_shares"]["text"] - 0.17) <= 0.01
    data = PretrainData.open(tmp_path / "out")
    text = Tokenizer.load(tok_dir).decode(np.asarray(data.val["text"][:200]).tolist())
    assert text.startswith(" = Robert Boulter = \n") and "\r" not in text


def test_loss_mask_scores_answers_and_plain_text(tmp_path, tok_dir, text_file):
    """Per document: the masked tokens decode to exactly the answer (CLRS, maths) or the whole text,
    and the EOS is scored; the mask shards match the token shards."""
    from looplm.data.sources import answer_start, generated_docs, local_docs

    m = build(tmp_path, tok_dir, text_file, tokens=20_000)
    tok = Tokenizer.load(tok_dir)
    data = PretrainData.open(tmp_path / "out", verify=True)
    assert data.has_mask and m["loss_mask"]["dtype"] == "uint8"
    assert [len(x) for x in data.train_mask] == [len(x) for x in data.train]
    from looplm.data.sources import derive_seed

    for dom, docs in [("clrs", generated_docs("clrs", derive_seed(0, "clrs", "val"), "eval")),
                      ("math", generated_docs("math", derive_seed(0, "math", "val"), "eval")),
                      ("text", local_docs(text_file))]:
        toks, mask = np.asarray(data.val[dom]), np.asarray(data.val_mask[dom])
        cuts = np.flatnonzero(toks == tok.eos_id)
        for a, b, doc in zip(np.r_[-1, cuts[:-1]], cuts, docs):
            ids, scored = toks[a + 1: b], mask[a + 1: b].astype(bool)  # the document without its EOS
            assert mask[b] == 1  # predicting the end of a document is scored
            assert tok.decode(ids[scored].tolist()) == doc[answer_start(doc):]
            assert (dom == "text") == bool(scored.all())
