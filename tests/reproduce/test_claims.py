"""The claims table of the report card: Wilson / difference intervals, every verdict branch from small
hand-made result dicts, the alignment-tax cells with items and intervals, and report.md opening with
the claims table."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from looplm.evaluate.compare import build_table
from looplm.evaluate.report import tax_markdown
from looplm.evaluate.stats import diff_interval, wilson_interval
from looplm.reproduce import claims as C

LABELS = ["pretrain", "sft", "sft-noreplay", "grpo-outcome", "grpo-outcome-noreplay", "grpo-process",
          "grpo-outcome-cmp", "train-spec"]


def tax(rows: dict[str, dict[str, float]], n: int | None = 100) -> dict:
    """An alignment_tax.json with the given {task: {label: accuracy}} (others None), n items per cell."""
    out = {"labels": LABELS, "steps": [2] * len(LABELS),
           "rows": {t: [v.get(lb) for lb in LABELS] for t, v in rows.items()}}
    if n:
        out["n"] = {t: [n if v.get(lb) is not None else None for lb in LABELS] for t, v in rows.items()}
        out["correct"] = {t: [round(v[lb] * n) if v.get(lb) is not None else None for lb in LABELS]
                          for t, v in rows.items()}
    return out


# ------------------------------------------------------------------------------------ intervals
def test_wilson_interval_known_values():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)
    for k, n in ((1, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            wilson_interval(k, n)


def test_diff_interval_by_hand():
    est, lo, hi = diff_interval(30, 100, 10, 100)  # se = sqrt(.3 * .7 / 100 + .1 * .9 / 100) = 0.05477
    assert est == pytest.approx(0.2) and (lo, hi) == pytest.approx((0.2 - 0.10735, 0.2 + 0.10735), abs=1e-4)
    est, lo, hi = diff_interval(40, 50, 50, 100, scale=0.8)  # 0.8 - 0.8 * 0.5
    assert est == pytest.approx(0.4) and hi - lo == pytest.approx(2 * 1.96 * (0.16 / 50 + 0.64 * 0.25 / 100) ** 0.5)


def test_alignment_tax_cells_carry_items_and_wilson_interval():
    res = {"depths": [2], "checkpoint": {"recurrence": 2}, "summary": {"arith": {"2": 0.5}, "chat": {"2": 3.0}},
           "runs": [{"task": "arith", "steps": 2, "metrics": {"n": 10, "score": 0.5}},
                    {"task": "chat", "steps": 2, "metrics": {"n": 4, "loss": 3.0}}]}
    zero = json.loads(json.dumps(res).replace("0.5", "0.0"))
    table = build_table([zero, res], ["pretrain", "sft"])
    assert table["rows"]["arith"] == [0.0, 0.5] and table["n"]["arith"] == [10, 10]  # old keys kept
    assert table["correct"]["arith"] == [0, 5] and table["correct"]["chat"] == [None, None]
    assert table["ci95"]["arith"][1] == pytest.approx([0.2366, 0.7634], abs=1e-4)
    md = tax_markdown(table)
    assert md.startswith("| task | pretrain | sft |")
    assert "| arith | 0.0% [0.0-27.8] n=10 | 50.0% [23.7-76.3] n=10 | +50.0 pt [" in md
    old = {k: table[k] for k in ("labels", "steps", "rows")}  # a table written before n / ci95 existed
    assert "| arith | 0.0% | 50.0% | +50.0 pt |" in tax_markdown(old)


# ------------------------------------------------------------------------------------ verdicts
def test_accuracy_claims_reproduced():
    t = tax({"clrs-dfs": {"pretrain": 0.9, "grpo-outcome-noreplay": 0.1, "train-spec": 0.85},
             "dfs-verbal": {"train-spec": 0.95}})
    got = [C.claim_clrs_pretrain(t), C.claim_dfs_verbal(t), C.claim_tax(t), C.claim_replay(t)]
    assert [c.verdict for c in got] == [C.REPRODUCED] * 4
    assert "train-spec: 95.0% (95/100, 95% CI" in got[1].measured  # items and interval stated
    assert "drop +80.0 pt (95% CI" in got[2].measured


def test_accuracy_claims_contradicted():
    t = tax({"clrs-dfs": {"pretrain": 0.3, "grpo-outcome-noreplay": 0.28, "train-spec": 0.02},
             "dfs-verbal": {"train-spec": 0.5}})
    got = [C.claim_clrs_pretrain(t), C.claim_dfs_verbal(t), C.claim_tax(t), C.claim_replay(t)]
    assert [c.verdict for c in got] == [C.CONTRADICTED] * 4
    assert "the whole 95% interval is below" in got[1].why


def test_accuracy_claims_not_testable():
    # pre-SFT CLRS-DFS at 0: the drop and the kept share are undefined
    t = tax({"clrs-dfs": {"pretrain": 0.0, "grpo-outcome-noreplay": 0.0, "train-spec": 0.0}})
    assert C.claim_tax(t).verdict == C.claim_replay(t).verdict == C.UNTESTABLE
    assert "too little to lose" in C.claim_tax(t).why
    # 8 of 10 is below 90%, but 10 items cannot rule 90% out
    small = tax({"dfs-verbal": {"train-spec": 0.8}}, n=10)
    assert C.claim_dfs_verbal(small).verdict == C.UNTESTABLE
    # the eval phase did not run
    assert C.claim_dfs_verbal(None).verdict == C.UNTESTABLE and C.claim_dfs_verbal(None).measured == "not run"


def test_a_table_without_item_counts_is_judged_on_the_point_estimate():
    t = tax({"dfs-verbal": {"train-spec": 0.5}}, n=None)
    c = C.claim_dfs_verbal(t)
    assert c.verdict == C.CONTRADICTED and "items not recorded" in c.measured


def test_process_vs_outcome_reward():
    def claim(proc, outc, start=0.3, n=100):
        return C.claim_process_reward(tax({"word-problems": {"grpo-outcome": start, "grpo-process": proc,
                                                             "grpo-outcome-cmp": outc}}, n=n), {})
    assert claim(0.6, 0.2).verdict == C.REPRODUCED
    assert "difference +40.0 pt (95% CI" in claim(0.6, 0.2).measured
    assert claim(0.2, 0.6).verdict == C.CONTRADICTED
    assert claim(0.33, 0.30).verdict == C.UNTESTABLE  # within the interval of 100 items
    assert "no learning signal" in claim(0.0, 0.0, start=0.0).why
    # no eval phase: the GRPO runs' own held-out pass@1 (and its prompt count) are used
    grpo = {"grpo-process": [{"type": "grpo", "step": 1}, {"step": 1, "eval/pass@1": 0.75, "eval/n": 32}],
            "grpo-outcome-cmp": [{"type": "grpo", "step": 1}, {"step": 1, "eval/pass@1": 0.125, "eval/n": 32}]}
    c = C.claim_process_reward(None, grpo)
    assert c.verdict == C.REPRODUCED and "24/32" in c.measured and "1 vs 1 steps" in c.measured
    assert C.claim_process_reward(None, {}).verdict == C.UNTESTABLE


def test_adaexit_and_exit_kinds():
    def cal(saved, agree):
        return {"chosen": {"core_flops_saved": saved, "agreement": agree, "decode_positions": 1000,
                           "mean_exit_steps": 5.0, "full_depth_steps": 8}}
    assert C.claim_adaexit(cal(0.40, 0.995)).verdict == C.REPRODUCED
    assert C.claim_adaexit(cal(0.10, 0.995)).verdict == C.CONTRADICTED
    assert C.claim_adaexit(cal(0.50, 0.90)).verdict == C.CONTRADICTED
    assert C.claim_adaexit(None).verdict == C.UNTESTABLE

    def kinds(hard, easy):
        return {"exit_steps_by_kind": {"kinds": {C.NODE: {"histogram": hard}, C.FORMAT: {"histogram": easy}}}}
    assert C.claim_exit_kinds(kinds([0, 10, 90], [80, 20, 0])).verdict == C.REPRODUCED
    assert C.claim_exit_kinds(kinds([0, 100, 0], [0, 100, 0])).verdict == C.CONTRADICTED  # all at one step
    assert C.claim_exit_kinds(kinds([3, 3, 4], [4, 3, 3])).verdict == C.UNTESTABLE
    assert C.claim_exit_kinds({}).verdict == C.UNTESTABLE


def test_speculative_heads():
    def spec(speedup, identical=True):
        return {"decoding": {"speedup": speedup, "identical": identical,
                             "speculative": {"mean_tokens_per_verify": 1.8, "head_acceptance": [0.6, 0.3]}},
                "before": {"heldout": {"ce": [4.9, 5.0]}}, "after": {"heldout": {"ce": [0.4, 1.0]}}}
    assert C.claim_speculative(spec(1.5)).verdict == C.REPRODUCED
    assert "head-1 loss 4.900 -> 0.400" in C.claim_speculative(spec(1.5)).measured
    assert C.claim_speculative(spec(0.8)).verdict == C.CONTRADICTED
    assert C.claim_speculative(spec(2.0, identical=False)).verdict == C.CONTRADICTED
    assert C.claim_speculative(None).verdict == C.UNTESTABLE


def test_audit_verdicts_against_the_report():
    audit = {"config": {"elastic_n": 16},
             "update_shock": {"verdict": "PASS", "std": 0.05, "spikes": []},
             "elastic_depth": {"verdict": "PASS", "steps": [2, 4], "agreement": [1.0, 0.8],
                               "accuracy": {"dfs-verbal": [0.5, 0.5]}},
             "gradient_starvation": {"verdict": "PASS", "starved_steps": [], "truncated_steps": [1, 2]}}
    got = {name: C.claim_audit(audit, name) for name in C.REPORT_AUDIT}
    assert got["update_shock"].verdict == got["elastic_depth"].verdict == C.REPRODUCED
    assert "8/16" in got["elastic_depth"].measured  # the elastic accuracies state their items
    assert got["gradient_starvation"].verdict == C.CONTRADICTED  # the report saw FAIL
    assert "structural zeros" in got["gradient_starvation"].why
    audit["gradient_starvation"]["verdict"] = "FAIL"
    assert C.claim_audit(audit, "gradient_starvation").verdict == C.REPRODUCED
    assert C.claim_audit(None, "update_shock").verdict == C.UNTESTABLE


def test_test_time_depth():
    def sweep(correct, n=100):
        return {"dfs-verbal": {"depths": [2, 4, 8], "sizes": "9-10 nodes", "n": n, "correct": correct,
                               "accuracy": [c / n for c in correct]}}
    assert C.claim_depth(sweep([10, 40, 60]))[0].verdict == C.REPRODUCED
    assert "8 minus 2 steps +50.0 pt" in C.claim_depth(sweep([10, 40, 60]))[0].measured
    assert C.claim_depth(sweep([60, 20, 10]))[0].verdict == C.CONTRADICTED
    assert C.claim_depth(sweep([0, 0, 1]))[0].verdict == C.UNTESTABLE  # nothing solved at any depth
    assert C.claim_depth(sweep([95, 95, 96]))[0].verdict == C.UNTESTABLE  # solved at R already
    assert [c.verdict for c in C.claim_depth(None)] == [C.UNTESTABLE]


def test_core_kv_ablation():
    def abl(acc_a, acc_p, kv_a=100, kv_p=800, n=400):
        return {"anchored": {"clrs_dfs": acc_a, "n": n, "kv_bytes_per_token_32": {"core": kv_a}},
                "per_step": {"clrs_dfs": acc_p, "n": n, "kv_bytes_per_token_32": {"core": kv_p}}}
    assert C.claim_core_kv(abl(0.8, 0.8)).verdict == C.REPRODUCED
    assert C.claim_core_kv(abl(0.8, 0.8, kv_a=800)).verdict == C.CONTRADICTED
    assert C.claim_core_kv(abl(0.4, 0.8)).verdict == C.CONTRADICTED
    assert C.claim_core_kv(abl(0.0, 0.05)).verdict == C.UNTESTABLE
    assert C.claim_core_kv(abl(0.7, 0.8, n=20)).verdict == C.UNTESTABLE
    assert C.claim_core_kv(None).verdict == C.UNTESTABLE


def test_nothing_run_is_all_not_testable():
    rows = C.evaluate_claims({})
    assert len(rows) == 13 and {c.verdict for c in rows} == {C.UNTESTABLE}


# ------------------------------------------------------------------------------------ report.md
def test_report_starts_with_the_claims_table(tmp_path):
    from looplm.reproduce.report import write_report
    from looplm.reproduce.runner import Context

    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "alignment_tax.json").write_text(json.dumps(tax({"dfs-verbal": {"train-spec": 0.95}})))
    cfg = SimpleNamespace(preset="smoke", text="generated", chat="generated", replay=0.1, seed=0)
    ctx = Context(cfg=cfg, budget=None, out=tmp_path, outputs={"eval": {"eval_dir": str(tmp_path / "eval")}})
    md_path, html_path = write_report(ctx, [])
    parts = md_path.read_text().split("\n\n")
    assert parts[0].startswith("# looplm reproduction report") and parts[1].startswith("Sources:")
    assert parts[2].startswith("| " + " | ".join(C.HEADERS) + " |")
    assert "| train-spec: 95.0% (95/100, 95% CI" in parts[2] and "| reproduced |" in parts[2]
    assert parts[3].startswith("1 reproduced, 0 contradicted, 12 not testable at this scale.")
    assert parts[4].startswith("## 1. Model and parameters")  # the claims table is the only one before it
    assert "claim (research report)" in html_path.read_text()
