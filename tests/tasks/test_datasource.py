"""The source resolver: spec grammar, the hub call, every local layout giving the same rows as a
naive JSON reading, and errors that name the file (and line). Fixtures are written by the tests."""

from __future__ import annotations

import csv
import json

import datasets
import pytest

from looplm.tasks.datasource import (DataFormatError, DataSourceError, Spec, data_files, has_split, iter_rows,
                                     parse_spec, read_rows, with_split)

ROWS = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(7)]


def _rows(source, split="train", **kw):
    return [r for r, _ in read_rows(str(source), split, **kw)]


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _write_parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


def _write_csv(path, rows):
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


# ----------------------------------------------------------------------------- specs


def test_spec_grammar():
    assert parse_spec("hub", ("openai/gsm8k", "main")) == Spec("hub", "openai/gsm8k", "main")
    assert parse_spec("hub:openai/gsm8k") == Spec("hub", "openai/gsm8k")
    assert parse_spec("hub:openai/gsm8k:main@test") == Spec("hub", "openai/gsm8k", "main", "test")
    assert parse_spec("hub:org/x@train[:10%]") == Spec("hub", "org/x", None, "train[:10%]")
    for s in ("hub:openai/gsm8k:main@test", "hub:a", "hub:a@b"):
        assert str(parse_spec(s)) == s
    assert parse_spec("local:data/x.jsonl").path.as_posix() == "data/x.jsonl"
    assert parse_spec("data/x.jsonl") == parse_spec("local:data/x.jsonl")
    for bad in ("", " ", "local:", "hub:", "hub::c", "hub:a:", "hub:a@", "hub:a:b:c"):
        with pytest.raises(DataSourceError):
            parse_spec(bad)
    with pytest.raises(DataSourceError, match="no default hub dataset"):
        parse_spec("hub")
    assert with_split("hub:a:b@train", "test") == "hub:a:b@test" and with_split("hub:a", "test") == "hub:a@test"
    assert with_split("hub", "test") == "hub" and with_split("x/train.jsonl", "test") == "x/train.jsonl"


def test_hub_spec_calls_load_dataset(monkeypatch):
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or ROWS[:2])
    got = read_rows("hub:openai/gsm8k:main@test", "train")  # the spec's split wins over the loader's
    assert calls == [(("openai/gsm8k", "main"), {"split": "test"})]
    assert [r for r, _ in got] == ROWS[:2] and got[1][1] == "hub:openai/gsm8k:main@test row 1"
    read_rows("hub:org/plain", "validation")
    read_rows("hub", "train", default_hub=("openai/gsm8k", "main"))
    assert calls[1:] == [(("org/plain",), {"split": "validation"}), (("openai/gsm8k", "main"), {"split": "train"})]


def test_hub_spec_through_real_datasets_on_local_files(tmp_path, monkeypatch):
    """The hub path with a real `datasets.Dataset`: NAME is served by datasets' own json builder."""
    real = datasets.load_dataset
    files = {"train": str(_write_jsonl(tmp_path / "tr.jsonl", ROWS[:5])),
             "test": str(_write_jsonl(tmp_path / "te.jsonl", ROWS[5:]))}

    def hub(name, *config, split):
        assert name == "someone/gsm" and config == ("main",)
        return real("json", data_files=files, split=split, cache_dir=str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "load_dataset", hub)
    assert _rows("hub:someone/gsm:main@test") == ROWS[5:]
    assert _rows("hub:someone/gsm:main", "train") == ROWS[:5]


# ----------------------------------------------------------------------------- local layouts


def test_every_file_format_gives_the_same_rows(tmp_path):
    str_rows = ROWS
    _write_jsonl(tmp_path / "a.jsonl", str_rows)
    (tmp_path / "b.json").write_text(json.dumps(str_rows, indent=1))
    _write_jsonl(tmp_path / "c.json", str_rows)  # JSON lines under a .json name
    _write_parquet(tmp_path / "d.parquet", str_rows)
    _write_csv(tmp_path / "e.csv", str_rows)  # answers hold newlines: quoted fields
    for name in ("a.jsonl", "b.json", "c.json", "d.parquet", "e.csv"):
        assert _rows(tmp_path / name) == str_rows, name
        assert _rows(f"local:{tmp_path / name}", "test") == str_rows  # a single file is taken whole
    where = [w for _, w in read_rows(str(tmp_path / "e.csv"))]
    assert where[0].endswith("e.csv:3") and where[1].endswith("e.csv:5")  # the line each row ends on


def test_save_to_disk_directories(tmp_path):
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:4]),
                               "test": datasets.Dataset.from_list(ROWS[4:])})
    dd.save_to_disk(str(tmp_path / "dd"))
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    assert _rows(tmp_path / "dd", "test") == ROWS[4:] and _rows(tmp_path / "dd") == ROWS[:4]
    assert _rows(tmp_path / "one", "test") == ROWS  # a single saved Dataset is taken whole
    assert has_split(tmp_path / "dd", "test") and not has_split(tmp_path / "one", "test")
    with pytest.raises(DataSourceError, match=r"dd: saved DatasetDict has no split 'validation' \(splits: train, test\)"):
        _rows(tmp_path / "dd", "validation")
    assert read_rows(str(tmp_path / "dd"), "test")[0][1].endswith("dd[test] row 0")


