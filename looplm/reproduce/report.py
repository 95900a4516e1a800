"""The report card of `looplm reproduce`: `report.md` and a self-contained `report.html`.

Sections mirror the research report, with measured numbers: parameters, the data manifest, the
pre-training and SFT curves, GRPO reward curves (the process reward broken into its parts), outcome
vs process reward, AdaExit, speculative heads, the audit, replay, the core-KV ablation, the
alignment-tax table and wall time per phase. Everything is read back from the files the phases wrote;
a phase that did not run is reported as such.

The report is built once as a list of blocks (heading, paragraph, table, image) and rendered to both
markdown and HTML (images inlined as base64), so the two never disagree.

Simplification: plots are plain matplotlib line charts (Agg backend) of the JSONL metrics.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from looplm.reproduce.claims import claims_blocks
from looplm.reproduce.report_extra import adaexit_kind_blocks, depth_sweep_blocks

Block = tuple  # ("h", level, text) | ("p", text) | ("table", headers, rows) | ("img", path, caption)


def _read_json(path: str | Path | None) -> Any:
    if not path or not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text())


def _read_jsonl(path: str | Path | None) -> list[dict]:
    if not path or not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "—" if v is None else str(v)


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _plot(path: Path, series: list[tuple[str, list[float], list[float]]], title: str, ylabel: str) -> Path | None:
    series = [s for s in series if s[1]]
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for label, xs, ys in series:
        ax.plot(xs, ys, label=label, linewidth=1.2)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _curve(recs: list[dict], key: str, kind: str | None = None) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in recs:
        if (kind is None or r.get("type") == kind) and isinstance(r.get(key), (int, float)):
            xs.append(r["step"])
            ys.append(r[key])
    return xs, ys


# ------------------------------------------------------------------------------------ sections
def _params(ctx) -> list[Block]:
    from looplm.model import RecursiveCausalLM

    ck = _get(ctx.outputs, "train-spec", "ckpt_dir") or _get(ctx.outputs, "pretrain", "ckpt_dir")
    if not ck or not (Path(ck) / "config.json").is_file():
        return [("p", "No checkpoint yet.")]
    import torch

    from looplm.checkpoint import load_config

    cfg = load_config(ck)
    with torch.device("meta"):
        m = RecursiveCausalLM(cfg)
    c = m.param_counts()
    kv = m.kv_cache_bytes_per_token(cfg.recurrence)
    rows = [["physical", _fmt(c["physical"])], ["per step", _fmt(c["per_step"])],
            [f"virtual (R = {c['recurrence']})", _fmt(c["virtual"])],
            ["FLOPs / token (forward, R steps, full context)", _fmt(m.flops_per_token(cfg.recurrence))],
            ["KV cache bytes / token (prelude, core, coda; fp32)", f"{kv['prelude']}, {kv['core']}, {kv['coda']}"],
            ["layout", f"{cfg.n_prelude} prelude / {cfg.n_core} core x R / {cfg.n_coda} coda, d = {cfg.d_model}, "
                       f"core KV = {cfg.core_kv}"]]
    return [("table", ["", "value"], rows)]


def _data(ctx) -> list[Block]:
    mix = _get(ctx.outputs, "data", "mix_manifest")
    if not mix:
        return [("p", "Data phase not run.")]
    rows = []
    for name, d in (mix.get("domains") or {}).items():
        src = _get(d, "source", "spec")
        rows.append([name, _fmt(d.get("train_tokens")), _fmt(_get(mix, "achieved_shares", name)),
                     _fmt(_get(mix, "mix_requested", name)), f"{src}" + (" (generated)" if d.get("generated") else ""),
                     _fmt(d.get("train_docs")), _fmt(d.get("val_tokens"))])
    blocks: list[Block] = [("table", ["domain", "train tokens", "share achieved", "share asked", "source", "documents",
                                      "validation tokens"], rows)]
    for key in ("sft_file", "sft-noreplay_file", "sft-math-heavy_file"):
        f = _get(ctx.outputs, "data", key)
        man = _read_json(Path(f).with_name(Path(f).stem + ".manifest.json")) if f else None
        if man:
            counts = man.get("counts") or man.get("domains") or {}
            blocks.append(("p", f"`{Path(f).name}`: " + ", ".join(f"{k} {_fmt(v if not isinstance(v, dict) else v.get('rows', v.get('count')))}"
                                                             for k, v in counts.items())))
    return blocks


def _training(ctx, figs: Path) -> list[Block]:
    blocks: list[Block] = []
    pre = _read_jsonl(_get(ctx.outputs, "pretrain", "metrics_file"))
    p = _plot(figs / "pretrain_loss.png", [("train loss", *_curve(pre, "loss", "train"))], "Pre-training", "loss")
    if p:
        blocks.append(("img", p, "Pre-training loss (sampled recurrence depth)"))
    evals = [r for r in pre if r.get("type") == "eval"]
    if evals:  # domains x depths, loss and bits per byte
        last = evals[-1]
        table: dict[str, dict[str, str]] = {}
        for k, v in last.items():
            if k.startswith("val/"):
                _, dom, metric = k.split("/", 2)
                table.setdefault(dom, {})[metric] = _fmt(v)
        cols = sorted({m for d in table.values() for m in d}, key=lambda m: (m.split("@")[0], int(m.split("@")[1])))
        blocks.append(("table", ["validation (end)"] + cols, [[dom] + [d.get(c, "—") for c in cols]
                                                              for dom, d in table.items()]))
    sft = _read_jsonl(_get(ctx.outputs, "sft", "metrics_file"))
    sftn = _read_jsonl(_get(ctx.outputs, "sft-noreplay", "metrics_file"))
    p = _plot(figs / "sft_loss.png", [("SFT (replay)", *_curve(sft, "loss", "train")),
                                      ("SFT (no replay)", *_curve(sftn, "loss", "train"))], "SFT", "response loss")
    if p:
        blocks.append(("img", p, "SFT loss on response tokens"))
    return blocks or [("p", "Training phases not run.")]


def _grpo(ctx, figs: Path) -> list[Block]:
    runs = {name: _read_jsonl(_get(ctx.outputs, name, "metrics_file"))
            for name in ("grpo-outcome", "grpo-outcome-noreplay", "grpo-process", "grpo-outcome-cmp")}
    if not any(runs.values()):
        return [("p", "GRPO phases not run.")]
    blocks: list[Block] = []
    p = _plot(figs / "grpo_reward.png", [(n, *_curve(r, "reward_mean")) for n, r in runs.items()],
              "GRPO reward (mean over the group batch)", "reward")
    if p:
        blocks.append(("img", p, "GRPO reward curves"))
    proc = runs["grpo-process"]
    p = _plot(figs / "grpo_process_parts.png",
              [(k, *_curve(proc, k)) for k in ("process_mean", "answer_correct_mean", "steps_correct_share",
                                               "steps_incorrect_share", "steps_trivial_share", "steps_duplicate_share",
                                               "steps_ungrounded_share", "process_credit_wrong_answers")],
              "Process reward broken into parts", "value")
    if p:
        blocks.append(("img", p, "Process reward: step credit, answer credit and hacking diagnostics"))
    rows = []
    for name, r in runs.items():
        ev = [x for x in r if "eval/pass@1" in x]
        r = [x for x in r if x.get("type") in ("train", "grpo")]  # the step records (not events, evaluations)
        if not r:
            continue
        first, last = r[: max(len(r) // 5, 1)], r[-max(len(r) // 5, 1):]
        mean = lambda xs, k: sum(x.get(k, 0.0) for x in xs) / len(xs)  # noqa: E731
        rows.append([name, _fmt(len(r)), _fmt(mean(first, "reward_mean")), _fmt(mean(last, "reward_mean")),
                     _fmt(mean(last, "answer_correct_mean")), _fmt(ev[-1].get("eval/pass@1") if ev else None),
                     _fmt(mean(last, "kl")), _fmt(mean(r, "time_step"))])
    blocks.append(("table", ["run", "steps", "reward (first 20%)", "reward (last 20%)", "answer acc (last 20%)",
                             "held-out pass@1", "KL", "s / step"], rows))
    o, pr = runs["grpo-outcome-cmp"], runs["grpo-process"]
    if o and pr:
        eo = [x["eval/pass@1"] for x in o if "eval/pass@1" in x]
        ep = [x["eval/pass@1"] for x in pr if "eval/pass@1" in x]
        if eo and ep:
            verdict = "beats" if ep[-1] > eo[-1] else ("ties" if ep[-1] == eo[-1] else "does not beat")
            n_steps = sum(x.get("type") in ("train", "grpo") for x in pr)
            blocks.append(("p", f"Outcome vs process reward from the same start (grpo-outcome weights), same prompts, "
                                f"{n_steps} steps each: held-out word-problem pass@1 {eo[-1]:.3f} (outcome) vs "
                                f"{ep[-1]:.3f} (process): the process reward **{verdict}** the outcome reward "
                                f"(difference {ep[-1] - eo[-1]:+.3f})."))
    return blocks


def _speed(ctx) -> list[Block]:
    blocks: list[Block] = []
    cal = _read_json(Path(_get(ctx.outputs, "calibrate-halt", "ckpt_dir") or "") / "calibration.json")
    if cal:
        ch = cal.get("chosen", {})
        rows = [["threshold τ / min steps", f"{_fmt(ch.get('tau'))} / {_fmt(ch.get('min_steps'))}"],
                ["mean exit (steps of R)", f"{_fmt(ch.get('mean_exit_steps'))} of {_fmt(ch.get('full_depth_steps'))}"],
                ["mean exit (block passes)", f"{_fmt(ch.get('mean_exit_block_passes'))} of "
                                             f"{_fmt(ch.get('full_depth_block_passes'))}"],
                ["core FLOPs saved", _fmt(ch.get("core_flops_saved"))],
                ["greedy agreement with full depth (per token)", _fmt(ch.get("agreement"))],
                ["wall-clock speedup, batch 1", _fmt(_get(cal, "speed", "batch_1", "speedup"))],
                ["wall-clock speedup, batch 8", _fmt(_get(cal, "speed", "batch_8", "speedup"))]]
        blocks += [("h", 3, "AdaExit"), ("table", ["", "measured"], rows)]
        if cal.get("plot") and Path(cal["plot"]).is_file():
            blocks.append(("img", Path(cal["plot"]), "Agreement with full depth vs core FLOPs saved"))
        blocks += adaexit_kind_blocks(cal)
    spec = _read_json(Path(_get(ctx.outputs, "train-spec", "ckpt_dir") or "") / "train_spec.json")
    if spec:
        dec = spec.get("decoding", {})
        rows = [["loss per head before", ", ".join(_fmt(x) for x in _get(spec, "before", "heldout", "ce") or [])],
                ["loss per head after", ", ".join(_fmt(x) for x in _get(spec, "after", "heldout", "ce") or [])],
                ["chain acceptance per head", ", ".join(_fmt(x) for x in _get(spec, "after", "heldout", "chain_acceptance") or [])]]
        rows += [[k.replace("_", " "), _fmt(v)] for k, v in dec.items() if isinstance(v, (int, float, bool))]
        ad = dec.get("adaptive") or {}
        rows += [[f"adaptive: {k.replace('_', ' ')}", _fmt(v)] for k, v in ad.items() if isinstance(v, (int, float, bool))]
        blocks += [("h", 3, "Speculative heads"), ("table", ["", "measured"], rows)]
    return blocks or [("p", "Speed phases not run.")]


def _audit(ctx) -> list[Block]:
    res = _read_json(Path(_get(ctx.outputs, "audit", "audit_dir") or "") / "audit.json")
    if not res:
        return [("p", "Audit not run.")]
    rows = []
    for name in ("update_shock", "elastic_depth", "gradient_starvation"):
        check = res.get(name)
        if isinstance(check, dict):
            nums = {k: v for k, v in check.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            lists = {k: v for k, v in check.items() if k in ("agreement", "accuracy", "cosine", "truncated_steps",
                                                          "starved_steps") and isinstance(v, (list, dict))}
            text = "; ".join(f"{k} {_fmt(v)}" for k, v in nums.items())
            text += "".join(f"; {k} {json.dumps(v) if not isinstance(v, list) else [_fmt(x) for x in v]}"
                            for k, v in lists.items())
            rows.append([name.replace("_", " "), str(check.get("verdict", "—")), text])
    blocks: list[Block] = [("table", ["check", "verdict", "numbers"], rows)] if rows else []
    for png in sorted(Path(_get(ctx.outputs, "audit", "audit_dir")).glob("*.png")):
        blocks.append(("img", png, png.stem.replace("_", " ")))
    return blocks or [("p", f"See {ctx.outputs['audit']['audit_dir']}/audit.json")]


def _tax(ctx) -> list[Block]:
    md = _get(ctx.outputs, "eval", "table_file")
    if not md or not Path(md).is_file():
        return [("p", "Evaluation not run.")]
    blocks: list[Block] = [("raw", Path(md).read_text())]
    png = Path(md).with_suffix(".png")
    if png.is_file():
        blocks.append(("img", png, "Alignment tax: accuracy per task and phase"))
    return blocks


def _ablation(ctx) -> list[Block]:
    res = _read_json(_get(ctx.outputs, "ablation", "ablation_file"))
    if not res:
        return [("p", "Ablation not run (--no-ablation).")]
    rows = []
    for mode, r in res.items():
        acc = r.get("clrs_dfs")
        if isinstance(acc, dict):  # {depth: accuracy}
            acc = next(iter(acc.values()), None)
        rows.append([mode, _fmt(acc),
                     _fmt(r.get("decode_tokens_per_s_batch1")), _fmt(_get(r, "kv_bytes_per_token_8", "core")),
                     _fmt(_get(r, "kv_bytes_per_token_32", "core"))])
    return [("table", ["core KV", "CLRS-DFS", "decode tokens/s (batch 1)", "core KV B/token (R)", "core KV B/token (32)"],
             rows)]


def _replay(ctx) -> list[Block]:
    tax = _read_json(Path(_get(ctx.outputs, "eval", "eval_dir") or "") / "alignment_tax.json")
    if not tax or "clrs-dfs" not in tax.get("rows", {}):
        return [("p", "Evaluation not run.")]
    acc = dict(zip(tax["labels"], tax["rows"]["clrs-dfs"]))
    base = acc.get("pretrain")
    rows = []
    for label, phases in (("with replay", ("sft", "grpo-outcome", "grpo-process", "train-spec")),
                          ("without replay", ("sft-noreplay", "grpo-outcome-noreplay"))):
        for ph in phases:
            if ph in acc:
                rel = f"{acc[ph] / base:.0%}" if base else "—"
                rows.append([label, ph, _fmt(base), _fmt(acc[ph]), rel])
    return [("p", f"CLRS-Text DFS final-pi accuracy before alignment (pre-trained): {_fmt(base)}. The report saw it "
                  f"drop to 0% after SFT and GRPO; `--replay {ctx.cfg.replay}` mixes that share of CLRS-Text "
                  f"records into SFT and GRPO."),
            ("table", ["", "phase", "pre-SFT", "after", "after / pre-SFT"], rows)]


def _times(manifest: dict, order: list[str]) -> list[Block]:
    recs = manifest.get("phases", {})
    rows = [[name, recs[name].get("status"), _fmt((recs[name].get("seconds") or 0) / 60)]
            for name in order if name in recs and name != "report"]  # the report is being written now
    total = sum((rec.get("seconds") or 0) for rec in manifest.get("phases", {}).values()) / 60
    return [("table", ["phase", "status", "minutes"], rows), ("p", f"Total: {total:.1f} minutes.")]


# ------------------------------------------------------------------------------------ rendering
def build(ctx, manifest: dict, order: list[str]) -> list[Block]:
    """The report's blocks; `order` is the pipeline's phase names in run order (for the wall-time table)."""
    figs = ctx.path("report_figures")
    cfg = ctx.cfg
    return [
        ("h", 1, f"looplm reproduction report: preset `{cfg.preset}`"),
        ("p", f"Sources: text = `{cfg.text}`, chat = `{cfg.chat}`, replay share = {cfg.replay}, seed = {cfg.seed}. "
              f"Every number below was measured in this run; see `reproduce.json` for inputs and logs."),
        *claims_blocks(ctx),  # the research report's claims vs this run, first
        ("h", 2, "1. Model and parameters"), *_params(ctx),
        ("h", 2, "2. Pre-training data and curves"), *_data(ctx), *_training(ctx, figs),
        ("h", 2, "3-4. GRPO with outcome and process rewards"), *_grpo(ctx, figs),
        ("h", 2, "5. Speed calibration and audit"), *_speed(ctx), ("h", 3, "Pathology audit"), *_audit(ctx),
        ("h", 2, "6. The alignment tax"), *_tax(ctx),
        ("h", 3, "Replay of pre-training-format data"), *_replay(ctx),
        ("h", 2, "Test-time depth on larger graphs"), *depth_sweep_blocks(ctx),
        ("h", 2, "Core KV ablation (anchored vs per-step)"), *_ablation(ctx),
        ("h", 2, "Wall time per phase"), *_times(manifest, order),
    ]


def to_markdown(blocks: list[Block], root: Path) -> str:
    out = []
    for b in blocks:
        if b[0] == "h":
            out.append("#" * b[1] + " " + b[2])
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "raw":
            out.append(b[1].strip())
        elif b[0] == "table":
            out.append("| " + " | ".join(b[1]) + " |\n|" + "---|" * len(b[1]))
            out[-1] += "".join("\n| " + " | ".join(str(c) for c in row) + " |" for row in b[2])
        elif b[0] == "img":
            out.append(f"![{b[2]}]({Path(b[1]).resolve().relative_to(root.resolve()) if str(Path(b[1]).resolve()).startswith(str(root.resolve())) else b[1]})")
    return "\n\n".join(out) + "\n"


def _md_table_to_html(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines()]
    rows = [ln.strip().strip("|").split("|") for ln in lines if ln.strip().startswith("|") and "---" not in ln]
    other = [ln for ln in lines if not ln.strip().startswith("|")]
    if not rows:
        return "<pre>" + html.escape(text) + "</pre>"
    head = "".join(f"<th>{html.escape(c.strip())}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in rows[1:])
    extra = "".join(f"<p>{html.escape(o)}</p>" for o in other if o.strip())
    return f"<table><tr>{head}</tr>{body}</table>{extra}"


def to_html(blocks: list[Block]) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>looplm report</title><style>"
             "body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.45}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.25em .6em}"
             "img{max-width:100%}</style></head><body>"]
    for b in blocks:
        if b[0] == "h":
            parts.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            parts.append(f"<p>{html.escape(b[1])}</p>")
        elif b[0] == "raw":
            parts.append(_md_table_to_html(b[1]))
        elif b[0] == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in b[2])
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif b[0] == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode()
            parts.append(f"<figure><img src='data:image/png;base64,{data}'><figcaption>{html.escape(b[2])}"
                         f"</figcaption></figure>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report(ctx, order: list[str]) -> tuple[Path, Path]:
    """Write `report.md` and `report.html` into the run directory. `order` lists the phase names in
    pipeline order; the caller (the report phase) passes it, so this module imports nothing from
    `phases.py` and the two stay free of an import cycle."""
    from looplm.reproduce.runner import load_manifest

    blocks = build(ctx, load_manifest(ctx.out), order)
    md, page = ctx.path("report.md"), ctx.path("report.html")
    md.write_text(to_markdown(blocks, ctx.out))
    page.write_text(to_html(blocks))
    print(f"report: {md} and {page}")
    return md, page
