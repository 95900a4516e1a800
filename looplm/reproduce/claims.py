"""The claims table that opens the report card: each finding of the research report, the value this
run measured, and a verdict.

- `load_results(ctx)` reads what the phases wrote: the eval phase's `alignment_tax.json`, the GRPO
  metrics, `calibration.json` (with its exit steps per token kind), `train_spec.json`, `audit.json`,
  `ablation.json` (plus the item count of each ablation eval) and `eval-depth/depth_sweep.json`;
- `evaluate_claims(results)` is a pure function of those dicts: one `Claim` per row;
- `claims_blocks(ctx)` renders the rows as the report's first table (report.py's block format).

Verdicts:
- "reproduced": the measured value meets the claim's bar (the issue's figures, constants below), or a
  significant difference has the claimed sign, or an audit verdict equals the report's;
- "contradicted": the whole 95% interval misses the bar, a significant difference has the other
  sign, or an audit verdict differs from the report's;
- "not testable at this scale": the phase did not run, a precondition fails (a pre-SFT accuracy too
  low for a 20-point drop, no model solving the task at any setting, a task already solved at the
  training depth), or the interval is too wide to decide.

Every accuracy states its items and a Wilson 95% interval; a difference of two accuracies has a
normal-approximation interval (`looplm.evaluate.stats`), and so has the difference of mean exit
steps between hard and easy token kinds (from the kinds' exit-step histograms).

Simplification: a bar is met on the point estimate (as the issue states its figures); missing it
counts as a contradiction only when the interval excludes the bar (without an item count, on the
point estimate). Items are independent draws, and two models scored on the same items are treated as
independent samples. AdaExit agreement is counted per decoded token, so its interval is optimistic.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from looplm.calibrate.exit_kinds import ACTION, FORMAT, NODE
from looplm.evaluate.stats import diff_interval, wilson_interval

REPRODUCED, CONTRADICTED, UNTESTABLE = "reproduced", "contradicted", "not testable at this scale"

DFS_VERBAL_MIN = 0.90  # DFS verbal exact match after alignment (report: 100%)
CLRS_PRETRAIN_MIN = 0.50  # CLRS-DFS exact final pi of the pre-trained model
TAX_MIN_DROP = 0.20  # without replay CLRS-DFS falls by >= 20 points after alignment (report: to 0%)
REPLAY_MIN_KEPT = 0.80  # with replay it keeps >= 80% of its pre-SFT value
ADAEXIT_MIN_SAVED = 0.35  # core FLOPs saved by AdaExit (report: 37.3%) ...
ADAEXIT_MIN_AGREEMENT = 0.99  # ... at this greedy agreement with full depth
SPEC_MIN_SPEEDUP = 1.0  # speculative decoding faster than plain greedy (report: "up to 3x")
SIGNAL_FLOOR = 0.10  # a comparison needs some model at >= 10% (issue: SFT word problems >= 10%)
KV_MAX_LOSS = 0.10  # anchored core KV may lose at most 10 points of CLRS-DFS to per-step KV
HARD_KINDS, EASY_KINDS = (NODE, ACTION), (FORMAT,)  # AdaExit token kinds (calibrate/exit_kinds.py)
REPORT_AUDIT = {"update_shock": "PASS", "elastic_depth": "PASS", "gradient_starvation": "FAIL"}
FINAL = ("train-spec", "calibrate-halt", "grpo-process", "grpo-outcome")  # "after alignment", newest first
HEADERS = ["claim (research report)", "measured in this run", "verdict", "why"]


@dataclass
class Claim:
    claim: str
    measured: str
    verdict: str
    why: str


@dataclass
class Prop:
    """An accuracy p, with the items right (k) and scored (n) when known."""

    p: float
    k: int | None = None
    n: int | None = None

    def ci(self) -> tuple[float, float] | None:
        return wilson_interval(self.k, self.n) if self.n else None


def make_prop(p: float | None, n: int | None = None, k: int | None = None) -> Prop | None:
    if p is None:
        return None
    if k is None and n:
        k = round(p * n)  # every accuracy task scores an item 0 or 1
    return Prop(float(p), k, n or None)


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def num(x: Any, fmt: str = ".2f") -> str:
    return "-" if not isinstance(x, (int, float)) else format(x, fmt)


def fmt_prop(x: Prop | None) -> str:
    """`43.0% (55/128, 95% CI 34.8-51.6%)`."""
    if x is None:
        return "not measured"
    ci = x.ci()
    if ci is None:
        return f"{pct(x.p)} (items not recorded)"
    return f"{pct(x.p)} ({x.k}/{x.n}, 95% CI {100 * ci[0]:.1f}-{pct(ci[1])})"


def diff(a: Prop, b: Prop, scale: float = 1.0) -> tuple[float, float | None, float | None]:
    """a - scale * b with its normal-approximation 95% interval (None, None without item counts)."""
    if a.n and b.n:
        return diff_interval(a.k, a.n, b.k, b.n, scale=scale)
    return a.p - scale * b.p, None, None


def fmt_diff(d: tuple[float, float | None, float | None]) -> str:
    est, lo, hi = d
    ci = f" (95% CI {100 * lo:+.1f} to {100 * hi:+.1f})" if lo is not None else ""
    return f"{100 * est:+.1f} pt{ci}"


def judge_bar(est: float, hi: float | None, bar: float, bar_text: str | None = None) -> tuple[str, str]:
    """Meets `bar` on the point estimate; contradicted when the interval's top is below it."""
    b = bar_text or f"the bar {pct(bar)}"
    if est >= bar:
        return REPRODUCED, f"meets {b}"
    if hi is None:
        return CONTRADICTED, f"below {b} (no item count: judged on the point estimate)"
    if hi < bar:
        return CONTRADICTED, f"the whole 95% interval is below {b}"
    return UNTESTABLE, f"below {b}, but the 95% interval reaches it: too few items to decide"


