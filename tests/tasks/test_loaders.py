"""Tests for the loaded tasks (gsm8k, alpaca, text, orca_math): local files from ../shared/data,
every source layout (parquet, hub-layout and save_to_disk directories, hub specs), TRL rows,
malformed-input errors naming file:line, and the hub path through a monkeypatched
`datasets.load_dataset`."""

from __future__ import annotations

import json

import datasets
import pytest

from looplm.tasks import alpaca, gsm8k, orca_math, text
from looplm.tasks.base import DataSourceError, numbers_equal


def _hub_returns(monkeypatch, rows, calls=None):
    def fake(*args, **kwargs):
        if calls is not None:
            calls.append((args, kwargs))
        return rows
    monkeypatch.setattr(datasets, "load_dataset", fake)


def _hub_fails(monkeypatch):
    def fake(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub")
    monkeypatch.setattr(datasets, "load_dataset", fake)


# ----------------------------------------------------------------------------- gsm8k

def test_gsm8k_local(shared_data):
    test = gsm8k.load(str(shared_data("gsm8k/test.jsonl")))
    assert len(test) == 1319
    assert test[0].gold == "18" and "<<" not in test[0].answer and test[0].answer.endswith("#### 18")
    train = gsm8k.load("local:" + str(shared_data("gsm8k")), split="train", keep_annotations=True)
    assert len(train) == 7473 and "<<48/2=24>>" in train[0].answer
    for e in test:
        assert gsm8k.score(e.answer, e)["score"] == 1.0
        assert numbers_equal(e.gold, gsm8k.extract_answer(e.answer))
    assert gsm8k.load(str(shared_data("gsm8k")), limit=5)[4].prompt == test[4].prompt


def test_gsm8k_scoring_cases():
    e = gsm8k.to_example({"question": "q", "answer": "2*500=<<2*500=1000>>1000\n#### 1,000"}, "row")
    assert e.gold == "1000" and e.answer == "2*500=1000\n#### 1,000"
    s = gsm8k.score
    assert s("so #### 1000", e)["score"] == 1.0
    assert s("#### 1,000.", e) == {"score": 1.0, "numeric": 1.0, "strict": 1.0, "has_answer": 1.0}
    assert s("#### 1000.0", e) == {"score": 1.0, "numeric": 1.0, "strict": 0.0, "has_answer": 1.0}
    assert s("#### 999 then #### 1000", e)["score"] == 0.0  # the first match counts
    assert s("The answer is 1000.", e)["has_answer"] == 0.0
    assert s("#### $1000", e)["has_answer"] == 0.0  # the strict regex needs a digit after '#### '


def test_gsm8k_malformed_local(tmp_path):
    p = tmp_path / "test.jsonl"
    p.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n" + '{"question": "q",\n')
    with pytest.raises(DataSourceError, match=r"test\.jsonl:2"):
        gsm8k.load(str(p))
    p.write_text(json.dumps({"question": "q", "answer": "no final answer"}) + "\n")
    with pytest.raises(DataSourceError, match=r"test\.jsonl:1: the answer has no '#### N'"):
        gsm8k.load(str(tmp_path))
    with pytest.raises(DataSourceError, match="no such file"):
        gsm8k.load(str(tmp_path / "absent.jsonl"))
    with pytest.raises(ValueError, match="split"):
        gsm8k.load(str(p), split="validation")


def test_gsm8k_hub(monkeypatch):
    calls = []
    _hub_returns(monkeypatch, [{"question": "q1", "answer": "1+1=<<1+1=2>>2\n#### 2"}], calls)
    ex = gsm8k.load("hub", split="train")
    assert calls == [(("openai/gsm8k", "main"), {"split": "train"})]
    assert ex[0].gold == "2" and ex[0].answer == "1+1=2\n#### 2"
    _hub_fails(monkeypatch)
    with pytest.raises(DataSourceError) as e:
        gsm8k.load("hub")
    assert "openai/gsm8k" in str(e.value) and "--source local:PATH" in str(e.value)
    _hub_returns(monkeypatch, [{"question": "q1"}])
    with pytest.raises(DataSourceError, match=r"hub:openai/gsm8k:main@test row 0: missing field"):
        gsm8k.load("hub")


# ----------------------------------------------------------------------------- alpaca

def test_alpaca_local(shared_data):
    ex = alpaca.load(str(shared_data("alpaca/alpaca_en_demo.json")))
    assert len(ex) == 999
    with_input = [e for e in ex if "\n\nInput:\n" in e.prompt]
    assert with_input and len(with_input) < len(ex)
    assert ex[0].prompt == "Describe a process of making crepes." and ex[0].gold == ex[0].answer
    assert alpaca.score(ex[0].answer, ex[0])["score"] == 1.0
    assert alpaca.score("completely unrelated words", ex[0])["score"] < 0.1


def test_alpaca_template_and_errors(tmp_path):
    assert alpaca.format_prompt("Add.", "2 and 3") == "Add.\n\nInput:\n2 and 3"
    assert alpaca.format_prompt("Say hi.", "") == "Say hi."
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({"instruction": "i", "output": "o"}) + "\n" +
                 json.dumps({"instruction": "i", "input": 3, "output": "o"}) + "\n")
    with pytest.raises(DataSourceError, match=r"a\.jsonl:2: field 'input' must be a string"):
        alpaca.load(str(p))
    p.write_text(json.dumps({"instruction": "i"}) + "\n")
    with pytest.raises(DataSourceError, match=r"a\.jsonl:1: missing field"):
        alpaca.load(str(p))
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataSourceError, match="unsupported file type"):
        alpaca.load(str(tmp_path / "a.txt"))


