"""Tests for looplm.tasks.base: numbers, the GSM8K strict regex, local readers, hub errors, splits,
and the registry."""

from __future__ import annotations

import json
from fractions import Fraction

import datasets
import pytest

from looplm import tasks
from looplm.tasks import base
from looplm.tasks.base import (DataSourceError, extract_hash_answer, hash_answer_scores, in_split,
                               numbers_equal, parse_number, read_json_array, read_jsonl)


@pytest.mark.parametrize("s, want", [
    ("10", Fraction(10)), ("10.0", Fraction(10)), ("$1,000.", Fraction(1000)), ("-5", Fraction(-5)),
    ("-$5", Fraction(-5)), (" 7 ", Fraction(7)), (".5", Fraction(1, 2)), ("3.25", Fraction(13, 4)),
    ("1,234,567", Fraction(1234567)), ("123456789012345", Fraction(123456789012345)),
])
def test_parse_number_accepts(s, want):
    assert parse_number(s) == want


@pytest.mark.parametrize("s", ["", "abc", "1e5", "1E5", "1/2", "1234567890123456", "1.2.3", "--5",
                               "5 apples", ".", "$", "0x10", "inf", "nan", "1" * 70, "-"])
def test_parse_number_rejects(s):
    assert parse_number(s) is None


def test_numbers_equal():
    assert numbers_equal("10.0", "10") and numbers_equal("$1,000", "1000.") and numbers_equal("0.50", ".5")
    assert numbers_equal("18", 18) and numbers_equal(Fraction(1, 2), "0.5")
    assert not numbers_equal("10.01", "10") and not numbers_equal("-3", "3")
    assert not numbers_equal(None, "1") and not numbers_equal("x", "x")
    # exact, not float: these differ only beyond double precision
    assert not numbers_equal("0.100000000000001", "0.1")


@pytest.mark.parametrize("text, want", [
    ("so 3+4=7\n#### 7", "7"), ("#### -3.5", "-3.5"), ("#### 1,000.", "1,000."),
    ("#### 12 and #### 13", "12"), ("####12", None), ("#### $5", None), ("no answer", None),
    ("The answer is 5", None),
])
def test_strict_regex(text, want):
    assert extract_hash_answer(text) == want


def test_hash_answer_scores_strict_vs_numeric():
    assert hash_answer_scores("#### 10.0", "10") == {"score": 1.0, "numeric": 1.0, "strict": 0.0,
                                                     "has_answer": 1.0}
    assert hash_answer_scores("#### 1,000.", "1000")["strict"] == 1.0
    assert hash_answer_scores("#### 11", "10")["score"] == 0.0
    assert hash_answer_scores("10", "10") == {"score": 0.0, "numeric": 0.0, "strict": 0.0,
                                              "has_answer": 0.0}