def judge_sign(d: tuple[float, float | None, float | None]) -> tuple[str, str]:
    """Reproduced when the difference is significantly > 0, contradicted when significantly < 0."""
    est, lo, hi = d
    if lo is None:
        return UNTESTABLE, "no item counts, so no interval for the difference"
    if lo > 0:
        return REPRODUCED, "the 95% interval of the difference is above 0"
    if hi < 0:
        return CONTRADICTED, "the 95% interval of the difference is below 0"
    return UNTESTABLE, "the 95% interval of the difference includes 0: no detectable difference with these items"


# ------------------------------------------------------------------------------------ reading results
def tax_prop(tax: dict | None, task: str, label: str) -> Prop | None:
    """The accuracy of `task` in column `label` of an alignment-tax table (items and counts if recorded)."""
    if not tax or label not in tax.get("labels", []) or task not in tax.get("rows", {}):
        return None
    i = tax["labels"].index(label)

    def at(key: str) -> Any:
        vals = (tax.get(key) or {}).get(task) or []
        return vals[i] if i < len(vals) else None

    return make_prop(at("rows"), at("n"), at("correct"))


def first_prop(tax: dict | None, task: str, labels: tuple[str, ...]) -> tuple[str | None, Prop | None]:
    for label in labels:
        x = tax_prop(tax, task, label)
        if x is not None:
            return label, x
    return None, None


def grpo_steps(records: list[dict]) -> int:
    return sum(r.get("type") in ("train", "grpo") for r in records)


def grpo_pass1(records: list[dict]) -> Prop | None:
    """The last held-out pass@1 of a GRPO run, with its prompt count (`eval/n`)."""
    ev = [r for r in records if "eval/pass@1" in r]
    return make_prop(ev[-1]["eval/pass@1"], ev[-1].get("eval/n")) if ev else None


