"""Benchmark records and the files generated from them: the committed RESULTS.md and README table equal a
fresh generation from the committed records, generation is deterministic, the record schema and the
target checks hold (against a naive comparison), the log is dated newest first, and the benchmark
scripts write valid records."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import (bench_decode, bench_kv_cache, bench_reproduce, bench_tasks, bench_train_flops,  # noqa: E402
                        bench_train_speed)
from benchmarks import common  # noqa: E402
from benchmarks import make_results as M  # noqa: E402

NOT_RECORDING = {"bench_learning.py"}  # the lead's script: its --json results are read by the generator instead


# ---------------------------------------------------------------------------------------------- committed files
def test_committed_results_md_and_readme_table_are_up_to_date():
    for path, text in M.generate().items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.relative_to(ROOT)} differs from what the records give: run `python benchmarks/make_results.py`")


def _copy_tree(dst: Path, reverse: bool) -> Path:
    """The generator's inputs under `dst`, files created in reverse order and with shuffled mtimes."""
    res = dst / "benchmarks" / "results"
    (res / "learning").mkdir(parents=True)
    files = sorted(M.RESULTS_DIR.glob("*.json")) + sorted((M.RESULTS_DIR / "learning").glob("*.json"))
    for i, f in enumerate(reversed(files) if reverse else files):
        out = res / f.relative_to(M.RESULTS_DIR)
        shutil.copyfile(f, out)
        os.utime(out, (1_000_000 + 7919 * i % 1000, 1_000_000 + 7919 * i % 1000))
    shutil.copyfile(M.LOG_MD, dst / "benchmarks" / "LOG.md")
    shutil.copyfile(M.README, dst / "README.md")
    for script in M.RESULTS_DIR.parent.glob("bench_*.py"):
        (dst / "benchmarks" / script.name).write_text("")
    return res


def test_generation_is_deterministic_and_depends_only_on_the_inputs(tmp_path):
    first = M.generate()
    assert M.generate() == first
    for reverse in (False, True):
        dst = tmp_path / f"copy{reverse}"
        res = _copy_tree(dst, reverse)
        out = M.generate(res, dst / "benchmarks" / "LOG.md", dst / "README.md", dst)
        assert out[dst / "benchmarks" / "RESULTS.md"] == first[M.RESULTS_MD]
        assert out[dst / "README.md"] == first[M.README]
        written = M.write_outputs(res, dst / "benchmarks" / "LOG.md", dst / "README.md", dst)
        assert written == [dst / "benchmarks" / "RESULTS.md"]  # the copied README is already up to date
        assert M.write_outputs(res, dst / "benchmarks" / "LOG.md", dst / "README.md", dst) == []  # idempotent


def test_committed_records_follow_the_schema_and_name_their_origin():
    recs = M.load_records()
    assert {r["name"] for r in recs} >= {"bench_decode-tiny", "bench_adaexit", "grpo_vs_trl-compiled-rollouts"}
    hist = ROOT / "benchmarks" / "history" / "RESULTS-2026-11-25-to-2026-12-03.md"
    lines = hist.read_text(encoding="utf-8").splitlines()
    for r in recs:
        for f in r["figures"]:  # met agrees with a naive reading of the target
            m = re.fullmatch(r"(>=|<=|>|<|==) (-?[\d.]+)", f["target"] or "")
            if m and f["value"] is not None:
                naive = eval(f"{float(f['value'])!r} {m.group(1)} {float(m.group(2))!r}")  # noqa: S307 - test only
                assert f["met"] is naive, (r["name"], f)
        if r["source"].startswith("imported from history"):
            line = int(re.search(r"line (\d+)", r["source"]).group(1))
            head = lines[line - 1]
            assert head.startswith("## ") and r["time"] in head, (r["name"], head)
            assert re.fullmatch(r"[0-9a-f]{40}", r["commit"]), r["name"]
        elif r["source"] == "measured":
            assert r["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", r["commit"]), r["name"]
    readme = M.README.read_text(encoding="utf-8")
    region = readme[readme.index(M.FIGURES_BEGIN):readme.index(M.FIGURES_END)]
    n_headline = sum(f["headline"] for r in recs for f in r["figures"])
    assert region.count("\n| `") == n_headline


