"""`looplm eval`: held-out items, prompt formats, scoring plumbing (an oracle scores 100%), chat loss
against a direct computation, outputs, bad input failing before work, and the alignment-tax table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from looplm.cli import main as cli_main
from looplm.config import ConfigError
from looplm.evaluate import scoring
from looplm.evaluate.compare import CompareConfig, run_compare
from looplm.evaluate.items import EVAL_TASKS, format_prompt, load_items
from looplm.evaluate.run import EvalConfig, run_eval
from looplm.tasks.base import DataSourceError, in_split

GENERATED = ("dfs-verbal", "clrs-dfs", "arith", "word-problems")


def make_ckpt(path: Path, config, tokenizer, stage: str, seed: int = 0) -> Path:
    from looplm.checkpoint import save_checkpoint
    from looplm.model import RecursiveCausalLM

    torch.manual_seed(seed)
    return save_checkpoint(path, RecursiveCausalLM(config), tokenizer, meta={"stage": stage})


@pytest.fixture(scope="module")
def cfg256(micro_config):
    return micro_config.replace(max_seq_len=256, max_steps=16)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, cfg256, small_tokenizer) -> Path:
    return make_ckpt(tmp_path_factory.mktemp("ev") / "sft", cfg256, small_tokenizer, "sft")


def quick(ckpt, **kw) -> EvalConfig:
    base = dict(ckpt=str(ckpt), n=3, max_new_tokens=6, progress=False, print_table=False)
    base.update(kw)
    return EvalConfig(**base)


# ------------------------------------------------------------------------------------- items
def test_items_are_held_out_and_deterministic(shared_data):
    for task in GENERATED:
        a = load_items(task, 20, seed=3).examples
        assert all(in_split(e.prompt, "eval") for e in a)
        assert [e.prompt for e in a] == [e.prompt for e in load_items(task, 20, seed=3).examples]
    chat = load_items("chat", 30, 0, alpaca=str(shared_data / "alpaca" / "alpaca_en_demo.json")).examples
    assert len(chat) == 30 and all(in_split(e.prompt, "eval") for e in chat)
    gsm = load_items("gsm8k", 5, 0, gsm8k=str(shared_data / "gsm8k")).examples
    first = json.loads((shared_data / "gsm8k" / "test.jsonl").read_text().split("\n", 1)[0])
    assert gsm[0].prompt == first["question"]  # the test split, not train


def test_hub_sources_go_through_datasets(monkeypatch):
    import looplm.tasks.base
    import looplm.tasks.datasource

    calls = []

    def fake_hub(name, config=None, split="train", task="?"):
        calls.append((name, config, split))
        if name == "openai/gsm8k":
            return [{"question": f"Q{i}?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(3)]
        return [{"instruction": f"Say {i}", "input": "", "output": f"{i}"} for i in range(200)]
    monkeypatch.setattr(looplm.tasks.datasource, "load_hub", fake_hub)  # every loader's hub path
    gsm = load_items("gsm8k", 2, 0, gsm8k="hub").examples
    assert [e.gold for e in gsm] == ["1", "2"] and calls[0] == ("openai/gsm8k", "main", "test")
    chat = load_items("chat", 3, 0, alpaca="hub").examples
    assert len(chat) == 3 and all(in_split(e.prompt, "eval") for e in chat)

    def down(name, config=None, split="train", task="?"):
        raise DataSourceError(f"could not load hub dataset {name}: offline; " + looplm.tasks.base.remedy_text(task))
    monkeypatch.setattr(looplm.tasks.datasource, "load_hub", down)
    with pytest.raises(DataSourceError, match="pass a local copy with --gsm8k PATH"):
        load_items("gsm8k", 2, 0, gsm8k="hub")


def test_prompt_formats(small_tokenizer):
    ex = load_items("dfs-verbal", 1, 0).examples[0]
    text, ids = format_prompt(small_tokenizer, ex, "chat")
    assert text == f"<|user|>\n{ex.prompt}\n<|assistant|>\n"
    assert ids == small_tokenizer.encode_chat(ex.prompt, ex.answer)[0][:len(ids)]  # what SFT trains on
    clrs = load_items("clrs-dfs", 1, 0).examples[0]
    text, ids = format_prompt(small_tokenizer, clrs, "raw")
    assert text == clrs.prompt and clrs.prompt.endswith("trace | pi:\n")
    assert ids[0] == small_tokenizer.eos_id and small_tokenizer.decode(ids[1:]) == clrs.prompt


# ----------------------------------------------------------------------------- scoring plumbing
def oracle_generate(tokenizer, answers: dict[tuple[int, ...], str], corrupt: bool = False):
    """A stand-in for looplm.generate.generate that answers every prompt with its reference + EOS."""
    from looplm.generate import GenerationOutput

    def fake(model, prompts, cfg):
        toks = [tokenizer.encode("no answer" if corrupt else answers[tuple(p)]) + [tokenizer.eos_id] for p in prompts]
        return GenerationOutput(tokens=toks, exit_steps=[[cfg.steps] * len(t) for t in toks])
    return fake


@pytest.mark.parametrize("corrupt", [False, True])
def test_oracle_completions_score_100_and_corrupted_0(monkeypatch, ckpt, small_tokenizer, corrupt):
    answers = {}
    for task in GENERATED:
        for ex in load_items(task, 3, 0).examples:
            fmt = "raw" if task == "clrs-dfs" else "chat"
            answers[tuple(format_prompt(small_tokenizer, ex, fmt)[1])] = ex.answer
    monkeypatch.setattr(scoring, "generate", oracle_generate(small_tokenizer, answers, corrupt))
    res = run_eval(quick(ckpt, tasks=GENERATED, max_new_tokens=None, write=False))
    for run in res["runs"]:
        assert run["metrics"]["score"] == (0.0 if corrupt else 1.0), run["task"]
        rec = run["records"][0]
        want = "no answer" if corrupt else load_items(run["task"], 3, 0).examples[0].answer
        assert rec["finished"] and rec["completion"] == want
    if not corrupt:
        dfs = next(r for r in res["runs"] if r["task"] == "dfs-verbal")
        assert dfs["metrics"]["trace_exact"] == 1.0 and dfs["metrics"]["valid_dfs"] == 1.0


def test_chat_loss_matches_direct_computation(ckpt, small_tokenizer, shared_data):
    from looplm.checkpoint import load_checkpoint

    model, tok, _ = load_checkpoint(ckpt)
    exs = load_items("chat", 5, 0, alpaca=str(shared_data / "alpaca" / "alpaca_en_demo.json")).examples
    res = scoring.eval_chat(model, tok, exs, steps=2, batch_size=3)
    total = count = 0.0
    for ex, rec in zip(exs, res["records"]):
        ids, mask = tok.encode_chat(ex.prompt, ex.answer)
        ids, mask = ids[:model.config.max_seq_len], mask[:model.config.max_seq_len]
        with torch.no_grad():
            logits = model(torch.tensor([ids]), 2).logits[0, :-1]
        nll = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
        m = torch.tensor(mask[1:], dtype=torch.bool)
        assert rec["tokens"] == int(m.sum()) and rec["tokens"] < len(ids) - 1  # prompt tokens excluded
        assert rec["loss"] == pytest.approx(float(nll[m].mean()), rel=1e-4)
        total, count = total + float(nll[m].sum()), count + int(m.sum())
    assert res["metrics"]["loss"] == pytest.approx(total / count, rel=1e-4)


# ------------------------------------------------------------------------------ full runs, outputs
def test_run_eval_all_tasks_sweep_writes_records_and_plot(ckpt, shared_data, tmp_path):
    res = run_eval(quick(ckpt, tasks=tuple(EVAL_TASKS), n=2, steps_sweep=(2, 3), out=str(tmp_path),
                         gsm8k=str(shared_data / "gsm8k"), alpaca=str(shared_data / "alpaca" / "alpaca_en_demo.json")))
    data = json.loads((tmp_path / "eval.json").read_text())
    assert (tmp_path / "accuracy_vs_steps.png").stat().st_size > 1000
    assert data["depths"] == [2, 3] and len(data["runs"]) == 2 * len(EVAL_TASKS)
    assert set(data["summary"]) == set(EVAL_TASKS) | {"gsm8k (strict)"}
    dfs = next(r for r in data["runs"] if r["task"] == "dfs-verbal" and r["steps"] == 3)
    rec = dfs["records"][0]
    assert {"prompt", "completion", "score", "exit_steps", "scores"} <= set(rec)
    assert rec["prompt"].startswith("<|user|>\n") and rec["exit_steps"] == [3] * rec["new_tokens"]
    assert data["tasks"]["clrs-dfs"]["format"] == "raw" and data["tasks"]["arith"]["format"] == "chat"
    chat = next(r for r in res["runs"] if r["task"] == "chat")
    assert chat["metrics"]["loss"] > 0 and chat["metrics"]["ppl"] > 1
    gsm = next(r for r in res["runs"] if r["task"] == "gsm8k")
    assert {"strict", "numeric"} <= set(gsm["metrics"])


def test_adaptive_exit_and_speculative_run(ckpt):
    res = run_eval(quick(ckpt, tasks=("arith",), n=2, steps=4, halt_threshold=0.5, speculative=True, write=False))
    rec = res["runs"][0]["records"][0]
    assert all(1 <= e <= 4 for e in rec["exit_steps"]) and sum(rec["accept_counts"]) == rec["new_tokens"]


def test_adaptive_uses_the_checkpoints_calibration(ckpt, tmp_path, cfg256, small_tokenizer):
    from looplm.checkpoint import save_checkpoint
    from looplm.model import RecursiveCausalLM

    with pytest.raises(ConfigError, match=r"EvalConfig\.adaptive: .*no calibrated halt_threshold"):
        run_eval(quick(ckpt, tasks=("arith",), adaptive=True, write=False))
    calibrated = save_checkpoint(tmp_path / "halt", RecursiveCausalLM(cfg256), small_tokenizer,
                                 meta={"stage": "calibrate-halt", "halt_threshold": 1e-6, "halt_min_steps": 2})
    res = run_eval(quick(calibrated, tasks=("arith",), n=2, steps=3, adaptive=True, write=False))
    assert (res["config"]["halt_threshold"], res["config"]["min_steps"]) == (1e-6, 2)
    recs = res["runs"][0]["records"]
    assert all(r["exit_steps"][0] == 3 for r in recs)  # the first token comes from the prompt, at full depth
    assert all(e == 2 for r in recs for e in r["exit_steps"][1:])  # tiny tau: generated tokens exit at min_steps
    assert any(len(r["exit_steps"]) > 1 for r in recs)
    with pytest.raises(ConfigError, match="adaptive"):
        quick(calibrated, adaptive=True, halt_threshold=0.5).validate()


def test_cli_eval_writes_json(ckpt, tmp_path, capsys):
    rc = cli_main(["eval", "--ckpt", str(ckpt), "--tasks", "arith", "--n", "2", "--max-new-tokens", "3",
                   "--no-progress", "--out", str(tmp_path)])
    assert rc == 0 and "arith" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval.json").read_text())["runs"][0]["metrics"]["n"] == 2


# --------------------------------------------------------------------------------- bad input
def no_model_load(monkeypatch):
    import looplm.checkpoint

    def fail(*a, **k):
        raise AssertionError("the model was loaded before the bad input was reported")
    monkeypatch.setattr(looplm.checkpoint, "load_checkpoint", fail)


def test_checkpoint_without_tokenizer(ckpt, tmp_path, monkeypatch):
    bare = tmp_path / "bare"
    shutil.copytree(ckpt, bare)
    (bare / "tokenizer.json").unlink()
    no_model_load(monkeypatch)
    with pytest.raises(Exception, match="no tokenizer.json"):
        run_eval(quick(bare))


def test_unknown_task_lists_valid_ones(ckpt, capsys):
    with pytest.raises(ValueError, match="valid tasks: dfs-verbal, clrs-dfs, arith, word-problems, gsm8k, chat"):
        run_eval(quick(ckpt, tasks=("arith", "algebra")))
    assert cli_main(["eval", "--ckpt", str(ckpt), "--tasks", "algebra"]) == 2
    assert "unknown eval task 'algebra'" in capsys.readouterr().err


def test_gsm8k_bad_line_names_file_and_line(ckpt, tmp_path, monkeypatch):
    bad = tmp_path / "gsm.jsonl"
    good = json.dumps({"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"})
    bad.write_text(good + "\n" + good + "\n{\"question\": \"x\"\n")
    no_model_load(monkeypatch)
    with pytest.raises(DataSourceError, match=f"{bad}:3"):
        run_eval(quick(ckpt, tasks=("gsm8k",), n=2, gsm8k=str(bad)))


@pytest.mark.parametrize("x", [0.0, -0.1, 1.5, float("nan")])
def test_threshold_outside_unit_interval(ckpt, x):
    with pytest.raises(ConfigError, match="halt_threshold"):
        run_eval(quick(ckpt, halt_threshold=x))


@pytest.mark.parametrize("kw, field", [
    ({"n": 0}, "EvalConfig.n="), ({"steps": 3, "steps_sweep": (2, 3)}, "steps_sweep"),
    ({"tasks": ("gsm8k",)}, "EvalConfig.gsm8k"), ({"tasks": ("chat",)}, "EvalConfig.alpaca"),
    ({"steps": 99}, "max_steps"), ({"format": "plain"}, "EvalConfig.format"), ({"batch_size": 0}, "batch_size"),
])
def test_bad_config_names_field(ckpt, kw, field, monkeypatch):
    no_model_load(monkeypatch)
    with pytest.raises(ConfigError, match=field):
        run_eval(quick(ckpt, **kw))


def test_exclude_file_overlap_is_an_error(ckpt, tmp_path):
    ex = load_items("arith", 3, 0).examples[1]
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"prompt": ex.prompt, "response": ex.answer, "domain": "math"}) + "\n")
    with pytest.raises(DataSourceError, match="not held out"):
        run_eval(quick(ckpt, tasks=("arith",), exclude=(str(sft),)))


# ---------------------------------------------------------------------------- alignment tax
def test_compare_run_dir_orders_phases_and_reuses(tmp_path, cfg256, small_tokenizer, monkeypatch):
    run = tmp_path / "run"
    make_ckpt(run / "sft", cfg256, small_tokenizer, "sft", seed=1)
    make_ckpt(run / "pretrain", cfg256, small_tokenizer, "pretrain", seed=2)
    template = quick("-", tasks=("arith", "dfs-verbal"), n=2, max_new_tokens=3)
    table = run_compare(CompareConfig(run_dir=str(run), template=template, print_table=False))
    assert table["labels"] == ["pretrain", "sft"] and list(table["rows"]) == ["dfs-verbal", "arith"]
    md = (run / "alignment-tax" / "alignment_tax.md").read_text()
    assert md.startswith("| task | pretrain | sft |") and "| arith |" in md
    assert (run / "alignment-tax" / "alignment_tax.png").stat().st_size > 1000
    import looplm.evaluate.compare as compare

    def fail(cfg):
        raise AssertionError("re-evaluated although a matching eval.json exists")
    monkeypatch.setattr(compare, "run_eval", fail)
    again = run_compare(CompareConfig(run_dir=str(run), template=template, print_table=False))
    assert again["rows"] == table["rows"]
    # explicit sources: eval JSON files with labels, in the order given
    tax = run / "alignment-tax"
    assert (tax / "sft-eval" / "eval.json").is_file() and not (run / "sft-eval").exists()
    srcs = (str(tax / "sft-eval" / "eval.json"), str(tax / "pretrain-eval"))
    t2 = run_compare(CompareConfig(sources=srcs, labels=("B", "A"), out=str(tmp_path / "o"), print_table=False))
    assert t2["labels"] == ["B", "A"] and t2["rows"]["arith"] == table["rows"]["arith"][::-1]
    assert t2["sources"] == [str((run / "sft").absolute()), str((run / "pretrain").absolute())]


def test_compare_needs_exactly_one_source_kind():
    with pytest.raises(ConfigError, match="exactly one"):
        run_compare(CompareConfig())
    with pytest.raises(ConfigError, match="labels"):
        run_compare(CompareConfig(sources=("a", "b"), labels=("x",)))