# ------------------------------------------------------------------------------------ the claims
def claim_clrs_pretrain(tax: dict | None) -> Claim:
    text = (f"Pre-training teaches the CLRS-Text matrix DFS format that SFT later erases "
            f"(bar: >= {pct(CLRS_PRETRAIN_MIN)} exact final pi)")
    x = tax_prop(tax, "clrs-dfs", "pretrain")
    if x is None:
        return Claim(text, "not run", UNTESTABLE, "no pretrain column in the eval phase's alignment-tax table")
    ci = x.ci()
    verdict, why = judge_bar(x.p, ci[1] if ci else None, CLRS_PRETRAIN_MIN)
    return Claim(text, f"pretrain: {fmt_prop(x)}", verdict, why)


def claim_dfs_verbal(tax: dict | None) -> Claim:
    text = f"DFS on verbal graphs is mastered after SFT + GRPO (report: 100%; bar: >= {pct(DFS_VERBAL_MIN)} exact)"
    label, x = first_prop(tax, "dfs-verbal", FINAL)
    if x is None:
        return Claim(text, "not run", UNTESTABLE, "no aligned model in the eval phase's alignment-tax table")
    ci = x.ci()
    verdict, why = judge_bar(x.p, ci[1] if ci else None, DFS_VERBAL_MIN)
    return Claim(text, f"{label}: {fmt_prop(x)}", verdict, why)


def _clrs_before_after(tax: dict | None, after: tuple[str, ...], text: str) -> tuple[Claim | None, Any]:
    """(a not-testable Claim, None) when the pre-SFT or the aligned accuracy is missing or too low;
    else (None, (pre, label, after))."""
    pre = tax_prop(tax, "clrs-dfs", "pretrain")
    label, post = first_prop(tax, "clrs-dfs", after)
    if pre is None or post is None:
        missing = "pretrain" if pre is None else " / ".join(after)
        return Claim(text, "not run", UNTESTABLE, f"no {missing} column in the alignment-tax table"), None
    if pre.p < TAX_MIN_DROP:
        return Claim(text, f"pre-SFT {fmt_prop(pre)}, {label} {fmt_prop(post)}", UNTESTABLE,
                     f"the pre-trained model is below {pct(TAX_MIN_DROP)} on CLRS-DFS: there is too little to "
                     f"lose for a drop or a kept share to mean anything"), None
    return None, (pre, label, post)


def claim_tax(tax: dict | None) -> Claim:
    text = (f"Alignment tax: SFT + GRPO without replay erase CLRS-DFS (report: 0% after; "
            f"bar: falls by >= {100 * TAX_MIN_DROP:.0f} points)")
    early, got = _clrs_before_after(tax, ("grpo-outcome-noreplay", "sft-noreplay"), text)
    if early:
        return early
    pre, label, post = got
    d = diff(pre, post)
    verdict, why = judge_bar(d[0], d[2], TAX_MIN_DROP, f"the bar of a {100 * TAX_MIN_DROP:.0f}-point drop")
    return Claim(text, f"pre-SFT {fmt_prop(pre)} -> {label} {fmt_prop(post)}; drop {fmt_diff(d)}", verdict, why)


def claim_replay(tax: dict | None) -> Claim:
    text = (f"Replaying CLRS-Text in SFT and GRPO prevents the tax (the fix; bar: keeps >= "
            f"{REPLAY_MIN_KEPT:.0%} of the pre-SFT accuracy)")
    early, got = _clrs_before_after(tax, FINAL + ("sft",), text)
    if early:
        return early
    pre, label, post = got
    d = diff(post, pre, scale=REPLAY_MIN_KEPT)  # after - 0.8 x before >= 0 <=> keeps >= 80%
    verdict, why = judge_bar(d[0], d[2], 0.0, f"the bar after >= {REPLAY_MIN_KEPT} x before")
    return Claim(text, f"pre-SFT {fmt_prop(pre)} -> {label} {fmt_prop(post)}: keeps {post.p / pre.p:.0%}; "
                       f"after - {REPLAY_MIN_KEPT} x before {fmt_diff(d)}", verdict, why)


