"""Benchmark: `looplm reproduce` end to end: wall time of every phase and the report card's headline figures.

    python benchmarks/bench_reproduce.py [--preset tiny] [--out runs/bench/reproduce-tiny] [--threads N]
        [--no-save]
    python benchmarks/bench_reproduce.py --from-run runs/tiny      # record a finished run, do not re-run it
    python benchmarks/bench_reproduce.py --from-run runs/tiny-s0 runs/tiny-s1   # two seeds: each, and the spread

Runs the whole pipeline as the README's command does (`looplm reproduce --preset P --out DIR --force`,
every phase re-run so the wall time is one run's), then reads back what the phases wrote and writes the
record `benchmarks/results/bench_reproduce-PRESET.json` (`--no-save` to skip):
- wall time: the sum of the phases' seconds in `reproduce.json` (target for `tiny`: <= 30 min);
- DFS verbal exact match of the final model (`eval/alignment_tax.json`, column `train-spec`; target
  >= 95%, the report's figure);
- CLRS-DFS final `pi` before alignment (pre-trained) and after it, with and without replay, and the
  retained share (target >= 80% of before; undefined when nothing was right before);
- held-out word-problem pass@1 of GRPO with the process reward minus the outcome reward from the same
  start at equal steps (`grpo-process` vs `grpo-outcome-cmp`; target > 0: process beats outcome);
- AdaExit (`calibrate-halt/calibration.json`) and speculative heads (`final/train_spec.json`) on the
  final model, and the three audit verdicts (`audit/audit.json`).
A phase that did not run leaves its figures out (the record lists which).

With several finished runs (`--from-run A B ...`, e.g. seeds 0 and 1) the record holds every run's
figures (named "..., seed S"; the first run's are the headline ones), the spread (max - min) of each
number, and notes saying which verdicts differ between the seeds.

Simplification: with `--from-run` the wall time is each phase's last run, which after a partial re-run
is not one run's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install

from benchmarks.common import figure, write_record  # noqa: E402
from benchmarks.make_results import fmt_met, fmt_target, fmt_value  # noqa: E402

TARGET_MINUTES = {"tiny": 30.0}
# issue 14's figures for the tiny report card
TARGET_DFS, TARGET_CLRS_BEFORE, TARGET_TAX_DROP, TARGET_RETAINED = 90.0, 50.0, 20.0, 80.0
TARGET_SFT_WORD_PROBLEMS, TARGET_ADAEXIT_SAVED, TARGET_ADAEXIT_AGREEMENT = 10.0, 35.0, 99.0


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny", help="reproduce preset (tiny, smoke, report-200m)")
    ap.add_argument("--out", default=None, help="run directory (default: runs/bench/reproduce-PRESET)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--from-run", nargs="+", default=None, metavar="DIR",
                    help="finished run(s) to record, not re-run (several: one per seed, with the spread)")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/bench_reproduce-*.json")
    return ap.parse_args(argv)


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _last_pass(metrics: Path) -> float | None:
    """The last held-out `eval/pass@1` in a GRPO metrics.jsonl, or None."""
    if not metrics.is_file():
        return None
    vals = [r["eval/pass@1"] for r in map(json.loads, metrics.read_text(encoding="utf-8").splitlines())
            if "eval/pass@1" in r]
    return vals[-1] if vals else None


def pct(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 1)


def figures_from_run(out: Path, preset: str) -> tuple[list[dict], list[str]]:
    """(figures, notes) read from a finished run directory."""
    man = _json(out / "reproduce.json")
    if not man or not man.get("phases"):
        raise SystemExit(f"{out / 'reproduce.json'}: no manifest of a reproduce run")
    phases = man["phases"]
    notes = [f"phase not done: {n} ({r.get('status')})" for n, r in sorted(phases.items()) if r.get("status") != "done"]
    minutes = sum(r.get("seconds") or 0.0 for r in phases.values()) / 60
    target = TARGET_MINUTES.get(preset)
    figs = [figure(f"wall time of all {len(phases)} phases", round(minutes, 1), " min",
                   None if target is None else f"<= {target:g}", headline=True)]
    tax = _json(out / "eval" / "alignment_tax.json")
    if tax:
        acc = {task: dict(zip(tax["labels"], vals)) for task, vals in tax["rows"].items()}
        dfs, clrs = acc.get("dfs-verbal", {}), acc.get("clrs-dfs", {})
        if dfs.get("train-spec") is not None:
            figs.append(figure("DFS verbal exact match after alignment (final model)", pct(dfs["train-spec"]), "%",
                               f">= {TARGET_DFS:g}", headline=True))
        before, after = clrs.get("pretrain"), clrs.get("train-spec")
        if before is not None and after is not None:
            figs += [figure("CLRS-DFS final pi before alignment (pre-trained)", pct(before), "%",
                            f">= {TARGET_CLRS_BEFORE:g}", headline=True),
                     figure("CLRS-DFS final pi after alignment with replay (final model)", pct(after), "%"),
                     figure("CLRS-DFS after alignment with replay, share of before",
                            round(100 * after / before, 1) if before else None, "%", f">= {TARGET_RETAINED:g}",
                            headline=True)]
            if not before:
                notes.append("CLRS-DFS before alignment was 0: the retained share is undefined.")
        if clrs.get("grpo-outcome-noreplay") is not None:
            figs.append(figure("CLRS-DFS final pi after alignment without replay (grpo-outcome-noreplay)",
                               pct(clrs["grpo-outcome-noreplay"]), "%"))
            if before is not None:
                figs.append(figure("CLRS-DFS drop without replay (pre-trained minus grpo-outcome-noreplay)",
                                   round(100 * (before - clrs["grpo-outcome-noreplay"]), 1), " points",
                                   f">= {TARGET_TAX_DROP:g}", headline=True))
        wp = acc.get("word-problems", {}).get("sft")
        if wp is not None:
            figs.append(figure("word problems pass@1 of the SFT model", pct(wp), "%",
                               f">= {TARGET_SFT_WORD_PROBLEMS:g}", headline=True))
    else:
        notes.append("no eval/alignment_tax.json: the eval phase did not run")
    proc = _last_pass(out / "grpo-process" / "metrics.jsonl")
    outc = _last_pass(out / "grpo-outcome-cmp" / "metrics.jsonl")
    if proc is not None and outc is not None:
        figs.append(figure("held-out word problems pass@1, process minus outcome reward (same start, same steps)",
                           round(100 * (proc - outc), 1), " points", "> 0", headline=True))
        notes.append(f"held-out word problems pass@1: process {100 * proc:.1f}%, outcome {100 * outc:.1f}%")
    cal = _json(out / "calibrate-halt" / "calibration.json")
    if cal:
        ch, sp = cal["chosen"], cal.get("speed", {})
        figs += [figure("AdaExit core FLOPs saved on the final model", pct(ch["core_flops_saved"]), "%",
                        f">= {TARGET_ADAEXIT_SAVED:g}", headline=True),
                 figure("AdaExit agreement with full depth (per token)", pct(ch["agreement"]), "%",
                        f">= {TARGET_ADAEXIT_AGREEMENT:g}")]
        kinds = {k: v for k, v in ((cal.get("exit_steps_by_kind") or {}).get("kinds") or {}).items()
                 if isinstance(v, dict) and v.get("count") and v.get("mean_exit_step") is not None}
        if len(kinds) >= 2:
            means = {k: v["mean_exit_step"] for k, v in kinds.items()}
            hi, lo = max(means, key=means.get), min(means, key=means.get)
            figs.append(figure("AdaExit mean exit step, latest token kind minus earliest",
                               round(means[hi] - means[lo], 3), " steps", "> 0"))
            notes.append("AdaExit mean exit step by token kind: "
                         + ", ".join(f"{k} {v:.2f}" for k, v in means.items()))
        figs += [figure(f"AdaExit tokens/s speedup, batch {k.removeprefix('batch_')}", round(v["speedup"], 2), "x",
                        headline=k == "batch_1") for k, v in sp.items() if k.startswith("batch_")]
    spec = _json(out / "final" / "train_spec.json")
    if spec:
        dec = spec["decoding"]
        figs += [figure("speculative heads tokens/s speedup, batch 1", round(dec["speedup"], 2), "x"),
                 figure("speculative output == greedy output", bool(dec["identical"]), target="== true")]
    audit = _json(out / "audit" / "audit.json")
    if audit:
        names = ("update_shock", "elastic_depth", "gradient_starvation")
        figs.append(figure("audit verdicts: update shock / elastic depth / gradient starvation",
                           " / ".join(str((audit.get(n) or {}).get("verdict", "-")) for n in names)))
    return figs, notes


def run_seed(out: Path) -> int | None:
    """The seed a run was made with (its pre-training config), or None."""
    cfg = _json(out / "pretrain" / "run_config.json")
    return cfg.get("seed") if isinstance(cfg, dict) else None


def combine_seeds(runs: list[tuple[int | None, list[dict], list[str]]]) -> tuple[list[dict], list[str]]:
    """Every run's figures (suffixed ", seed S"; headline only for the first run), then per figure found in
    every run the spread max - min of its numbers, and notes on the verdicts that differ between runs."""
    figs, notes = [], []
    for k, (seed, fs, ns) in enumerate(runs):
        figs += [{**f, "name": f"{f['name']}, seed {seed}", "headline": f["headline"] and k == 0} for f in fs]
        notes += [f"seed {seed}: {n}" for n in ns]
    by_name = [{f["name"]: f for f in fs} for _, fs, _ in runs]
    seeds = ", ".join(str(seed) for seed, _, _ in runs)
    for name, first in by_name[0].items():
        same = [b.get(name) for b in by_name]
        if any(f is None for f in same):
            notes.append(f"{name}: not measured in every run")
            continue
        values = [f["value"] for f in same]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            unit = first["unit"].strip()
            figs.append(figure(f"{name}: spread over seeds {seeds} (max - min)", round(max(values) - min(values), 3),
                               " points" if unit == "%" else unit and " " + unit))  # a spread of percentages
        verdicts = [f["met"] for f in same]
        if first["target"] and len(set(verdicts)) > 1:
            notes.append(f"{name}: the verdict differs between seeds {seeds} ({' / '.join(map(str, values))}, "
                         f"target {first['target']})")
    agree = sum(1 for name, f in by_name[0].items() if f["target"]
                and all(b.get(name) is not None and b[name]["met"] == f["met"] for b in by_name))
    judged = sum(1 for f in by_name[0].values() if f["target"])
    notes.insert(0, f"seeds {seeds}: {agree} of {judged} judged figures have the same verdict in every run")
    return figs, notes


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_run and len(args.from_run) > 1:
        outs = [Path(p) for p in args.from_run]
        runs = [(run_seed(o), *figures_from_run(o, args.preset)) for o in outs]
        figs, notes = combine_seeds(runs)
        command = f"looplm reproduce (recorded from the finished runs in {', '.join(map(str, outs))})"
        return finish(args, figs, notes, command)
    if args.from_run:
        out = Path(args.from_run[0])
        command = f"looplm reproduce (recorded from the finished run in {out})"
    else:
        from looplm.cli import main as looplm_main

        out = Path(args.out or ROOT / "runs" / "bench" / f"reproduce-{args.preset}")
        cli = ["reproduce", "--preset", args.preset, "--out", str(out), "--force", "--device", args.device]
        cli += ["--threads", str(args.threads)] if args.threads else []
        command = "looplm " + " ".join(cli)
        rc = looplm_main(cli)
        if rc != 0:
            raise SystemExit(f"`{command}` failed with exit code {rc}")
    figs, notes = figures_from_run(out, args.preset)
    return finish(args, figs, notes, command)


def finish(args: argparse.Namespace, figs: list[dict], notes: list[str], command: str) -> int:
    """Print the figures and write the record (unless --no-save)."""
    for f in figs:
        print(f"{f['name']}: {fmt_value(f['value'], f['unit'])}"
              + (f" (target {fmt_target(f['target'], f['unit'])}: {fmt_met(f['met'])})" if f["target"] else ""))
    for n in notes:
        print("note:", n)
    if not args.no_save:
        write_record(f"bench_reproduce-{args.preset}", figs, script=__file__, command=command, notes=notes,
                     title=f"`looplm reproduce --preset {args.preset}`: wall time and the report card's headline "
                           f"figures")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
