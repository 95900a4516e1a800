"""Test-time depth (the `eval-depth` phase): sizes larger than trained per preset, the depth_sweep.json shape,
the counting over depths (with a stand-in scorer), a real decode on a micro checkpoint, the phase's place
in the pipeline, and the report's sections built from the phase's files."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from looplm.reproduce.config import BUDGETS, ReproduceConfig
from looplm.reproduce.depth_eval import check_sweep, depth_sweep, larger_sizes, sweep_depths, sweep_entry
from looplm.reproduce.phases import phases


@pytest.mark.parametrize("preset", sorted(BUDGETS))
def test_sizes_are_larger_than_trained(preset):
    b = BUDGETS[preset]
    s = larger_sizes(b)
    v = s["dfs-verbal"]["opts"]
    assert v["min_nodes"] > b.logic_nodes[1] and v["min_nodes"] >= 9 and v["max_nodes"] >= 10
    assert min(s["clrs-dfs"]["opts"]["node_counts"]) > max(b.clrs_nodes)
    assert b.depth_eval_n >= 1


def test_tiny_sizes_in_words():
    s = larger_sizes(BUDGETS["tiny"])
    assert (s["dfs-verbal"]["sizes"], s["dfs-verbal"]["trained"]) == ("9-10 nodes", "4-6 nodes")
    assert (s["clrs-dfs"]["sizes"], s["clrs-dfs"]["trained"]) == ("n = 6, 7", "n = 4, 5")
    assert sweep_depths(2, 64) == [2, 4, 8] and sweep_depths(3, 8) == [3, 6]


def test_sweep_entry_shape_and_errors():
    e = sweep_entry([2, 4, 8], "9-10 nodes", 4, [1, 2, 4])
    assert e == {"depths": [2, 4, 8], "sizes": "9-10 nodes", "n": 4, "correct": [1, 2, 4], "accuracy": [0.25, 0.5, 1.0]}
    assert check_sweep({"dfs-verbal": e}) == {"dfs-verbal": e}
    with pytest.raises(ValueError, match="one count in 0..4"):
        sweep_entry([2, 4], "x", 4, [1, 2, 3])
    with pytest.raises(ValueError, match="one count in 0..4"):
        sweep_entry([2], "x", 4, [5])
    with pytest.raises(ValueError, match="correct / n"):
        check_sweep({"t": {**e, "accuracy": [0.25, 0.5, 0.9]}})
    with pytest.raises(ValueError, match="keys must be"):
        check_sweep({"t": {k: v for k, v in e.items() if k != "n"}})


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, micro_config, small_tokenizer):
    from looplm.checkpoint import save_checkpoint
    from looplm.model import RecursiveCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("depth") / "final"
    model = RecursiveCausalLM(micro_config.replace(max_seq_len=512, max_steps=16, recurrence=2))
    save_checkpoint(path, model, small_tokenizer, meta={"stage": "test"})
    return path


def test_depth_sweep_counts_each_depth_and_skips_what_does_not_fit(ckpt, tmp_path, monkeypatch):
    import looplm.evaluate.scoring as scoring

    seen = []

    def fake(model, tok, exs, task, spec, progress=None):  # item i is right from depth 2 * (i + 1) on
        seen.append((task, spec.steps, spec.fmt, len(exs)))
        return {"records": [{"score": float(spec.steps >= 2 * (i + 1))} for i in range(len(exs))]}

    monkeypatch.setattr(scoring, "eval_generation", fake)
    sizes = {"dfs-verbal": {"opts": {"min_nodes": 9, "max_nodes": 10}, "sizes": "9-10 nodes"},
             "clrs-dfs": {"opts": {"node_counts": (20,)}, "sizes": "n = 20"}}  # ~1,000 tokens: over the context
    res = depth_sweep(ckpt, sizes, 3, 0, tmp_path / "d" / "depth_sweep.json")
    saved = json.loads((tmp_path / "d" / "depth_sweep.json").read_text())
    assert saved == res["sweep"] == {"dfs-verbal": {"depths": [2, 4, 8], "sizes": "9-10 nodes", "n": 3,
                                                    "correct": [1, 2, 3], "accuracy": [1 / 3, 2 / 3, 1.0]}}
    assert seen == [("dfs-verbal", d, "chat", 3) for d in (2, 4, 8)]
    assert list(res["skipped"]) == ["clrs-dfs"] and "max_seq_len=512" in res["skipped"]["clrs-dfs"]


def test_depth_sweep_decodes_a_real_checkpoint(ckpt, tmp_path):
    sizes = {"dfs-verbal": {"opts": {"min_nodes": 9, "max_nodes": 10}, "sizes": "9-10 nodes"},
             "clrs-dfs": {"opts": {"node_counts": (3,)}, "sizes": "n = 3"}}
    res = depth_sweep(ckpt, sizes, 2, 0, tmp_path / "depth_sweep.json")
    sweep = check_sweep(json.loads((tmp_path / "depth_sweep.json").read_text()))
    assert set(sweep) == {"dfs-verbal", "clrs-dfs"} and res["skipped"] == {}
    assert all(e["depths"] == [2, 4, 8] and e["n"] == 2 and len(e["correct"]) == 3 for e in sweep.values())


def test_eval_depth_phase_runs_after_train_spec_and_before_the_report():
    for ablation in (True, False):
        ps = phases(ReproduceConfig(preset="smoke", ablation=ablation))
        names = [p.name for p in ps]
        i = names.index("eval-depth")
        assert names.index("train-spec") < i < names.index("report") == len(names) - 1
        assert ps[i].deps == ("train-spec",) and "eval-depth" in ps[-1].deps
        ctx = SimpleNamespace(cfg=ReproduceConfig(preset="smoke"))
        assert ps[i].settings(ctx)["budget"]["depth_eval_n"] == 4


def test_report_shows_both_sections(tmp_path):
    from looplm.reproduce.report import build, to_html, to_markdown
    from looplm.reproduce.runner import Context

    cal_dir = tmp_path / "calibrate-halt"
    cal_dir.mkdir()
    png = tmp_path / "k.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    cal = {"chosen": {"tau": 0.9, "min_steps": 1},
           "exit_steps_by_kind": {"steps": 2, "min_steps": 1, "tau": 0.9, "positions": 30, "kinds": {
               "node label": {"count": 10, "mean_exit_step": 1.8, "histogram": [2, 8], "share_before_full": 0.2},
               "punctuation/format": {"count": 20, "mean_exit_step": 1.1, "histogram": [18, 2],
                                      "share_before_full": 0.9}}},
           "exit_kind_plot": str(png)}
    (cal_dir / "calibration.json").write_text(json.dumps(cal))
    sweep = {"dfs-verbal": sweep_entry([2, 4, 8], "9-10 nodes", 100, [40, 55, 61])}
    (tmp_path / "depth_sweep.json").write_text(json.dumps(sweep))
    ctx = Context(cfg=ReproduceConfig(preset="smoke"), budget=BUDGETS["smoke"], out=tmp_path, outputs={
        "calibrate-halt": {"ckpt_dir": str(cal_dir)},
        "eval-depth": {"sweep_file": str(tmp_path / "depth_sweep.json"), "skipped": {"clrs-dfs": "too long"},
                       "trained": {"dfs-verbal": "4 nodes"}}})
    blocks = build(ctx, {"phases": {}}, [p.name for p in phases(ctx.cfg)])
    md = to_markdown(blocks, tmp_path)
    assert "| node label | 10 | 1.80 | 20.0% | 2 / 8 |" in md
    assert "| punctuation/format | 20 | 1.10 | 90.0% | 18 / 2 |" in md
    assert "Latest-exiting kind: node label (1.80 steps); earliest: punctuation/format (1.10); difference " \
           "+0.70 steps (95% interval +0.41 to +0.99)." in md
    assert "![AdaExit: share of each token kind's tokens per exit step](k.png)" in md
    assert "## Test-time depth on larger graphs" in md
    assert "| dfs-verbal | 9-10 nodes (trained: 4 nodes) | 8 | 61/100 | 61.0% | 51.2% – 70.0% |" in md
    assert "dfs-verbal: 8 vs 2 steps: +21.0 points (40/100 -> 61/100)." in md
    assert "clrs-dfs skipped: too long." in md
    assert "61/100" in to_html(blocks)
