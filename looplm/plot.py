"""`looplm plot METRICS.jsonl --out DIR`: PNG curves of a training run's metrics (matplotlib, Agg).

Writes, from the records of `metrics.jsonl` (see `looplm.train.logger`):
- `train.png`: one panel per numeric field of the "train" records (loss, lr, grad norm, tokens/s,
  MFU, ...) against the update step; loss first, with an EMA-smoothed line and skipped non-finite
  updates marked in red;
- `depth.png`: histogram of the sampled recurrence depths (and of the back-propagated steps);
- `eval_<metric>.png` (e.g. `eval_loss.png`, `eval_bpb.png`): one panel per validation domain, one
  line per fixed depth, from keys `val/<domain>/<metric>@<depth>`;
- `eval_other.png`: any other numeric field of the "eval" records.
Files without the records a figure needs are skipped (and not listed). Prints the written paths.

Simplification: one run per call (no overlay of several runs).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

SKIP_TRAIN = {"step", "time", "type", "skipped", "tokens", "examples", "depth", "bptt"}  # depth: depth.png
VAL_KEY = re.compile(r"^val/(?P<domain>[^/]+)/(?P<metric>[^@]+)@(?P<depth>\d+)$")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("plot", help="PNG curves (loss, lr, throughput, depth, validation) of a metrics.jsonl",
                              description="Plot a training run's metrics.jsonl (written by pretrain, sft) "
                                          "into PNG files in --out.")
    p.add_argument("metrics", metavar="METRICS.jsonl", help="metrics file, or a run directory holding metrics.jsonl")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the PNG files (created)")
    p.add_argument("--smooth", type=float, default=0.9, metavar="A",
                   help="EMA factor of the smoothed loss line, in [0, 1) (default: 0.9)")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    paths = plot_metrics(args.metrics, args.out, smooth=args.smooth)
    for p in paths:
        print(p)
    return 0


def read_records(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics file")
    records = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not a JSON record ({e.msg})") from e
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{i}: expected a JSON object")
        records.append(rec)
    if not records:
        raise ValueError(f"{path}: no records to plot")
    return records


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def ema(values: list[float], a: float) -> list[float]:
    out, m = [], None
    for v in values:
        m = v if m is None else a * m + (1 - a) * v
        out.append(m)
    return out


def plot_metrics(metrics: str | Path, out: str | Path, smooth: float = 0.9) -> list[Path]:
    """Write the figures for one metrics file into `out`; returns the written paths."""
    if not 0 <= smooth < 1:
        raise ValueError(f"--smooth must be in [0, 1), got {smooth}")
    import matplotlib

    matplotlib.use("Agg")
    records = read_records(metrics)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train = [r for r in records if r.get("type") == "train" and _num(r.get("step"))]
    evals = [r for r in records if r.get("type") == "eval" and _num(r.get("step"))]
    written = []
    for fn in (_plot_train, _plot_depth):
        p = fn(train, out, smooth)
        if p:
            written.append(p)
    written += _plot_eval(evals, out)
    return written


def _grid(n: int):
    import matplotlib.pyplot as plt

    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_train(train: list[dict], out: Path, smooth: float) -> Path | None:
    keys = []
    for r in train:
        keys += [k for k, v in r.items() if k not in SKIP_TRAIN and _num(v) and k not in keys]
    if not keys:
        return None
    keys.sort(key=lambda k: (k != "loss", k))
    fig, axes = _grid(len(keys))
    for ax, key in zip(axes, keys):
        pts = [(r["step"], r[key]) for r in train if _num(r.get(key))]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(xs, ys, lw=0.8, alpha=0.5 if key == "loss" else 1.0, label=key)
        if key == "loss" and len(ys) > 2:
            ax.plot(xs, ema(ys, smooth), lw=1.6, label=f"EMA {smooth}")
            bad = [r["step"] for r in train if r.get("skipped")]
            for s in bad:
                ax.axvline(s, color="red", lw=0.6, alpha=0.6)
            ax.legend(fontsize=8)
        if key in ("lr",):
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        ax.set_title(key)
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
    return _save(fig, out / "train.png")


def _plot_depth(train: list[dict], out: Path, smooth: float) -> Path | None:
    depths = [int(r["depth"]) for r in train if _num(r.get("depth"))]
    if not depths:
        return None
    import matplotlib.pyplot as plt

    bptt = [int(r["bptt"]) for r in train if _num(r.get("bptt"))]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = [b - 0.5 for b in range(1, max(depths + bptt) + 2)]
    ax.hist(depths, bins=bins, alpha=0.7, label=f"sampled depth n (mean {sum(depths) / len(depths):.2f})")
    if bptt:
        ax.hist(bptt, bins=bins, alpha=0.5, label=f"backprop steps k (mean {sum(bptt) / len(bptt):.2f})")
    ax.set_xlabel("recurrence steps")
    ax.set_ylabel("updates")
    ax.legend(fontsize=8)
    return _save(fig, out / "depth.png")


def _plot_eval(evals: list[dict], out: Path) -> list[Path]:
    series: dict[str, dict[str, dict[int, list[tuple[float, float]]]]] = defaultdict(lambda: defaultdict(dict))
    other: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in evals:
        for k, v in r.items():
            if not _num(v) or k in ("step", "time"):
                continue
            m = VAL_KEY.match(k)
            if m:
                series[m["metric"]][m["domain"]].setdefault(int(m["depth"]), []).append((r["step"], v))
            else:
                other[k].append((r["step"], v))
    written = []
    for metric, by_domain in series.items():
        fig, axes = _grid(len(by_domain))
        for ax, (domain, by_depth) in zip(axes, sorted(by_domain.items())):
            for depth, pts in sorted(by_depth.items()):
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=f"n={depth}")
            ax.set_title(f"{domain}: validation {metric}")
            ax.set_xlabel("update")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        written.append(_save(fig, out / f"eval_{re.sub(r'[^A-Za-z0-9_]+', '_', metric)}.png"))
    if other:
        fig, axes = _grid(len(other))
        for ax, (k, pts) in zip(axes, sorted(other.items())):
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3)
            ax.set_title(k)
            ax.set_xlabel("update")
            ax.grid(alpha=0.3)
        written.append(_save(fig, out / "eval_other.png"))
    return written