def claim_process_reward(tax: dict | None, grpo: dict[str, list[dict]]) -> Claim:
    text = ("Process reward (PRM) beats the outcome reward (ORM) on word problems, same start and steps "
            "(report: ORM stuck at 0%, PRM gives a dense signal)")
    proc, outc = tax_prop(tax, "word-problems", "grpo-process"), tax_prop(tax, "word-problems", "grpo-outcome-cmp")
    source = "eval phase"
    if proc is None or outc is None or not (proc.n and outc.n):  # else the GRPO runs' own held-out pass@1
        gp, go = grpo_pass1(grpo.get("grpo-process", [])), grpo_pass1(grpo.get("grpo-outcome-cmp", []))
        if gp is not None and go is not None:
            proc, outc, source = gp, go, "GRPO held-out pass@1"
    if proc is None or outc is None:
        return Claim(text, "not run", UNTESTABLE, "grpo-process or grpo-outcome-cmp did not run")
    start = tax_prop(tax, "word-problems", "grpo-outcome")
    steps = (grpo_steps(grpo.get("grpo-process", [])), grpo_steps(grpo.get("grpo-outcome-cmp", [])))
    d = diff(proc, outc)
    measured = (f"process {fmt_prop(proc)} vs outcome {fmt_prop(outc)} ({source}, {steps[0]} vs {steps[1]} steps"
                + (f", start {fmt_prop(start)}" if start else "") + f"); difference {fmt_diff(d)}")
    if max(x.p for x in (proc, outc, start) if x is not None) < SIGNAL_FLOOR:
        return Claim(text, measured, UNTESTABLE, f"no model solves {pct(SIGNAL_FLOOR)} of the word problems: "
                                                 f"no learning signal to compare")
    verdict, why = judge_sign(d)
    return Claim(text, measured, verdict, why)


def claim_adaexit(cal: dict | None) -> Claim:
    text = (f"AdaExit saves core FLOPs at unchanged output (report: 37.3%, mean exit 10.04 of 16 steps; "
            f"bar: >= {pct(ADAEXIT_MIN_SAVED)} at >= {pct(ADAEXIT_MIN_AGREEMENT)} agreement)")
    ch = (cal or {}).get("chosen")
    if not ch or ch.get("core_flops_saved") is None or ch.get("agreement") is None:
        return Claim(text, "not run", UNTESTABLE, "calibrate-halt did not run")
    saved, agree = ch["core_flops_saved"], make_prop(ch["agreement"], ch.get("decode_positions"))
    measured = (f"{pct(saved)} core FLOPs saved at greedy agreement {fmt_prop(agree)} of decoded tokens; "
                f"mean exit {num(ch.get('mean_exit_steps'))} of {ch.get('full_depth_steps', '?')} steps")
    if saved >= ADAEXIT_MIN_SAVED and agree.p >= ADAEXIT_MIN_AGREEMENT:
        return Claim(text, measured, REPRODUCED, "both bars met")
    return Claim(text, measured, CONTRADICTED, "savings below the bar" if saved < ADAEXIT_MIN_SAVED
                 else "agreement below the bar")


def _pooled(kinds: dict, names: tuple[str, ...]) -> tuple[int, float, float]:
    """(tokens, mean exit step, variance) of the kinds `names`, pooled from their histograms (steps 1..n)."""
    hist = [sum(h) for h in zip(*[kinds[k]["histogram"] for k in names if k in kinds])] or [0]
    n = sum(hist)
    if n == 0:
        return 0, 0.0, 0.0
    mean = sum((t + 1) * c for t, c in enumerate(hist)) / n
    return n, mean, sum(c * (t + 1 - mean) ** 2 for t, c in enumerate(hist)) / n


