"""Text tables and PNG plots of eval results: the per-run table, accuracy vs depth, alignment tax.

Plots use matplotlib's Agg backend (files only, no display). Accuracy is plotted in percent; chat
is a response loss (lower is better) and gets its own panel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from looplm.evaluate.stats import diff_interval

DETAIL_KEYS = ("trace_exact", "valid_dfs", "pi_element_acc", "strict", "has_answer")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def _details(task: str, m: dict[str, Any]) -> str:
    too_long = [f"{m['too_long']} prompts too long"] if m.get("too_long") else []
    if task == "chat":
        cut = [f"{m['truncated']} cut at the context"] if m["truncated"] else []
        return ", ".join([f"ppl {m['ppl']:.2f}", f"{m['tokens']} tokens", *cut, *too_long])
    parts = [f"{k} {_pct(m[k])}" for k in DETAIL_KEYS if k in m] + too_long
    if m.get("budget_limited"):
        parts.append(f"{m['budget_limited']} budget-limited")
    if "tokens_per_verify_pass" in m:
        parts.append(f"{_num(m['tokens_per_verify_pass'])} tok/pass")
    return ", ".join(parts)


def format_table(header: list[str], rows: list[list[str]], right: tuple[int, ...] = ()) -> str:
    """A plain aligned text table; columns listed in `right` are right-aligned, others left-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def format_eval_table(result: dict[str, Any]) -> str:
    """One row per (task, depth): headline number, mean new tokens, mean exit step, items/s, details."""
    header = ["task", "steps", "n", "score", "new tok", "exit", "items/s", "details"]
    rows = []
    for r in result["runs"]:
        m, t = r["metrics"], r["time"]
        score = f"loss {m['loss']:.3f}" if r["task"] == "chat" else _pct(m["score"])
        rows.append([r["task"], str(r["steps"]), str(m["n"]), score, _num(m.get("new_tokens_mean"), ".1f"),
                     _num(m.get("exit_steps_mean"), ".1f"), _num(t.get("items_per_s"), ".1f"), _details(r["task"], m)])
    return f"eval of {result['checkpoint']['path']}\n" + format_table(header, rows, right=(1, 2, 3, 4, 5, 6))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sweep(result: dict[str, Any], path: Path) -> Path:
    """Accuracy (%) vs recurrence steps per task, plus chat loss vs steps when evaluated."""
    plt = _plt()
    by_task: dict[str, list[tuple[int, float]]] = {}
    for r in result["runs"]:
        value = r["metrics"]["loss"] if r["task"] == "chat" else 100 * r["metrics"]["score"]
        by_task.setdefault(r["task"], []).append((r["steps"], value))
    has_chat = "chat" in by_task
    fig, axes = plt.subplots(1, 2 if has_chat else 1, figsize=(10 if has_chat else 6, 4), squeeze=False)
    ax = axes[0][0]
    for task, pts in by_task.items():
        if task != "chat":
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=task)
    R = result["checkpoint"].get("recurrence")
    for a in axes[0]:
        if R:
            a.axvline(R, color="grey", ls=":", lw=1, label=f"training depth R={R}")
        a.set_xlabel("recurrence steps")
        a.set_xticks(sorted(result["depths"]))
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("accuracy vs depth")
    ax.legend(fontsize=8)
    if has_chat:
        pts = sorted(by_task["chat"])
        axes[0][1].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color="C3")
        axes[0][1].set_ylabel("chat response loss (nats/token)")
        axes[0][1].set_title("chat loss vs depth (lower is better)")
    fig.suptitle(Path(result["checkpoint"]["path"]).name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cell(v: float | None, n: int | None, ci: list[float] | None, chat: bool) -> str:
    """`43.0% [34.8-51.6] n=128`: accuracy, Wilson 95% interval and items (as known); chat: the loss."""
    if v is None:
        return "-"
    if chat:
        return f"{v:.3f}" + (f" n={n}" if n else "")
    return f"{100 * v:.1f}%" + (f" [{100 * ci[0]:.1f}-{100 * ci[1]:.1f}]" if ci else "") + (f" n={n}" if n else "")


def _change(table: dict[str, Any], task: str, values: list) -> str:
    """Last minus first column, with a normal-approximation 95% interval when both counts are known."""
    if len(values) < 2 or values[0] is None or values[-1] is None:
        return "-"
    d = values[-1] - values[0]
    if task == "chat":
        return f"{d:+.3f}"
    n, k = (table.get("n") or {}).get(task), (table.get("correct") or {}).get(task)
    if n and k and None not in (n[0], n[-1], k[0], k[-1]):
        _, lo, hi = diff_interval(k[-1], n[-1], k[0], n[0])
        return f"{100 * d:+.1f} pt [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return f"{100 * d:+.1f} pt"


def tax_markdown(table: dict[str, Any]) -> str:
    """The alignment-tax table as markdown: tasks as rows, phases as columns, last - first change.
    A cell shows the accuracy, its Wilson 95% interval and its items when the table records them
    (`n`, `ci95`; older tables without them show the accuracy alone)."""
    labels = table["labels"]
    lines = ["| task | " + " | ".join(labels) + " | change (last - first) |",
             "|---|" + "---:|" * (len(labels) + 1)]
    for task, values in table["rows"].items():
        chat = task == "chat"
        ns = (table.get("n") or {}).get(task) or [None] * len(values)
        cis = (table.get("ci95") or {}).get(task) or [None] * len(values)
        cells = [_cell(v, n, ci, chat) for v, n, ci in zip(values, ns, cis)]
        name = "chat (response loss, lower is better)" if chat else task
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_change(table, task, values)} |")
    steps = ", ".join(f"{label}: {s}" for label, s in zip(labels, table["steps"]))
    lines += ["", f"Accuracy in percent of held-out items, with its Wilson 95% interval in brackets and the "
                  f"number of items n; the change has a normal-approximation 95% interval; recurrence steps "
                  f"per column: {steps}."]
    return "\n".join(lines) + "\n"


def plot_tax(table: dict[str, Any], path: Path) -> Path:
    """Grouped bars: accuracy per task for each phase; chat loss per phase in a second panel."""
    plt = _plt()
    labels = table["labels"]
    acc_tasks = [t for t in table["rows"] if t != "chat"]
    has_chat = "chat" in table["rows"]
    fig, axes = plt.subplots(1, 2 if has_chat else 1, figsize=(11 if has_chat else 7, 4), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1]} if has_chat else None)
    ax = axes[0][0]
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(acc_tasks))]
        ys = [100 * (table["rows"][t][j] or 0.0) for t in acc_tasks]
        ax.bar(xs, ys, width, label=label)
    ax.set_xticks(range(len(acc_tasks)))
    ax.set_xticklabels(acc_tasks, rotation=20, fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("alignment tax: accuracy per phase")
    ax.legend(fontsize=8)
    if has_chat:
        vals = [v if v is not None else float("nan") for v in table["rows"]["chat"]]
        axes[0][1].bar(range(len(labels)), vals, color=[f"C{j}" for j in range(len(labels))])
        axes[0][1].set_xticks(range(len(labels)))
        axes[0][1].set_xticklabels(labels, rotation=20, fontsize=8)
        axes[0][1].set_title("chat response loss (lower is better)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
