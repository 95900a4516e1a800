"""SFT and RL set builders: counts, manifests, explicit sources, overlap checks, hub failures, CLI."""

from __future__ import annotations

import json

import pytest

from looplm.data.jsonl import read_jsonl, write_jsonl
from looplm.data.mixture import DataBuildError
from looplm.data.rl import RLConfig, build_rl
from looplm.data.sft import SFTConfig, build_sft, manifest_path
from looplm.tasks.base import DataSourceError, in_split


def sft(tmp_path, name="sft.jsonl", **kw):
    kw.setdefault("recipe", "math-heavy")
    return build_sft(SFTConfig(out=tmp_path / name, **kw))


def test_sft_counts_manifest_and_rows(tmp_path, gsm8k_dir, alpaca_file):
    m = sft(tmp_path, sizes=(40, 20, 10), math_source="gsm8k", gsm8k_source=str(gsm8k_dir),
            alpaca_source=str(alpaca_file), replay=0.2)
    rows = read_jsonl(tmp_path / "sft.jsonl", required=("prompt", "response", "domain"))
    counts = {d: sum(r["domain"] == d for r in rows) for d in ("logic", "math", "chat", "replay")}
    assert counts == {"logic": 40, "math": 20, "chat": 10, "replay": 18}  # 18 / 88 ~= 0.2
    assert m["counts"] == counts and m["rows"] == 88
    disk = json.loads(manifest_path(tmp_path / "sft.jsonl").read_text())
    assert disk["sources"]["math"]["task"] == "gsm8k" and disk["sources"]["math"]["available"] == 60
    assert disk["sources"]["math"]["checked_against_test"].endswith("test.jsonl")
    assert disk["sources"]["chat"]["source"] == str(alpaca_file)
    logic = [r for r in rows if r["domain"] == "logic"]
    assert all(r["prompt"].startswith("Algorithm: DFS") and r["response"].startswith("Trace: <search>") for r in logic)
    assert all(in_split(r["prompt"], "train") for r in logic)
    replay = [r for r in rows if r["domain"] == "replay"]
    assert all(r["prompt"].startswith("dfs:\nA: [[") and " | " in r["response"] for r in replay)
    math = [r for r in rows if r["domain"] == "math"]
    assert all("#### " in r["response"] and "<<" not in r["response"] for r in math)
    assert [r["domain"] for r in rows] != sorted(r["domain"] for r in rows)  # shuffled


def test_sft_defaults_and_determinism(tmp_path):
    a = sft(tmp_path, "a.jsonl", sizes=(30, 30, 0), math_source="word-problems")
    b = sft(tmp_path, "b.jsonl", sizes=(30, 30, 0), math_source="word-problems")
    c = sft(tmp_path, "c.jsonl", sizes=(30, 30, 0), math_source="word-problems", seed=1)
    assert a["sha256"] == b["sha256"] != c["sha256"]
    assert a["counts"] == {"logic": 30, "math": 30} and "chat" not in a["sources"]  # size 0: no source
    assert a["sizes_requested"]["chat"] == 0


def test_sft_default_recipe_sizes(tmp_path, alpaca_file, gsm8k_dir):
    # math-heavy asks 1000 / 333 / 333: the small local files are too small and that is an error
    with pytest.raises(DataBuildError, match="asked for 333 rows but the source has 60"):
        sft(tmp_path, math_source="gsm8k", gsm8k_source=str(gsm8k_dir), alpaca_source=str(alpaca_file))
    # 81 Alpaca rows, of which the 70 whose prompts hash into the train split are usable for SFT
    with pytest.raises(DataBuildError, match="alpaca.*train split.*asked for 333 rows but the source has 70"):
        sft(tmp_path, math_source="arith", alpaca_source=str(alpaca_file))
    assert not (tmp_path / "sft.jsonl").exists()


def test_sft_sources_must_be_explicit(tmp_path, alpaca_file):
    with pytest.raises(DataBuildError, match="--math-source"):
        sft(tmp_path, sizes=(5, 5, 0))
    with pytest.raises(DataBuildError, match="--gsm8k PATH"):
        sft(tmp_path, sizes=(5, 5, 0), math_source="gsm8k")
    with pytest.raises(DataBuildError, match="--alpaca PATH"):
        sft(tmp_path, sizes=(5, 0, 5))
    with pytest.raises(DataBuildError, match="recipe"):
        sft(tmp_path, recipe="four-domain")
    with pytest.raises(DataBuildError, match="nothing to build"):
        sft(tmp_path, sizes=(0, 0, 0))