def test_alpaca_hub(monkeypatch):
    calls = []
    _hub_returns(monkeypatch, [{"instruction": "Add.", "input": "1 2", "output": "3"}], calls)
    ex = alpaca.load("hub")
    assert calls == [(("yahma/alpaca-cleaned",), {"split": "train"})] and ex[0].prompt == "Add.\n\nInput:\n1 2"
    _hub_fails(monkeypatch)
    with pytest.raises(DataSourceError, match="yahma/alpaca-cleaned.*--source local:PATH"):
        alpaca.load("hub")


# ----------------------------------------------------------------------------- text

def test_text_local_wikitext(shared_data):
    path = shared_data("wikitext2/wiki.test.raw")
    assert b"\r\n" in path.read_bytes()[:200]
    docs = text.load_texts(str(path))
    assert len(docs) == 62  # 60 articles + 2 maths lines shaped like titles (documented quirk)
    assert docs[0].startswith("= Robert Boulter =\nRobert Boulter is an English film")
    assert not any("\r" in d for d in docs)
    lines = text.load_texts(str(path.parent), unit="line")
    assert len(lines) == 2891
    paragraphs = text.load_texts(str(path), unit="paragraph")
    assert all(not p.startswith("= ") or not p.endswith(" =") for p in paragraphs)
    ex = text.load(str(path), limit=3)
    assert len(ex) == 3 and ex[0].prompt == "" and ex[0].answer == docs[0]