def test_read_jsonl_errors_name_file_and_line(tmp_path):
    good = json.dumps({"question": "q", "answer": "a"})
    p = tmp_path / "x.jsonl"
    p.write_text(good + "\n" + good + "\n{bad json\n")
    with pytest.raises(DataSourceError, match=r"x\.jsonl:3: invalid JSON"):
        read_jsonl(p, ("question", "answer"))
    p.write_text(good + "\n" + json.dumps({"question": "q"}) + "\n")
    with pytest.raises(DataSourceError, match=r"x\.jsonl:2: missing field\(s\) answer"):
        read_jsonl(p, ("question", "answer"))
    p.write_text(good + "\n\n" + good + "\n")
    with pytest.raises(DataSourceError, match=r"x\.jsonl:2: blank line"):
        read_jsonl(p, ("question",))
    p.write_text(good + "\n" + json.dumps({"question": 3, "answer": "a"}) + "\n")
    with pytest.raises(DataSourceError, match=r"x\.jsonl:2: field\(s\) question must be strings"):
        read_jsonl(p, ("question", "answer"))
    p.write_text(good + "\n" + good + "\n\n")  # trailing blank lines carry nothing
    assert len(read_jsonl(p, ("question",))) == 2
    with pytest.raises(DataSourceError, match="no such file"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_read_json_array_errors(tmp_path):
    p = tmp_path / "a.json"
    p.write_text('[{"instruction": "i", "output": "o"}, {"instruction": "i"}]')
    with pytest.raises(DataSourceError, match=r"a\.json: row 1: missing field"):
        read_json_array(p, ("instruction", "output"))
    p.write_text('[{"instruction": "i",\n "output": }]')
    with pytest.raises(DataSourceError, match=r"a\.json:2: invalid JSON"):
        read_json_array(p)
    p.write_text('{"instruction": "i"}')
    with pytest.raises(DataSourceError, match="expected a JSON array"):
        read_json_array(p)


def test_load_hub_failure_names_dataset_and_remedy(monkeypatch):
    def boom(*args, **kwargs):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(DataSourceError) as e:
        base.load_hub("openai/gsm8k", "main", split="test", task="gsm8k")
    msg = str(e.value)
    assert "openai/gsm8k" in msg and "'main'" in msg and "hub unreachable" in msg
    assert "--source local:PATH" in msg and "generated data" in msg


def test_load_hub_passes_arguments(monkeypatch):
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or ["rows"])
    assert base.load_hub("yahma/alpaca-cleaned", None, split="train") == ["rows"]
    assert base.load_hub("Salesforce/wikitext", "wikitext-2-raw-v1", split="test") == ["rows"]
    assert calls == [(("yahma/alpaca-cleaned",), {"split": "train"}),
                     (("Salesforce/wikitext", "wikitext-2-raw-v1"), {"split": "test"})]


def test_parse_source():
    assert base.parse_spec("hub", ("openai/gsm8k", "main")) == base.parse_spec("hub:openai/gsm8k:main")
    assert base.parse_spec("local:/x/y.jsonl").path.as_posix() == "/x/y.jsonl"
    assert base.parse_spec("data/y.jsonl").kind == "local"
    for bad in ("", "local:", "  ", "hub:", "hub:a:b:c", "hub:a@"):
        with pytest.raises(DataSourceError):
            base.parse_spec(bad)


def test_in_split_partitions_and_reserves_about_ten_percent():
    prompts = [f"What is {a} + {b}?" for a in range(100) for b in range(20)]
    train = {p for p in prompts if in_split(p, "train")}
    evals = {p for p in prompts if in_split(p, "eval")}
    assert train.isdisjoint(evals) and train | evals == set(prompts)
    assert 0.07 < len(evals) / len(prompts) < 0.13
    assert all(in_split(p, "any") for p in prompts[:10])
    with pytest.raises(ValueError, match="split"):
        in_split("x", "validation")


def test_token_f1():
    assert base.token_f1("The cat sat.", "the cat sat") == 1.0
    assert base.token_f1("dog", "the cat") == 0.0
    assert base.token_f1("the cat", "the cat sat on the mat") == pytest.approx(2 * 1 * (2 / 6) / (1 + 2 / 6))


def test_format_number():
    assert [base.format_number(x) for x in (Fraction(7), Fraction(-5, 4), Fraction(1, 3))] == \
        ["7", "-1.25", "1/3"]


def test_registry_exposes_the_common_api():
    assert set(tasks.TASKS) == {"clrs_dfs", "dfs_verbal", "arith", "word_problems", "gsm8k", "alpaca",
                                "text", "orca_math", "synth_chat"}
    for name, mod in tasks.TASKS.items():
        assert callable(mod.extract_answer) and callable(mod.score), name
        if name in tasks.GENERATED_TASKS:
            assert callable(mod.generate) and callable(mod.iter_examples), name
        else:
            assert callable(mod.load), name
    assert tasks.get_task("dfs-verbal") is tasks.TASKS["dfs_verbal"]
    with pytest.raises(KeyError, match="known tasks"):
        tasks.get_task("bfs")