def test_hub_layout_directories(tmp_path):
    hub = tmp_path / "gsm8k_clone"
    _write_parquet(hub / "main" / "train-00000-of-00002.parquet", ROWS[:3])
    _write_parquet(hub / "main" / "train-00001-of-00002.parquet", ROWS[3:5])
    _write_parquet(hub / "main" / "test-00000-of-00001.parquet", ROWS[5:])
    _write_parquet(hub / "socratic" / "train-00000-of-00001.parquet", ROWS[:1])
    (hub / "README.md").write_text("---\nconfigs: ...\n---\n")
    (hub / ".git").mkdir()
    _write_jsonl(hub / ".git" / "train.jsonl", ROWS)  # hidden folders are not data
    assert _rows(hub, "train", default_hub=("openai/gsm8k", "main")) == ROWS[:5]  # shards in order
    assert _rows(hub / "main", "test") == ROWS[5:]
    with pytest.raises(DataSourceError, match="several folders.*main, socratic"):
        _rows(hub, "train")  # no config given: two configs hold a train split
    flat = tmp_path / "flat"
    _write_jsonl(flat / "train.jsonl", ROWS[:5])
    _write_jsonl(flat / "test.jsonl", ROWS[5:])
    (flat / "train.manifest.json").write_text("{}")
    (flat / "dataset_info.json").write_text("{}")
    (flat / "LICENSE").write_text("MIT")
    assert data_files(flat, "test") == [flat / "test.jsonl"] and _rows(flat) == ROWS[:5]
    with pytest.raises(DataSourceError, match="no file of split 'validation'.*files: test.jsonl, train.jsonl"):
        _rows(flat, "validation")
    unsplit = tmp_path / "unsplit"
    _write_jsonl(unsplit / "rows_a.jsonl", ROWS[:2])
    _write_jsonl(unsplit / "rows_b.jsonl", ROWS[2:])
    assert _rows(unsplit) == ROWS and not has_split(unsplit, "test")  # files naming no split are train
    with pytest.raises(DataSourceError, match="no file of split 'test'"):
        _rows(unsplit, "test")
    with pytest.raises(DataSourceError, match="no data files"):
        _rows(_empty(tmp_path), "train")


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "notes.md").write_text("nothing here")
    return d


def test_plain_text_only_for_text_loaders(tmp_path):
    p = tmp_path / "wiki.train.raw"
    p.write_bytes(b" = T = \r\n line one\r\n\rlast")
    assert _rows(p, text=True) == [{"line": " = T = "}, {"line": " line one"}, {"line": ""}, {"line": "last"}]
    assert _rows(tmp_path, "train", text=True)[0] == {"line": " = T = "}  # wiki.train.raw names the split
    with pytest.raises(DataFormatError, match=r"wiki\.train\.raw: unsupported file type '\.raw'"):
        _rows(p)


# ----------------------------------------------------------------------------- errors


def test_bad_files_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not a parquet file at all")
    with pytest.raises(DataFormatError, match=r"bad\.parquet: cannot read parquet"):
        _rows(bad)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + '{"question": "caf\xe9"}'.encode("latin-1") + b"\n")
    with pytest.raises(DataFormatError, match=r"latin\.jsonl:2: not UTF-8 text"):
        _rows(latin)
    truncated = tmp_path / "t.jsonl"
    truncated.write_text(json.dumps(ROWS[0]) + "\n" + '{"question": "q",\n')
    with pytest.raises(DataFormatError, match=r"t\.jsonl:2: invalid JSON"):
        _rows(truncated)
    c = tmp_path / "c.csv"
    c.write_text("question,answer\nq1,a1\nq2,a2,extra\n")
    with pytest.raises(DataFormatError, match=r"c\.csv:3: 3 fields, the header has 2"):
        _rows(c)
    j = tmp_path / "j.json"
    j.write_text('[{"question": "q"},\n {"question": }]')
    with pytest.raises(DataFormatError, match=r"j\.json:2: invalid JSON"):
        _rows(j)
    with pytest.raises(DataFormatError, match=r"j\.json: row 0: missing field\(s\) answer"):
        j.write_text(json.dumps([{"question": "q"}]))
        _rows(j, required=("question", "answer"))
    with pytest.raises(DataFormatError, match=r"x\.xlsx: unsupported file type"):
        (tmp_path / "x.xlsx").write_bytes(b"PK\x03\x04")
        _rows(tmp_path / "x.xlsx")
    with pytest.raises(DataSourceError, match="absent: no such file or directory"):
        _rows(tmp_path / "absent")


def test_corrupt_saved_dataset_names_the_directory(tmp_path):
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    for arrow in (tmp_path / "one").glob("*.arrow"):
        arrow.write_bytes(b"garbage")
    with pytest.raises(DataSourceError, match=r"one: cannot read the save_to_disk directory"):
        _rows(tmp_path / "one")


def test_rows_are_streamed(tmp_path):
    p = _write_jsonl(tmp_path / "s.jsonl", ROWS)
    with p.open("a") as f:
        f.write("{broken\n")
    it = iter_rows(str(p))
    assert next(it)[0] == ROWS[0]  # the bad last line is only met when reached
    with pytest.raises(DataFormatError, match=r"s\.jsonl:8"):
        list(it)
