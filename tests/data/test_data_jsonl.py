"""JSONL reading errors name file:line; overlap and duplicate detection."""

from __future__ import annotations

import json

import pytest

from looplm.data.jsonl import (DataFormatError, check_overlap, count_duplicates, iter_jsonl, read_jsonl,
                               write_jsonl)
from looplm.tasks.base import DataSourceError, Example


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_round_trip(tmp_path):
    rows = [{"prompt": "p1", "response": "r1 é", "domain": "logic"}, {"prompt": "p2", "response": "", "domain": "x"}]
    path = tmp_path / "a.jsonl"
    assert write_jsonl(path, rows) == 2
    assert read_jsonl(path, required=("prompt", "response", "domain")) == rows
    assert not list(tmp_path.glob("*.tmp"))


def test_malformed_line_names_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.jsonl", ['{"prompt": "a"}', '{"prompt": "b"', '{"prompt": "c"}'])
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:2: invalid JSON"):
        read_jsonl(path)


def test_missing_and_non_string_fields(tmp_path):
    path = _write(tmp_path / "m.jsonl", ['{"prompt": "a", "answer": "1"}', '{"prompt": "b"}'])
    with pytest.raises(DataFormatError, match=r"m\.jsonl:2: missing field\(s\) answer"):
        read_jsonl(path, required=("prompt", "answer"))
    path = _write(tmp_path / "n.jsonl", ['{"prompt": 3}'])
    with pytest.raises(DataFormatError, match=r"n\.jsonl:1: field\(s\) prompt must be strings"):
        read_jsonl(path, required=("prompt",))
    path = _write(tmp_path / "o.jsonl", ['[1, 2]'])
    with pytest.raises(DataFormatError, match=r"o\.jsonl:1: expected a JSON object"):
        read_jsonl(path)


def test_blank_lines(tmp_path):
    path = _write(tmp_path / "b.jsonl", ['{"a": "1"}', '', '{"a": "2"}'])
    with pytest.raises(DataFormatError, match=r"b\.jsonl:2: blank line"):
        read_jsonl(path)
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"a": "1"}\n\n\n')
    assert read_jsonl(ok) == [{"a": "1"}]


def test_missing_file_is_a_data_source_error(tmp_path):
    with pytest.raises(DataSourceError, match="no such file"):
        list(iter_jsonl(tmp_path / "nope.jsonl"))


def test_streaming_reports_rows_before_the_error(tmp_path):
    path = _write(tmp_path / "s.jsonl", [json.dumps({"i": str(i)}) for i in range(5)] + ["oops"])
    it = iter_jsonl(path)
    assert [next(it)["i"] for _ in range(5)] == ["0", "1", "2", "3", "4"]
    with pytest.raises(DataFormatError, match=r"s\.jsonl:6"):
        next(it)


def test_check_overlap_and_duplicates():
    train = [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}, {"prompt": "b"}]
    evals = [{"prompt": "b"}, {"prompt": "z"}]
    assert check_overlap(train, evals) == [1, 3]
    assert check_overlap(train, [{"prompt": "q"}]) == []
    exs = [Example("b", "x", "1", "t"), Example("y", "x", "1", "t")]
    assert check_overlap(exs, evals) == [0]
    assert check_overlap([{"q": "b"}], [{"q": "b"}], key="q") == [0]
    assert count_duplicates(train) == 1 and count_duplicates(evals) == 0
    with pytest.raises(DataFormatError, match="no string field 'prompt'"):
        check_overlap([{"question": "a"}], evals)
