"""Report-card sections for AdaExit per token kind and test-time depth, in `report.py`'s block format.

- `adaexit_kind_blocks(calibration)`: from `calibration.json`'s `exit_steps_by_kind` (calibrate-halt), a
  table (kind, tokens, mean exit step, share exiting before full depth), a sentence comparing the
  hardest and easiest kinds, and the per-kind histogram plot (`exit_kind_plot`);
- `depth_sweep_blocks(ctx)`: from `eval-depth/depth_sweep.json`, a table per task of depth, correct / n,
  accuracy and its 95% Wilson interval on graphs larger than trained, plus the tasks the phase skipped.

Blocks are tuples: ("h", level, text) | ("p", text) | ("table", headers, rows) | ("img", path, caption).
This module imports nothing from `report.py`, which imports it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from looplm.evaluate.stats import wilson_interval

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def mean_difference(hist_a: list[int], hist_b: list[int], z: float = Z95) -> tuple[float, float]:
    """Difference of the mean exit steps of two kinds given their histograms over steps 1..n, and the
    half-width of its normal-approximation (Welch) interval."""
    def stats(h: list[int]) -> tuple[float, float, int]:
        n = sum(h)
        mean = sum((i + 1) * c for i, c in enumerate(h)) / n
        var = sum(c * (i + 1 - mean) ** 2 for i, c in enumerate(h)) / max(n - 1, 1)
        return mean, var, n

    (ma, va, na), (mb, vb, nb) = stats(hist_a), stats(hist_b)
    return ma - mb, z * math.sqrt(va / na + vb / nb)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def adaexit_kind_blocks(cal: dict[str, Any] | None) -> list[tuple]:
    """The per-token-kind exit table and plot of a calibration.json (empty when it has none)."""
    rep = (cal or {}).get("exit_steps_by_kind")
    if not isinstance(rep, dict) or not rep.get("kinds"):
        return []
    steps, kinds = rep["steps"], rep["kinds"]
    rows = [[kind, f"{s['count']:,}", f"{s['mean_exit_step']:.2f}", _pct(s["share_before_full"]),
             " / ".join(str(h) for h in s["histogram"])] for kind, s in kinds.items()]
    blocks: list[tuple] = [
        ("h", 4, "AdaExit exit step per token kind"),
        ("p", f"Held-out decode positions of `{(cal or {}).get('data', '?')}` ({rep['positions']:,} tokens) under "
              f"the chosen threshold "
              f"(τ = {rep['tau']:.4g}, min steps {rep['min_steps']}, full depth {steps} steps); a token's kind is "
              f"that of the token it predicts. Harder tokens should run more steps."),
        ("table", ["kind", "tokens", "mean exit step", "share exiting before full depth",
                   f"histogram (steps 1..{steps})"], rows)]
    big = {k: s for k, s in kinds.items() if s["count"] >= 10} or kinds
    if len(big) >= 2:
        hi = max(big, key=lambda k: big[k]["mean_exit_step"])
        lo = min(big, key=lambda k: big[k]["mean_exit_step"])
        d, half = mean_difference(big[hi]["histogram"], big[lo]["histogram"])
        blocks.append(("p", f"Latest-exiting kind: {hi} ({big[hi]['mean_exit_step']:.2f} steps); earliest: {lo} "
                            f"({big[lo]['mean_exit_step']:.2f}); difference {d:+.2f} steps (95% interval "
                            f"{d - half:+.2f} to {d + half:+.2f})."))
    plot = (cal or {}).get("exit_kind_plot")
    if plot and Path(plot).is_file():
        blocks.append(("img", Path(plot), "AdaExit: share of each token kind's tokens per exit step"))
    return blocks


def depth_sweep_blocks(ctx) -> list[tuple]:
    """Depth, accuracy (correct / n, 95% interval) per task on the larger graphs of `eval-depth`."""
    out = ctx.outputs.get("eval-depth") or {}
    path = out.get("sweep_file")
    if not path or not Path(path).is_file():
        return [("p", "Test-time depth phase (eval-depth) not run.")]
    sweep = json.loads(Path(path).read_text())
    trained = out.get("trained") or {}
    blocks: list[tuple] = [("p", "The final checkpoint decoded with R, 2R and 4R recurrence steps (greedy, exact "
                                 "answer) on held-out graphs larger than any it was trained on (the report's "
                                 "\"unroll to 24 or 32 steps\").")]
    rows = []
    for task, e in sweep.items():
        for d, c, acc in zip(e["depths"], e["correct"], e["accuracy"]):
            lo, hi = wilson_interval(c, e["n"], Z95)
            rows.append([task, f"{e['sizes']} (trained: {trained.get(task, '—')})", str(d), f"{c}/{e['n']}",
                         _pct(acc), f"{_pct(lo)} – {_pct(hi)}"])
    if rows:
        blocks.append(("table", ["task", "graph sizes", "depth (steps)", "correct / n", "accuracy", "95% interval"],
                       rows))
    for task, e in sweep.items():
        if len(e["accuracy"]) >= 2:
            delta = e["accuracy"][-1] - e["accuracy"][0]
            blocks.append(("p", f"{task}: {e['depths'][-1]} vs {e['depths'][0]} steps: {delta * 100:+.1f} points "
                                f"({e['correct'][0]}/{e['n']} -> {e['correct'][-1]}/{e['n']})."))
    for task, why in (out.get("skipped") or {}).items():
        blocks.append(("p", f"{task} skipped: {why}."))
    return blocks