def test_sft_generated_chat_on_request(tmp_path):
    m = sft(tmp_path, sizes=(10, 10, 40), math_source="word-problems", alpaca_source="generated")
    rows = read_jsonl(tmp_path / "sft.jsonl", required=("prompt", "response", "domain"))
    chat = [r for r in rows if r["domain"] == "chat"]
    assert len(chat) == 40 == m["counts"]["chat"]
    assert m["sources"]["chat"] == {"kind": "generated", "task": "synth_chat", "split": "train"}
    disk = json.loads(manifest_path(tmp_path / "sft.jsonl").read_text())
    assert disk["sources"]["chat"]["kind"] == "generated" and disk["sources"]["logic"]["kind"] == "generated"
    from looplm.data.sources import derive_seed
    from looplm.tasks import synth_chat
    expected = synth_chat.generate(40, seed=derive_seed(0, "sft", "chat"), split="train")
    assert sorted((r["prompt"], r["response"]) for r in chat) == sorted((e.prompt, e.answer) for e in expected)
    assert all(in_split(r["prompt"], "train") for r in chat) and len({r["prompt"] for r in chat}) > 30
    again = sft(tmp_path, "again.jsonl", sizes=(10, 10, 40), math_source="word-problems", alpaca_source="generated")
    assert again["sha256"] == m["sha256"]


def test_sft_gsm8k_hub_failure_does_not_fall_back(tmp_path, alpaca_file, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataSourceError) as e:
        sft(tmp_path, sizes=(5, 5, 5), math_source="gsm8k", gsm8k_source="hub", alpaca_source=str(alpaca_file))
    assert "openai/gsm8k" in str(e.value) and "--gsm8k PATH" in str(e.value) and "no network" in str(e.value)
    assert not (tmp_path / "sft.jsonl").exists()


def test_sft_detects_gsm8k_test_overlap(tmp_path, gsm8k_dir):
    train = (gsm8k_dir / "train.jsonl").read_text().splitlines()
    with (gsm8k_dir / "test.jsonl").open("a") as f:
        f.write("\n".join(train) + "\n")
    with pytest.raises(DataBuildError, match="also occur in the test split"):
        sft(tmp_path, sizes=(0, 10, 0), math_source="gsm8k", gsm8k_source=str(gsm8k_dir))


def test_sft_exclude_files(tmp_path):
    m = sft(tmp_path, "base.jsonl", sizes=(20, 0, 0))
    rows = read_jsonl(tmp_path / "base.jsonl")
    write_jsonl(tmp_path / "eval.jsonl", [{"prompt": rows[3]["prompt"], "answer": "x"}])
    with pytest.raises(DataBuildError, match="overlap"):
        sft(tmp_path, "x.jsonl", sizes=(20, 0, 0), exclude=[str(tmp_path / "eval.jsonl")])
    m2 = sft(tmp_path, "y.jsonl", sizes=(20, 0, 0), exclude=[str(tmp_path / "eval.jsonl")], drop_overlap=True)
    assert m2["rows"] == m["rows"] - 1 and m2["dropped_overlaps"] == 1


def test_rl_generated_and_loaded(tmp_path, gsm8k_dir):
    m = build_rl(RLConfig(task="dfs-verbal", n=12, out=tmp_path / "rl.jsonl", opts={"max_nodes": 5}))
    rows = read_jsonl(tmp_path / "rl.jsonl", required=("prompt", "answer", "task"))
    assert len(rows) == 12 == m["rows"] and all(r["task"] == "dfs_verbal" for r in rows)
    assert all(r["answer"].startswith("[A") for r in rows)
    from looplm.tasks import get_task
    assert all(get_task("dfs_verbal").extract_answer("Answer: Path is " + r["answer"]) == r["answer"] for r in rows)
    assert json.loads(manifest_path(tmp_path / "rl.jsonl").read_text())["source"]["opts"] == {"max_nodes": 5}
    m = build_rl(RLConfig(task="gsm8k", n=7, out=tmp_path / "g.jsonl", source=str(gsm8k_dir)))
    rows = read_jsonl(tmp_path / "g.jsonl")
    assert m["source"]["available"] == 60 and len(rows) == 7
    assert all(int(r["answer"]) > 0 and "(train)" in r["prompt"] for r in rows)