def claim_exit_kinds(cal: dict | None) -> Claim:
    text = ("AdaExit gives hard tokens more steps than easy ones (report: grammar tokens exit at steps 3-4, "
            "reasoning tokens run all 16)")
    kinds = ((cal or {}).get("exit_steps_by_kind") or {}).get("kinds")
    if not isinstance(kinds, dict):
        return Claim(text, "not run", UNTESTABLE, "calibration.json has no exit steps per token kind")
    (nh, mh, vh), (ne, me, ve) = _pooled(kinds, HARD_KINDS), _pooled(kinds, EASY_KINDS)
    if not nh or not ne:
        return Claim(text, f"{nh} hard, {ne} easy tokens", UNTESTABLE, "no tokens of one of the two groups")
    est = mh - me
    half = 1.96 * math.sqrt(vh / nh + ve / ne)
    measured = (f"mean exit step {' + '.join(HARD_KINDS)} {mh:.2f} ({nh} tokens) vs {' + '.join(EASY_KINDS)} "
                f"{me:.2f} ({ne} tokens): {est:+.2f} steps (95% CI {est - half:+.2f} to {est + half:+.2f})")
    if est - half > 0:
        return Claim(text, measured, REPRODUCED, "hard tokens exit later; the 95% interval is above 0")
    if est + half <= 0:
        return Claim(text, measured, CONTRADICTED, "hard tokens do not exit later (the 95% interval is at or below 0)")
    return Claim(text, measured, UNTESTABLE, "the 95% interval of the difference includes 0")


def claim_speculative(spec: dict | None) -> Claim:
    text = "Speculative heads trained on a frozen body speed up decoding, up to 3x (report: head loss 4.941 -> 0.402)"
    dec = (spec or {}).get("decoding")
    if not dec or dec.get("speedup") is None:
        return Claim(text, "not run", UNTESTABLE, "train-spec did not run")
    ce = [((spec.get(s) or {}).get("heldout") or {}).get("ce") or [None] for s in ("before", "after")]
    sp = dec.get("speculative") or {}
    acc = ", ".join("-" if a is None else pct(a) for a in sp.get("head_acceptance") or [])
    ce_txt = f"; head-1 loss {num(ce[0][0], '.3f')} -> {num(ce[1][0], '.3f')}"
    measured = (f"{dec['speedup']:.2f}x tokens/s at batch 1; {num(sp.get('mean_tokens_per_verify'))} "
                f"tokens per verification pass; acceptance per head {acc or '-'}{ce_txt}; "
                f"output identical to greedy: {'yes' if dec.get('identical') else 'no'}")
    if not dec.get("identical"):
        return Claim(text, measured, CONTRADICTED, "speculative output differs from greedy (not lossless)")
    if dec["speedup"] > SPEC_MIN_SPEEDUP:
        return Claim(text, measured, REPRODUCED, "faster than plain greedy with identical output")
    return Claim(text, measured, CONTRADICTED, "no faster than plain greedy (wall clock, this machine)")


def _audit_numbers(name: str, check: dict, n: int | None) -> str:
    if name == "update_shock":
        return f"update-size std {num(check.get('std'), '.4f')} (report 0.0580), spikes at {check.get('spikes')}"
    if name == "elastic_depth":
        steps, agree = check.get("steps") or [], check.get("agreement") or []
        accs = "; ".join(f"{t} " + ", ".join(f"{s} steps {fmt_prop(make_prop(a, n))}" for s, a in zip(steps, vals))
                         for t, vals in (check.get("accuracy") or {}).items())
        top = f"agreement with R at {steps[-1]} steps {pct(agree[-1])} (report 73.5% at 24)" if steps and agree else ""
        return "; ".join(x for x in (top, accs) if x)
    ratio = check.get("param_ratio_deepest_shallowest")
    return (f"starved steps {check.get('starved_steps')}, steps cut by truncated backprop "
            f"{check.get('truncated_steps')}, deepest / shallowest parameter gradient "
            f"{'-' if ratio is None else f'{ratio:.3g}'} (report: deep-loop gradient 0.00e+00)")