# ---------------------------------------------------------------------------------------------- figures, schema
@pytest.mark.parametrize("value,target,met", [
    (0.85, ">= 0.8", True), (0.79, ">= 0.8", False), (0.8, ">= 0.8", True), (0.71, "<= 0.5", False),
    (0.5, "<= 0.5", True), (5.3, "< 10", True), (10, "< 10", False), (0.0, "> 0", False), (0.1, "> 0", True),
    (384, "== 384", True), (True, "== true", True), (False, "== true", False), (False, "== false", True),
    (None, ">= 80", None), (-29.5, ">= -30", True)])
def test_target_met_matches_the_comparison(value, target, met):
    assert M.target_met(value, target) is met
    assert M.figure("x", value, "", target)["met"] is met


def test_figure_refuses_inconsistent_or_unjudgeable_figures():
    with pytest.raises(M.RecordError, match="says True but"):
        M.figure("ratio", 0.7, "x", "<= 0.5", met=True)
    with pytest.raises(M.RecordError, match="not checkable"):
        M.figure("retention", 50.0, "%", ">= 80% of pre-SFT")
    assert M.figure("retention", 50.0, "%", ">= 80% of pre-SFT", met=False)["met"] is False
    with pytest.raises(M.RecordError, match="without a target"):
        M.figure("x", 1.0, met=True)
    with pytest.raises(M.RecordError, match="true/false value"):
        M.figure("same", 1, target="== true")
    with pytest.raises(M.RecordError, match="needs a number"):
        M.figure("same", True, target=">= 1")
    with pytest.raises(M.RecordError, match="not finite"):
        M.figure("x", float("nan"))
    with pytest.raises(M.RecordError, match="value"):
        M.figure("x", [1, 2])


def _record(**kw) -> dict:
    rec = {"name": "bench_x", "title": "t", "script": "benchmarks/bench_x.py", "command": "python x", "time":
           "2026-01-02 03:04", "machine": {"cpu": "c"}, "source": "measured", "commit": None,
           "figures": [M.figure("a", 1.0, "x", ">= 0.5", headline=True)]}
    return rec | kw


@pytest.mark.parametrize("change,message", [
    ({"time": "2026-01-02"}, "'time' must be"), ({"figures": []}, "'figures' is empty"),
    ({"machine": "c"}, "'machine'"), ({"extra": 1}, "unknown fields"), ({"notes": [1]}, "'notes'"),
    ({"figures": [M.figure("a", 1.0), M.figure("a", 2.0)]}, "repeated"),
    ({"figures": [{"name": "a", "value": 0.1, "unit": "x", "target": ">= 0.5", "met": True, "headline": False}]},
     r"figures\[0\]\.met: says True")])
def test_validate_record_names_the_bad_field(change, message):
    M.validate_record(_record(), "r.json")
    with pytest.raises(M.RecordError, match=message):
        M.validate_record(_record(**change), "r.json")
    bad = _record()
    del bad["command"]
    with pytest.raises(M.RecordError, match="'command' is missing"):
        M.validate_record(bad, "r.json")


def test_load_records_checks_file_names_and_json(tmp_path):
    (tmp_path / "bench_y.json").write_text(json.dumps(_record()))
    with pytest.raises(M.RecordError, match="the file is 'bench_y'"):
        M.load_records(tmp_path)
    (tmp_path / "bench_y.json").write_text("{\n  oops")
    with pytest.raises(M.RecordError, match=r"bench_y.json:2: not valid JSON"):
        M.load_records(tmp_path)


# ---------------------------------------------------------------------------------------------- learning
def _learning(task="dfs-verbal", R=4) -> dict:
    by_depth = {str(d): {"trained": t, "larger": g} for d, t, g in ((2, 0.30, 0.01), (4, 0.395, 0.005),
                                                                     (8, 0.39, 0.155), (16, 0.39, 0.2))}
    return {"task": task, "minutes": 10.0, "command": "python benchmarks/bench_learning.py", "machine": {"cpu": "c"},
            "models": {"looplm": {"exact": 0.395, "by_depth": by_depth, "updates": 10, "params": {"recurrence": R},
                                  "val_loss_by_depth": {"2": 0.07, "4": 0.0625, "8": 0.06, "16": 0.06}},
                       "gpt": {"exact": 0.69, "exact_larger": 0.06, "updates": 12}}}


