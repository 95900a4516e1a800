"""SFT and RL rows from any source: looplm's rows and TRL's `messages` / `prompt`+`completion` rows,
what the SFT trainer encodes from them, the RL gold answers, source fingerprints, and the builders
(`looplm data sft|rl`) on parquet, hub-layout and hub sources."""

from __future__ import annotations

import json

import datasets
import pytest

from looplm.data.jsonl import read_jsonl
from looplm.data.rl import RLConfig, build_rl
from looplm.data.rowsets import read_rl_rows, read_sft_rows, source_fingerprint
from looplm.data.sft import SFTConfig, build_sft
from looplm.data.shards import file_sha256
from looplm.tasks.base import DataSourceError

SYSTEM = {"role": "system", "content": "You are terse."}


def _u(c):
    return {"role": "user", "content": c}


def _a(c):
    return {"role": "assistant", "content": c}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


SFT_ROWS = [
    {"prompt": "What is 2 + 3?", "response": "5", "domain": "math"},
    {"messages": [SYSTEM, _u("Hi"), _a("Hello."), _u("Bye"), _a("Goodbye.")]},
    {"prompt": "Name a colour.", "completion": "Red."},
    {"prompt": [SYSTEM, _u("Count to 2.")], "completion": [_a("1 2")]},
]
SFT_MESSAGES = [[_u("What is 2 + 3?"), _a("5")], SFT_ROWS[1]["messages"], [_u("Name a colour."), _a("Red.")],
                [SYSTEM, _u("Count to 2."), _a("1 2")]]


def test_sft_rows_in_every_shape(tmp_path):
    rows = read_sft_rows(str(_jsonl(tmp_path / "s.jsonl", SFT_ROWS)))
    assert [r.messages for r in rows] == SFT_MESSAGES
    assert [r.domain for r in rows] == ["math", "all", "all", "all"] and rows[1].where.endswith("s.jsonl:2")
    datasets.Dataset.from_list([{"messages": m} for m in SFT_MESSAGES]).to_parquet(str(tmp_path / "train.parquet"))
    assert [r.messages for r in read_sft_rows(str(tmp_path / "train.parquet"))] == SFT_MESSAGES


@pytest.mark.parametrize("row, why", [
    ({"prompt": "p"}, r"s\.jsonl:1: missing field\(s\) response"),
    ({"text": "p"}, r"s\.jsonl:1: missing field\(s\) messages"),
    ({"messages": [_u("p")]}, "no assistant message"),
    ({"messages": [_u("p"), {"role": "tool", "content": "x"}]}, r"messages\[1\]: role 'tool' is not supported"),
    ({"messages": [_u("p"), SYSTEM, _a("x")]}, r"messages\[1\]: a system message must be the first"),
    ({"messages": [_u("p"), {"role": "assistant", "content": [{"type": "text", "text": "x"}]}]}, "must be a string"),
    ({"messages": [_u("p"), {"role": "assistant", "content": "x", "tool_calls": []}]}, "unsupported message key"),
    ({"prompt": 3, "response": "r"}, "must be strings"),
    ({"prompt": [_u("p")], "completion": "r", "domain": "replay"}, "replay row"),
])
def test_sft_row_errors_name_the_line(tmp_path, row, why):
    with pytest.raises(DataSourceError, match=why):
        read_sft_rows(str(_jsonl(tmp_path / "s.jsonl", [row])))


def test_sft_trainer_encodes_trl_rows_with_assistant_masks(tmp_path, small_tokenizer):
    from looplm.train.sft import encode_rows

    tok = small_tokenizer
    examples = encode_rows(_jsonl(tmp_path / "s.jsonl", SFT_ROWS), tok, seq_len=512)
    for ex, msgs in zip(examples, SFT_MESSAGES):
        assert (ex.ids, ex.mask) == tok.encode_messages(msgs)
        want = "".join(m["content"] + "<|eos|>" for m in msgs if m["role"] == "assistant")
        assert tok.decode([t for t, m in zip(ex.ids, ex.mask) if m]) == want  # every assistant turn, nothing else
    assert (examples[0].ids, examples[0].mask) == tok.encode_chat("What is 2 + 3?", "5")  # today's rows unchanged
    fits_first = len(examples[0].ids) - 1  # row 1 fits exactly, the longer row 2 does not
    with pytest.raises(DataSourceError, match=rf"s\.jsonl:2: \d+ tokens exceed --seq-len {fits_first} "):
        encode_rows(tmp_path / "s.jsonl", tok, seq_len=fits_first)


def test_rl_rows(tmp_path):
    rows = [{"prompt": "What is 2 + 2?", "answer": "4", "task": "gsm8k"},
            {"prompt": [_u("What is 3 + 3?")], "completion": "3 + 3 = 6\n#### 6", "task": "gsm8k"},
            {"prompt": "What is 1 + 1?", "completion": [_a("#### 2")], "task": "arith"}]
    assert read_rl_rows(str(_jsonl(tmp_path / "r.jsonl", rows))) == [
        {"prompt": "What is 2 + 2?", "answer": "4", "task": "gsm8k"},
        {"prompt": "What is 3 + 3?", "answer": "6", "task": "gsm8k"},
        {"prompt": "What is 1 + 1?", "answer": "2", "task": "arith"}]
    for bad, why in (({"prompt": "p", "answer": "1"}, r"r\.jsonl:1: missing string field 'task'"),
                     ({"prompt": [SYSTEM, _u("p")], "answer": "1", "task": "gsm8k"}, "one user turn"),
                     ({"prompt": "p", "completion": "no number", "task": "gsm8k"}, "finds no final answer"),
                     ({"prompt": "p", "task": "gsm8k"}, r"missing field\(s\) answer"),
                     ({"prompt": "p", "completion": "#### 1", "task": "chess"}, "unknown task 'chess'")):
        with pytest.raises(DataSourceError, match=why):
            read_rl_rows(str(_jsonl(tmp_path / "r.jsonl", [bad])))