def claim_audit(audit: dict | None, name: str) -> Claim:
    want = REPORT_AUDIT[name]
    text = f"Audit, {name.replace('_', ' ')}: {want} (report)"
    check = (audit or {}).get(name)
    if not isinstance(check, dict) or "verdict" not in check:
        return Claim(text, "not run", UNTESTABLE, "the audit did not run")
    n = ((audit or {}).get("config") or {}).get("elastic_n")
    measured = f"{check['verdict']}: {_audit_numbers(name, check, n)}"
    if check["verdict"] == want:
        return Claim(text, measured, REPRODUCED, f"same verdict as the report ({want})")
    why = f"the audit says {check['verdict']}, the report {want}"
    if name == "gradient_starvation" and check.get("truncated_steps"):
        why += ("; the report's zero gradient matches the steps truncated backprop cuts (structural zeros, "
                "not starvation)")
    return Claim(text, measured, CONTRADICTED, why)


DEPTH_CLAIM = ("Unrolling the core to more steps at test time solves larger graphs than trained "
               "(report: 'unroll to 24 or 32 steps')")


def _depth_row(task: str, r: dict) -> Claim:
    """One task of the depth sweep: the best deeper depth against the training depth R (first)."""
    n, depths, accs = r.get("n"), r.get("depths") or [], r.get("accuracy") or []
    ks = r.get("correct") or [None] * len(accs)
    props = [make_prop(a, n, k) for a, k in zip(accs, ks)]
    measured = f"graphs {r.get('sizes', '?')}: " + ", ".join(f"{d} steps {fmt_prop(x)}" for d, x in zip(depths, props))
    text = f"{DEPTH_CLAIM}: {task}"
    if len(props) < 2 or None in props:
        return Claim(text, measured, UNTESTABLE, "fewer than two depths with an accuracy")
    best = max(range(1, len(props)), key=lambda j: props[j].p)
    d = diff(props[best], props[0])
    measured += f"; {depths[best]} minus {depths[0]} steps {fmt_diff(d)}"
    if max(x.p for x in props) < SIGNAL_FLOOR:
        return Claim(text, measured, UNTESTABLE, f"below {pct(SIGNAL_FLOOR)} at every depth: nothing to improve on")
    if props[0].p >= 1 - SIGNAL_FLOOR:
        return Claim(text, measured, UNTESTABLE, f"already >= {pct(1 - SIGNAL_FLOOR)} at the training depth")
    return Claim(text, measured, *judge_sign(d))


def claim_depth(sweep: dict | None) -> list[Claim]:
    if not sweep:
        return [Claim(DEPTH_CLAIM, "not run", UNTESTABLE, "the eval depth sweep (eval-depth/depth_sweep.json) "
                                                          "did not run")]
    return [_depth_row(task, r) for task, r in sweep.items() if isinstance(r, dict)]


def claim_core_kv(ablation: dict | None) -> Claim:
    text = (f"Context-anchored core KV (CART-MLA) needs less KV cache than per-step KV at no accuracy cost "
            f"(bar: CLRS-DFS loses < {100 * KV_MAX_LOSS:.0f} points)")
    a, p = (ablation or {}).get("anchored"), (ablation or {}).get("per_step")
    if not isinstance(a, dict) or not isinstance(p, dict) or a.get("clrs_dfs") is None or p.get("clrs_dfs") is None:
        return Claim(text, "not run", UNTESTABLE, "the core-KV ablation did not run (--no-ablation)")
    xa, xp = make_prop(a["clrs_dfs"], a.get("n")), make_prop(p["clrs_dfs"], p.get("n"))
    kv = [((r.get("kv_bytes_per_token_32") or {}).get("core")) for r in (a, p)]
    d = diff(xa, xp)
    measured = (f"CLRS-DFS anchored {fmt_prop(xa)} vs per-step {fmt_prop(xp)}, difference {fmt_diff(d)}; "
                f"core KV bytes/token at 32 steps {kv[0]} vs {kv[1]}")
    if None not in kv and kv[0] >= kv[1]:
        return Claim(text, measured, CONTRADICTED, "anchored core KV is not smaller")
    if max(xa.p, xp.p) < SIGNAL_FLOOR:
        return Claim(text, measured, UNTESTABLE, f"both below {pct(SIGNAL_FLOOR)}: the accuracy half cannot be judged")
    if d[1] is not None and d[1] >= -KV_MAX_LOSS:
        return Claim(text, measured, REPRODUCED, f"smaller cache, and the 95% interval rules out a "
                                                 f"{100 * KV_MAX_LOSS:.0f}-point loss")
    if d[2] is not None and d[2] < 0:
        return Claim(text, measured, CONTRADICTED, "anchored is worse, the 95% interval of the difference is below 0")
    return Claim(text, measured, UNTESTABLE, f"too few items to rule out a {100 * KV_MAX_LOSS:.0f}-point loss")