def test_rl_errors(tmp_path, gsm8k_dir, monkeypatch):
    with pytest.raises(DataBuildError, match="needs|pass --source"):
        build_rl(RLConfig(task="gsm8k", n=5, out=tmp_path / "a.jsonl"))
    with pytest.raises(DataBuildError, match="asked for 100 rows"):
        build_rl(RLConfig(task="gsm8k", n=100, out=tmp_path / "a.jsonl", source=str(gsm8k_dir)))
    with pytest.raises(DataBuildError, match="--n"):
        build_rl(RLConfig(task="arith", n=0, out=tmp_path / "a.jsonl"))
    with pytest.raises(KeyError, match="unknown task"):
        build_rl(RLConfig(task="chess", n=1, out=tmp_path / "a.jsonl"))
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(DataSourceError, match="openai/gsm8k.*offline.*--source PATH"):
        build_rl(RLConfig(task="gsm8k", n=5, out=tmp_path / "a.jsonl", source="hub"))


def test_cli(tmp_path, tok_dir, text_file, capsys):
    from looplm.cli import main

    for sub, flag in (("pretrain-mix", "text=generated"), ("sft", "PATH|hub|generated"), ("rl", "--task")):
        assert main(["data", sub, "--help"]) == 0
        assert flag in capsys.readouterr().out
    assert main(["data", "rl", "--task", "arith", "--n", "5", "--out", str(tmp_path / "r.jsonl")]) == 0
    assert main(["data", "sft", "--recipe", "math-heavy", "--sizes", "4,0,0", "--out", str(tmp_path / "s.jsonl")]) == 0
    assert main(["data", "pretrain-mix", "--tokenizer", str(tok_dir), "--out", str(tmp_path / "p"),
                 "--tokens", "20k", "--val-tokens", "2k", "--source", f"text=local:{text_file}"]) == 0
    out = capsys.readouterr().out
    assert '"tokens": 20000' in out
    assert main(["data", "pretrain-mix", "--tokenizer", str(tok_dir), "--out", str(tmp_path / "g"),
                 "--tokens", "20k", "--val-tokens", "1k", "--source", "text=generated"]) == 0
    assert json.loads((tmp_path / "g" / "manifest.json").read_text())["domains"]["text"]["generated"] is True
    assert main(["data", "sft", "--recipe", "math-heavy", "--sizes", "2,2,6", "--math-source", "arith",
                 "--alpaca", "generated", "--out", str(tmp_path / "c.jsonl")]) == 0
    assert json.loads(manifest_path(tmp_path / "c.jsonl").read_text())["sources"]["chat"]["task"] == "synth_chat"
    capsys.readouterr()
    assert main(["data", "sft", "--recipe", "math-heavy", "--sizes", "4,4,0", "--out", str(tmp_path / "t.jsonl")]) == 2
    assert "--math-source" in capsys.readouterr().err


def test_math_heavy_recipe_on_shared_data(tmp_path, shared_data):
    gsm8k, alpaca = shared_data / "gsm8k", shared_data / "alpaca" / "alpaca_en_demo.json"
    if not (gsm8k / "train.jsonl").is_file() or not alpaca.is_file():
        pytest.skip("shared gsm8k/alpaca files absent")
    m = sft(tmp_path, math_source="gsm8k", gsm8k_source=str(gsm8k), alpaca_source=str(alpaca))
    assert m["counts"] == {"logic": 1000, "math": 333, "chat": 333}
    assert m["sources"]["math"]["available"] == 7473
    assert m["sources"]["math"]["checked_against_test"] == str(gsm8k / "test.jsonl")


def test_sft_chat_rows_come_from_the_train_split_only(tmp_path, alpaca_file):
    from looplm.tasks.base import in_split

    m = sft(tmp_path, sizes=(0, 0, 60), alpaca_source=str(alpaca_file))
    rows = read_jsonl(tmp_path / "sft.jsonl", required=("prompt", "response", "domain"))
    assert len(rows) == 60 and all(in_split(r["prompt"], "train") for r in rows)
    assert m["sources"]["chat"]["held_out_for_eval"] == 11