def test_learning_figures_against_hand_computed_values():
    figs = {f["name"]: f for f in M.learning_figures(_learning())}
    diff = figs["looplm minus plain GPT, exact answers on trained sizes"]
    assert diff["value"] == -29.5 and diff["met"] is False
    loss = figs["looplm held-out loss at R/2 = 2 over the loss at R"]
    assert loss["value"] == 1.12 and loss["met"] is True  # 0.07 / 0.0625
    deeper = figs["looplm larger sizes: exact at 2R = 8 minus at R"]
    assert deeper["value"] == 15.0 and deeper["met"] is True  # 15.5% - 0.5%
    assert figs["updates in the budget, looplm / plain GPT"]["value"] == "10 / 12"


def test_a_bench_learning_record_replaces_the_adapted_confirmation(tmp_path):
    (tmp_path / "learning").mkdir()
    (tmp_path / "learning" / "confirm_a.json").write_text(json.dumps(_learning()))
    (tmp_path / "learning" / "trial_b.json").write_text(json.dumps(_learning("clrs-dfs")))  # not a confirmation
    recs = M.load_records(tmp_path)
    assert [r["name"] for r in recs] == ["bench_learning-dfs-verbal"] and recs[0]["time"] is None
    own = _record(name="bench_learning-dfs-verbal", script="benchmarks/bench_learning.py")
    (tmp_path / "bench_learning-dfs-verbal.json").write_text(json.dumps(own))
    assert [r["source"] for r in M.load_records(tmp_path)] == ["measured"]


# ---------------------------------------------------------------------------------------------- log, README
def test_log_entries_must_be_dated_and_newest_first():
    entries = M.check_log(M.LOG_MD.read_text(encoding="utf-8"))
    assert len(entries) >= 5
    with pytest.raises(M.RecordError, match=r"LOG.md:5: entry of 2026-12-03 below one of 2026-12-01"):
        M.check_log("# log\n\n## 2026-12-01: a\n\n## 2026-12-03: b\n")
    with pytest.raises(M.RecordError, match=r"LOG.md:2: a log entry heading"):
        M.check_log("# log\n## Dec 3: b\n")
    with pytest.raises(M.RecordError, match="no dated entries"):
        M.check_log("# log\n")


def test_readme_region_is_replaced_and_nothing_else():
    text = f"intro\n{M.FIGURES_BEGIN}\nold\n{M.FIGURES_END}\noutro\n"
    assert M.replace_region(text, "NEW") == "intro\nNEW\noutro\n"
    with pytest.raises(M.RecordError, match="exactly one"):
        M.replace_region("no markers", "NEW")
    with pytest.raises(M.RecordError, match="exactly one"):
        M.replace_region(text + M.FIGURES_BEGIN, "NEW")
    with pytest.raises(M.RecordError, match="comes before"):
        M.replace_region(f"{M.FIGURES_END}\n{M.FIGURES_BEGIN}", "NEW")


# ---------------------------------------------------------------------------------------------- writing
def test_write_record_round_trip(tmp_path):
    path = common.write_record("bench_z-tiny", [M.figure("speed", 1.5, "x", ">= 1.25", headline=True)],
                               script=str(ROOT / "benchmarks" / "bench_z.py"), title="z", command="python z",
                               info={"cpu": "test"}, results_dir=tmp_path, regenerate=False, details="| a |")
    rec = json.loads(path.read_text())
    assert rec["script"] == "benchmarks/bench_z.py" and rec["source"] == "measured" and rec["details"] == "| a |"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", rec["time"]) and rec["figures"][0]["met"] is True
    assert rec["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", rec["commit"])
    assert M.load_records(tmp_path)[0]["name"] == "bench_z-tiny"
    with pytest.raises(ValueError, match="regenerate=False"):
        common.write_record("bench_z-tiny", rec["figures"], script="x.py", title="z", results_dir=tmp_path)
    with pytest.raises(M.RecordError, match="says False"):
        common.write_record("bench_z-tiny", [{**rec["figures"][0], "met": False}], script="x.py", title="z",
                            results_dir=tmp_path, regenerate=False)


def test_every_benchmark_script_writes_a_record():
    for script in M.bench_scripts():
        if Path(script).name in NOT_RECORDING:
            continue
        text = (ROOT / script).read_text(encoding="utf-8")
        assert "write_record(" in text and "append_section" not in text, script