def test_rl_rows_from_a_trl_parquet(tmp_path):
    """What `looplm grpo --prompts` reads (its loader calls `read_rl_rows`): TRL rows in a parquet file."""
    rows = [{"prompt": [_u(f"What is {i} + {i}?")], "completion": f"#### {2 * i}", "task": "gsm8k"} for i in range(4)]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "p.parquet"))
    got = read_rl_rows(str(tmp_path / "p.parquet"))
    assert [r["answer"] for r in got] == ["0", "2", "4", "6"] and got[1]["prompt"] == "What is 1 + 1?"


def test_fingerprints(tmp_path, monkeypatch):
    f = _jsonl(tmp_path / "a.jsonl", SFT_ROWS)
    assert source_fingerprint(str(f)) == file_sha256(f)  # what older runs recorded
    d = tmp_path / "d"
    d.mkdir()
    _jsonl(d / "train.jsonl", SFT_ROWS)
    before = source_fingerprint(str(d))
    _jsonl(d / "train.jsonl", SFT_ROWS[:2])
    assert source_fingerprint(str(d)) != before
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, split: SFT_ROWS[:1])
    h1 = source_fingerprint("hub:org/sft")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, split: SFT_ROWS[:2])
    assert source_fingerprint("hub:org/sft") != h1
    with pytest.raises(DataSourceError, match="no such file or directory"):
        source_fingerprint(str(tmp_path / "absent"))


# ----------------------------------------------------------------------------- the builders


def _gsm(i, tag):
    return {"question": f"Tom has {i} bags of 7 apples ({tag}). How many?", "answer": f"{i} * 7 = {7 * i}\n#### {7 * i}"}


def test_sft_builder_on_parquet_with_sibling_test_split(tmp_path):
    train = [_gsm(i, "train") for i in range(2, 30)]
    datasets.Dataset.from_list(train).to_parquet(str(tmp_path / "train-00000-of-00001.parquet"))
    datasets.Dataset.from_list([_gsm(i, "test") for i in range(3)]).to_parquet(str(tmp_path / "test-00000-of-00001.parquet"))
    m = build_sft(SFTConfig(recipe="math-heavy", out=tmp_path / "s.jsonl", sizes=(0, 10, 0), math_source="gsm8k",
                            gsm8k_source=str(tmp_path / "train-00000-of-00001.parquet")))
    assert m["sources"]["math"]["checked_against_test"].endswith("test-00000-of-00001.parquet")
    assert m["sources"]["math"]["available"] == 28 and len(read_jsonl(tmp_path / "s.jsonl")) == 10
    datasets.Dataset.from_list(train[:3]).to_parquet(str(tmp_path / "test-00000-of-00001.parquet"))
    with pytest.raises(DataSourceError, match="also occur in the test split"):
        build_sft(SFTConfig(recipe="math-heavy", out=tmp_path / "s2.jsonl", sizes=(0, 28, 0), math_source="gsm8k",
                            gsm8k_source=str(tmp_path / "train-00000-of-00001.parquet")))


def test_sft_builder_checks_a_hub_specs_test_split(tmp_path, monkeypatch):
    calls = []
    train = [_gsm(i, "train") for i in range(2, 12)]

    def hub(name, *config, split):
        calls.append((name, config, split))
        return train if split == "train" else train[:1]
    monkeypatch.setattr(datasets, "load_dataset", hub)
    with pytest.raises(DataSourceError, match="also occur in the test split hub:me/gsm:main@test"):
        build_sft(SFTConfig(recipe="math-heavy", out=tmp_path / "s.jsonl", sizes=(0, 10, 0), math_source="gsm8k",
                            gsm8k_source="hub:me/gsm:main@train"))
    assert calls == [("me/gsm", ("main",), "train"), ("me/gsm", ("main",), "test")]


def test_rl_builder_on_trl_rows_in_a_hub_layout_directory(tmp_path):
    d = tmp_path / "trl" / "data"
    d.mkdir(parents=True)
    rows = [{"messages": [_u(r["question"]), _a(r["answer"])]} for r in (_gsm(i, "train") for i in range(2, 10))]
    datasets.Dataset.from_list(rows).to_parquet(str(d / "train-00000-of-00001.parquet"))
    m = build_rl(RLConfig(task="gsm8k", n=5, out=tmp_path / "rl.jsonl", source=str(tmp_path / "trl")))
    got = read_jsonl(tmp_path / "rl.jsonl", required=("prompt", "answer", "task"))
    assert m["source"]["available"] == 8 and len(got) == 5
    assert all(int(r["answer"]) == 7 * int(r["prompt"].split()[2]) for r in got)