def test_text_line_ends_and_units(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes(b"First para line one.\r\nline two.\r\n\r\nSecond para.\rThird line\n")
    assert text.load_texts(str(p)) == ["First para line one.\nline two.", "Second para.\nThird line"]
    assert text.load_texts(str(p), unit="line") == ["First para line one.", "line two.", "Second para.",
                                                    "Third line"]
    p.write_text(" = A = \n x \n = = S = = \n y \n = B = \n z \n")
    assert text.load_texts(str(p)) == ["= A =\nx\n= = S = =\ny", "= B =\nz"]
    assert text.load_texts(str(p), unit="paragraph") == ["x", "y", "z"]
    p.write_text("\n\n")
    with pytest.raises(DataSourceError, match="holds no text"):
        text.load_texts(str(p))
    with pytest.raises(ValueError, match="unit"):
        text.load_texts(str(p), unit="word")


def test_text_hub(monkeypatch):
    calls = []
    rows = [{"text": ""}, {"text": " = T = \n"}, {"text": ""}, {"text": " Body one . \n"},
            {"text": " = U = \n"}, {"text": " Body two . \n"}]
    _hub_returns(monkeypatch, rows, calls)
    assert text.load_texts("hub", split="train", config="wikitext-2-raw-v1") == ["= T =\nBody one .",
                                                                                 "= U =\nBody two ."]
    assert calls == [(("Salesforce/wikitext", "wikitext-2-raw-v1"), {"split": "train"})]
    _hub_fails(monkeypatch)
    with pytest.raises(DataSourceError, match="Salesforce/wikitext.*wikitext-103-raw-v1.*local:PATH"):
        text.load_texts("hub")


# ----------------------------------------------------------------------------- orca_math

ORCA_ROWS = [{"question": "Tom has 3 boxes of 4 apples. How many?", "answer": "3 * 4 = 12, so 12 apples."},
             {"question": "Big?", "answer": "It is 1,250.5 km."}, {"question": "Name?", "answer": "Alice."}]


def test_orca_local_formats(tmp_path):
    jl = tmp_path / "o.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in ORCA_ROWS) + "\n")
    arr = tmp_path / "o.json"
    arr.write_text(json.dumps(ORCA_ROWS))
    for path in (jl, arr):
        ex = orca_math.load(str(path))
        assert [e.gold for e in ex] == ["12", "1250.5", ""]
        assert orca_math.score("#### 12", ex[0])["score"] == 1.0
        assert orca_math.score("the result is 12.", ex[0])["score"] == 1.0
        assert orca_math.score("#### 13", ex[0])["score"] == 0.0
        assert orca_math.score("Alice", ex[2])["score"] == 0.0
    jl.write_text(json.dumps(ORCA_ROWS[0]) + "\n" + json.dumps({"question": "q"}) + "\n")
    with pytest.raises(DataSourceError, match=r"o\.jsonl:2: missing field"):
        orca_math.load(str(jl))


def test_orca_local_parquet(tmp_path):
    path = tmp_path / "o.parquet"
    datasets.Dataset.from_list(ORCA_ROWS).to_parquet(str(path))
    assert [e.gold for e in orca_math.load(str(path))] == ["12", "1250.5", ""]


def test_orca_hub(monkeypatch):
    calls = []
    _hub_returns(monkeypatch, ORCA_ROWS, calls)
    assert len(orca_math.load("hub")) == 3
    assert calls == [(("microsoft/orca-math-word-problems-200k",), {"split": "train"})]
    _hub_fails(monkeypatch)
    with pytest.raises(DataSourceError, match="microsoft/orca-math-word-problems-200k.*local:PATH"):
        orca_math.load("hub")


# ----------------------------------------------------------------------------- any source, TRL rows

GSM_ROWS = [{"question": f"Ann has {i} pens and buys {i + 2}. How many?",
             "answer": f"{i} + {i + 2} = <<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2}\n#### {2 * i + 2}"} for i in range(6)]


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _golds(exs):
    return [(e.prompt, e.gold, e.answer) for e in exs]


def test_gsm8k_parquet_and_directories_equal_jsonl(tmp_path):
    """The issue's bug: a GSM8K .parquet failed with a bare 'utf-8' codec error. Every layout of the
    same rows now gives the same examples as the JSONL file."""
    ref = _golds(gsm8k.load(str(_jsonl(tmp_path / "ref.jsonl", GSM_ROWS))))
    pq = tmp_path / "train.parquet"
    datasets.Dataset.from_list(GSM_ROWS).to_parquet(str(pq))
    assert _golds(gsm8k.load(str(pq), split="train")) == ref
    clone = tmp_path / "clone"  # the hub's openai/gsm8k layout: main/{split}-0000x-of-0000n.parquet
    (clone / "main").mkdir(parents=True)
    datasets.Dataset.from_list(GSM_ROWS[:4]).to_parquet(str(clone / "main" / "train-00000-of-00002.parquet"))
    datasets.Dataset.from_list(GSM_ROWS[4:]).to_parquet(str(clone / "main" / "train-00001-of-00002.parquet"))
    datasets.Dataset.from_list(GSM_ROWS[:1]).to_parquet(str(clone / "main" / "test-00000-of-00001.parquet"))
    (clone / "socratic").mkdir()
    datasets.Dataset.from_list(GSM_ROWS[:1]).to_parquet(str(clone / "socratic" / "train-00000-of-00001.parquet"))
    assert _golds(gsm8k.load(str(clone), split="train")) == ref  # the config 'main' is entered
    assert _golds(gsm8k.load(f"local:{clone}")) == ref[:1]  # default split: test
    datasets.DatasetDict({"train": datasets.Dataset.from_list(GSM_ROWS),
                          "test": datasets.Dataset.from_list(GSM_ROWS[:2])}).save_to_disk(str(tmp_path / "saved"))
    assert _golds(gsm8k.load(str(tmp_path / "saved"), split="train")) == ref
    assert _golds(gsm8k.load(str(tmp_path / "saved"))) == ref[:2]


def test_gsm8k_bad_files_name_the_file(tmp_path):
    bad = tmp_path / "train.parquet"
    bad.write_bytes(b"\x00\xff" * 64)
    with pytest.raises(DataSourceError, match=r"train\.parquet: cannot read parquet"):
        gsm8k.load(str(bad), split="train")
    misnamed = tmp_path / "test.jsonl"
    datasets.Dataset.from_list(GSM_ROWS).to_parquet(str(misnamed))  # parquet bytes under a .jsonl name
    with pytest.raises(DataSourceError, match=r"test\.jsonl:1: not UTF-8 text"):
        gsm8k.load(str(misnamed))


def test_gsm8k_hub_spec_with_config_and_split(monkeypatch):
    calls = []
    _hub_returns(monkeypatch, GSM_ROWS[:2], calls)
    assert len(gsm8k.load("hub:my-org/gsm8k-copy:socratic@train")) == 2  # spec split wins over 'test'
    assert calls == [(("my-org/gsm8k-copy", "socratic"), {"split": "train"})]


def test_trl_rows_in_single_turn_loaders(tmp_path):
    q, a = GSM_ROWS[0]["question"], GSM_ROWS[0]["answer"]
    conv = {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    pc_str = {"prompt": q, "completion": a}
    pc_msgs = {"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}]}
    ref = _golds(gsm8k.load(str(_jsonl(tmp_path / "native.jsonl", GSM_ROWS[:1]))))
    for i, row in enumerate((conv, pc_str, pc_msgs)):
        assert _golds(gsm8k.load(str(_jsonl(tmp_path / f"trl{i}.jsonl", [row])))) == ref
    ex = alpaca.load(str(_jsonl(tmp_path / "chat.jsonl", [pc_str])))
    assert ex[0].prompt == q and ex[0].gold == a
    sys_row = {"messages": [{"role": "system", "content": "Be brief."}] + conv["messages"]}
    with pytest.raises(DataSourceError, match=r"sys\.jsonl:1: task 'gsm8k' reads one user prompt.*'system'"):
        gsm8k.load(str(_jsonl(tmp_path / "sys.jsonl", [sys_row])))
    tool = {"messages": [{"role": "user", "content": q}, {"role": "tool", "content": a}]}
    with pytest.raises(DataSourceError, match=r"tool\.jsonl:1: messages\[1\]: role 'tool' is not supported"):
        orca_math.load(str(_jsonl(tmp_path / "tool.jsonl", [tool])))


def test_text_document_rows(tmp_path, monkeypatch):
    docs = [{"text": "First document.\nIts second line."}, {"text": "  "}, {"text": "Second document."}]
    path = _jsonl(tmp_path / "docs.jsonl", docs)
    assert text.load_texts(str(path)) == ["First document.\nIts second line.", "Second document."]
    assert text.load_texts(str(path), unit="line") == ["First document.", "Its second line.", "Second document."]
    _hub_returns(monkeypatch, docs)
    assert text.load_texts("hub:someone/corpus@train") == text.load_texts(str(path))  # documents, not lines
    with pytest.raises(DataSourceError, match=r"bad\.jsonl:1: missing string field 'text'"):
        text.load_texts(str(_jsonl(tmp_path / "bad.jsonl", [{"body": "x"}])))