@pytest.fixture
def records_here(tmp_path, monkeypatch):
    """Redirect the scripts' write_record to tmp_path (no regeneration of the repository's files)."""
    def write(name, figures, **kw):
        return common.write_record(name, figures, **kw, results_dir=tmp_path, regenerate=False)

    for mod in (bench_decode, bench_kv_cache, bench_tasks, bench_train_flops, bench_train_speed):
        monkeypatch.setattr(mod, "write_record", write)
    return tmp_path


def test_benchmark_scripts_write_valid_records(records_here, monkeypatch, capsys):
    assert bench_kv_cache.main(["--presets", "tiny", "--steps", "2,4"]) == 0
    assert bench_decode.main(["--preset", "tiny", "--steps", "2", "--new-tokens", "3", "--prompt-len", "4",
                              "--batch", "1,2"]) == 0
    assert bench_train_speed.main(["--preset", "tiny", "--steps", "2", "--seq-len", "16", "--batch", "1", "--iters",
                                   "1", "--warmup", "0", "--no-count-flops", "--matmul-n", "64"]) == 0
    assert bench_train_flops.main(["--preset", "tiny", "--batch", "1", "--seq-len", "16", "--rounds", "1",
                                   "--warmup", "0", "--bptt", "2"]) == 0
    monkeypatch.setattr(sys, "argv", ["bench_tasks.py", "--n", "20"])
    assert bench_tasks.main() == 0
    recs = {r["name"]: r for r in M.load_records(records_here)}
    assert set(recs) == {"bench_kv_cache", "bench_decode-tiny", "bench_train_speed-tiny", "bench_train_flops-tiny",
                         "bench_tasks"}
    kv = {f["name"]: f for f in recs["bench_kv_cache"]["figures"]}
    assert kv["`tiny` anchored core KV bytes/token equal at 2 and 4 steps"]["met"] is True
    assert kv["formula bytes/token = allocated cache bytes/token, every row"]["met"] is True
    assert all(f["target"] is None for f in recs["bench_tasks"]["figures"])  # the target is for 10,000 samples
    assert all(r["machine"]["cpu"] and r["command"].startswith("python") for r in recs.values())