def evaluate_claims(results: dict[str, Any]) -> list[Claim]:
    """Every claim from the loaded result dicts (keys of `load_results`; any may be None or absent)."""
    tax = results.get("tax")
    return [claim_clrs_pretrain(tax), claim_dfs_verbal(tax), claim_tax(tax), claim_replay(tax),
            claim_process_reward(tax, results.get("grpo") or {}), claim_adaexit(results.get("calibration")),
            claim_exit_kinds(results.get("calibration")),
            claim_speculative(results.get("spec")),
            *(claim_audit(results.get("audit"), name) for name in REPORT_AUDIT),
            *claim_depth(results.get("depth_sweep")), claim_core_kv(results.get("ablation"))]


# ------------------------------------------------------------------------------------ loading, blocks
def _read_json(path: Any) -> Any:
    return json.loads(Path(path).read_text()) if path and Path(path).is_file() else None


def _read_jsonl(path: Any) -> list[dict]:
    if not path or not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _out(ctx, phase: str, key: str) -> Any:
    return (ctx.outputs.get(phase) or {}).get(key)


def _ablation(path: Any) -> dict | None:
    """ablation.json with each mode's CLRS-DFS item count (`n`) read from its eval.json."""
    res = _read_json(path)
    for r in (res or {}).values():
        if isinstance(r, dict):
            ev = _read_json(r.get("eval_file")) or {}
            r["n"] = ((ev.get("tasks") or {}).get("clrs-dfs") or {}).get("n")
    return res


def load_results(ctx) -> dict[str, Any]:
    """The result dicts `evaluate_claims` reads, from the files the phases of `ctx` wrote."""
    eval_dir = _out(ctx, "eval", "eval_dir")
    sweep = (_out(ctx, "eval-depth", "sweep_file") or _out(ctx, "eval-depth", "depth_sweep_file")
             or ctx.path("eval-depth", "depth_sweep.json"))
    return {"tax": _read_json(Path(eval_dir) / "alignment_tax.json") if eval_dir else None,
            "grpo": {name: _read_jsonl(_out(ctx, name, "metrics_file"))
                     for name in ("grpo-process", "grpo-outcome-cmp")},
            "calibration": _read_json(Path(_out(ctx, "calibrate-halt", "ckpt_dir") or "-") / "calibration.json"),
            "spec": _read_json(Path(_out(ctx, "train-spec", "ckpt_dir") or "-") / "train_spec.json"),
            "audit": _read_json(Path(_out(ctx, "audit", "audit_dir") or "-") / "audit.json"),
            "ablation": _ablation(_out(ctx, "ablation", "ablation_file")),
            "depth_sweep": _read_json(sweep)}


def claims_blocks(ctx) -> list[tuple]:
    """The claims table and a one-paragraph key, as report.py blocks."""
    rows = evaluate_claims(load_results(ctx))
    count = {v: sum(c.verdict == v for c in rows) for v in (REPRODUCED, CONTRADICTED, UNTESTABLE)}
    key = (f"{count[REPRODUCED]} reproduced, {count[CONTRADICTED]} contradicted, {count[UNTESTABLE]} not testable "
           f"at this scale. Accuracies give items right / items scored and a Wilson 95% interval; differences a "
           f"normal-approximation 95% interval. Bars are the issue's figures (looplm/reproduce/claims.py).")
    return [("table", HEADERS, [[c.claim, c.measured, c.verdict, c.why] for c in rows]), ("p", key)]