def test_bench_reproduce_reads_the_figures_of_a_run(tmp_path):
    """A run directory laid out as the reproduce phases write it (hand-made, small numbers)."""
    def put(rel, obj):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(obj if isinstance(obj, str) else json.dumps(obj))

    put("reproduce.json", {"phases": {"pretrain": {"status": "done", "seconds": 600.0},
                                      "eval": {"status": "done", "seconds": 300.0},
                                      "audit": {"status": "failed", "seconds": 6.0}}})
    labels = ["pretrain", "sft", "grpo-outcome-noreplay", "train-spec"]
    put("eval/alignment_tax.json", {"labels": labels, "steps": [4] * 4,
                                    "rows": {"dfs-verbal": [0.0, 0.1, 0.05, 0.125],
                                             "clrs-dfs": [0.08, 0.05, 0.0, 0.06],
                                             "word-problems": [0.0, 0.15, 0.1, 0.12]}})
    put("grpo-process/metrics.jsonl", '{"step": 1, "eval/pass@1": 0.1}\n{"step": 2, "eval/pass@1": 0.25}\n')
    put("grpo-outcome-cmp/metrics.jsonl", '{"step": 2, "eval/pass@1": 0.125}\n')
    kinds = {"node label": {"count": 10, "mean_exit_step": 1.8}, "punctuation/format": {"count": 5, "mean_exit_step": 1.2}}
    put("calibrate-halt/calibration.json", {"chosen": {"core_flops_saved": 0.75, "agreement": 0.994},
                                            "speed": {"batch_1": {"speedup": 1.68}, "batch_8": {"speedup": 2.2}},
                                            "exit_steps_by_kind": {"kinds": kinds}})
    put("final/train_spec.json", {"decoding": {"speedup": 1.5, "identical": True}})
    figs, notes = bench_reproduce.figures_from_run(tmp_path, "tiny")
    f = {x["name"]: x for x in figs}
    assert f["wall time of all 3 phases"]["value"] == 15.1 and f["wall time of all 3 phases"]["met"] is True
    assert f["DFS verbal exact match after alignment (final model)"]["value"] == 12.5
    assert f["CLRS-DFS after alignment with replay, share of before"]["value"] == 75.0  # 0.06 / 0.08
    assert f["CLRS-DFS after alignment with replay, share of before"]["met"] is False
    assert f["CLRS-DFS final pi before alignment (pre-trained)"]["met"] is False  # 8% < 50%
    assert f["CLRS-DFS drop without replay (pre-trained minus grpo-outcome-noreplay)"]["value"] == 8.0
    assert f["word problems pass@1 of the SFT model"]["value"] == 15.0
    assert f["word problems pass@1 of the SFT model"]["met"] is True
    kind = f["AdaExit mean exit step, latest token kind minus earliest"]
    assert kind["value"] == 0.6 and kind["met"] is True
    assert "AdaExit mean exit step by token kind: node label 1.80, punctuation/format 1.20" in notes
    assert f["AdaExit core FLOPs saved on the final model"]["met"] is True
    assert f["held-out word problems pass@1, process minus outcome reward (same start, same steps)"]["value"] == 12.5
    assert f["AdaExit tokens/s speedup, batch 8"]["value"] == 2.2
    assert f["speculative output == greedy output"]["met"] is True
    assert "phase not done: audit (failed)" in notes and not any("audit verdicts" in n for n in f)
    M.validate_record(_record(figures=figs), "run")

    # a second seed: every run's figures, the spread of each number, the verdicts that differ
    other = [{**x, "value": x["value"] + 2.0, "met": None} if x["name"].startswith("word problems") else x
             for x in figs]
    other = [M.figure(x["name"], x["value"], x["unit"], x["target"], headline=x["headline"]) for x in other]
    both, notes2 = bench_reproduce.combine_seeds([(0, figs, notes), (1, other[1:], [])])
    g = {x["name"]: x for x in both}
    assert g["word problems pass@1 of the SFT model, seed 1"]["value"] == 17.0
    assert g["word problems pass@1 of the SFT model, seed 0"]["headline"] is True
    assert g["word problems pass@1 of the SFT model, seed 1"]["headline"] is False
    spread = g["word problems pass@1 of the SFT model: spread over seeds 0, 1 (max - min)"]
    assert spread["value"] == 2.0 and spread["unit"] == " points"
    assert "wall time of all 3 phases: not measured in every run" in notes2  # left out of seed 1 above
    judged = sum(1 for x in figs if x["target"])
    assert notes2[0] == f"seeds 0, 1: {judged - 1} of {judged} judged figures have the same verdict in every run"
    assert "seed 0: phase not done: audit (failed)" in notes2
    M.validate_record(_record(figures=both), "two seeds")


def test_adaexit_and_speculative_figures_from_their_result_dicts():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # these scripts import their helpers as top-level modules
    from benchmarks import bench_adaexit, bench_speculative

    res = {"chosen": {"core_flops_saved": 0.625, "agreement": 0.9922, "tau": 0.3, "min_steps": 3},
           "generation": {"exact_match_frac": 0.66},
           "speed": {"repeats": 3, "batch_1": {"speedup": 1.557}, "batch_8": {"speedup": 1.2}}}
    dec = [{"tau": 0.3, "exact_match_frac": 0.66}, {"tau": 0.999, "exact_match_frac": 0.9}]
    f = {x["name"]: x for x in bench_adaexit.figures(res, dec)}
    saved = f["core FLOPs saved at decode positions"]
    assert saved["value"] == 62.5 and saved["met"] is True
    assert f["greedy agreement with full depth (per token)"]["value"] == 99.2
    assert f["tokens/s speedup over full depth, batch 1"]["value"] == 1.56
    assert f["tokens/s speedup over full depth, batch 8"]["met"] is None
    assert "identical outputs at tau = 0.999" in f and "identical outputs at tau = 0.3" not in f
    d = {"speedup": 2.43, "identical": True, "speculative": {"mean_tokens_per_verify": 3.48},
         "adaptive": {"identical_adaptive_speculative_vs_adaptive": True, "speedup_adaptive_speculative": 6.09,
                      "speedup_adaptive": 2.09}}
    g = {x["name"]: x for x in bench_speculative.figures({"decoding": d})}
    assert g["speculative vs greedy tokens/s, batch 1"]["met"] is False  # 2.43 < 2.5
    assert g["speculative output == greedy output"]["met"] is True
    assert g["adaptive + speculative vs greedy tokens/s, batch 1"]["value"] == 6.09
