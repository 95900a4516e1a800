"""The audit's text report and PNG plots (matplotlib Agg: files only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def format_report(r: dict[str, Any]) -> str:
    from looplm.evaluate.report import format_table

    s, e, g = r["update_shock"], r["elastic_depth"], r["gradient_starvation"]
    st, et, gt = s["thresholds"], e["thresholds"], g["thresholds"]
    deeper = list(zip(e["steps"], e["agreement"], e["cosine"]))[1:]
    acc = "; ".join(f"{t} " + "/".join(f"{100 * a:.0f}%" for a in v) for t, v in e["accuracy"].items())
    rows = [
        ["update shock", f"std {s['std']:.4f} (var {s['variance']:.4f}, mean {s['mean']:.4f}) over steps "
         f"1-{s['judged_steps'] - 1}, {s['std_after_first']:.4f} without the first; spikes at {s['spikes'] or 'none'}; "
         f"token spike rate {s['token_spike_rate']:.3f}",
         f"std without the first step <= {st['max_std']}, no step > {st['spike_factor']}x its neighbours",
         s["verdict"]],
        ["elastic depth", "agreement " + ", ".join(f"@{d} {a:.3f}" for d, a, _ in deeper) + "; cosine "
         + ", ".join(f"@{d} {c:.3f}" for d, _, c in deeper)
         + (f"; accuracy @{'/'.join(map(str, e['steps']))}: {acc}" if acc else ""),
         f"agreement >= {et['min_agreement']}, accuracy drop <= {et['max_acc_drop']}", e["verdict"]],
        ["gradient starvation", f"untruncated: min/max state {_g(g['state_ratio_min_max'])}, param "
         f"{_g(g['param_ratio_min_max'])}; deepest/shallowest state {_g(g['state_ratio_deepest_shallowest'])}, "
         f"param {_g(g['param_ratio_deepest_shallowest'])}; starved steps {g['starved_steps'] or 'none'}",
         f"each step >= {gt['starve_min_ratio']} x max", g["verdict"]],
    ]
    head = (f"looplm audit of {r['checkpoint']['path']} (R = {r['checkpoint']['recurrence']}; "
            f"{r['data']['n_seqs']} x {r['data']['seq_len']} tokens of {r['data']['source']})")
    full, tr = g["untruncated"], g["truncated_run"]
    steps_rows = [[str(i), _g(full["state_grad"][i - 1]), full["state_label"][i - 1], _g(full["param_grad"][i - 1]),
                   full["param_label"][i - 1], _g(tr["state_grad"][i - 1]), _g(tr["param_grad"][i - 1]),
                   tr["param_label"][i - 1]] for i in g["steps"]]
    trunc = g["truncated_steps"]
    note = (f"truncated run (bptt {tr['bptt_steps']}): steps {trunc[0]}-{trunc[-1]} ran under no_grad; their zero "
            f"gradient is structural (exactly 0: {g['structural_zero_exact']}), labelled truncated, not starved"
            if trunc else f"truncated run (bptt {tr['bptt_steps']}): no step truncated at this depth")
    checks = [f"[{v}] {name}: {nums}\n       threshold: {thr}" for name, nums, thr, v in rows]
    return "\n".join([head, *checks, "",
                      "per-step gradients (||dL/ds_i||, ||g_i|| = core-parameter gradient through step i):",
                      format_table(["step", "dL/ds full", "", "g full", "", "dL/ds trunc", "g trunc", "label trunc"],
                                   steps_rows, right=(0, 1, 3, 5, 6)),
                      f"shared (outside the loop) core gradient: {_g(full['shared_param_grad'])}", note])


def plot_audit(r: dict[str, Any], out: Path) -> list[Path]:
    """update_shock.png, elastic_depth.png, gradient_starvation.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    R, paths = r["checkpoint"]["recurrence"], []
    s = r["update_shock"]
    fig, ax = plt.subplots(figsize=(6, 4))
    m, sd = s["u_mean"], s["u_token_std"]
    ax.plot(s["steps"], m, marker="o", ms=3, label="mean u_t over tokens")
    ax.fill_between(s["steps"], [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], alpha=0.2,
                    label="±1 std (tokens)")
    ax.axvspan(1, s["judged_steps"] - 1, color="green", alpha=0.06, label="judged steps")
    if s["spikes"]:
        ax.scatter(s["spikes"], [m[t - 1] for t in s["spikes"]], color="red", zorder=3, label="spike")
    ax.axvline(R, color="grey", ls=":", label=f"R = {R}")
    ax.set(xlabel="step t", ylabel="||s_{t+1} - s_t|| / ||s_t||", title=f"update shock: {s['verdict']}")
    ax.legend(fontsize=8)
    paths.append(_save(fig, plt, out / "update_shock.png"))
    e = r["elastic_depth"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for task, acc in e["accuracy"].items():
        axes[0].plot(e["steps"], [100 * a for a in acc], marker="o", label=task)
    axes[0].set(xlabel="recurrence steps", ylabel="accuracy (%)", ylim=(-2, 102), title="accuracy vs steps")
    axes[1].plot(e["steps"], e["agreement"], marker="o", label="greedy agreement with R steps")
    axes[1].plot(e["steps"], e["cosine"], marker="s", label="cosine(s_final, s_R)")
    axes[1].axhline(e["thresholds"]["min_agreement"], color="red", ls="--", lw=1, label="min agreement")
    axes[1].set(xlabel="recurrence steps", ylim=(-0.05, 1.05), title=f"elastic depth: {e['verdict']}")
    for a in axes:
        a.legend(fontsize=8)
    paths.append(_save(fig, plt, out / "elastic_depth.png"))
    g = r["gradient_starvation"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for a, key, title in ((axes[0], "state_grad", "||dL/ds_i||"), (axes[1], "param_grad", "||g_i|| (core, step i)")):
        full, tr = g["untruncated"][key], g["truncated_run"][key]
        a.semilogy(g["steps"], [v or float("nan") for v in full], marker="o", label="truncation off")
        live = [(i, v) for i, v, t in zip(g["steps"], tr, g["truncated_run"]["truncated"]) if not t]
        a.semilogy([i for i, _ in live], [v or float("nan") for _, v in live], marker="x", ls="--",
                   label="truncation on")
        if g["truncated_steps"]:
            a.axvspan(g["truncated_steps"][0] - 0.5, g["truncated_steps"][-1] + 0.5, color="grey", alpha=0.15,
                      label="truncated: exactly 0 (structural)")
        a.set(xlabel="step i", title=title)
        a.legend(fontsize=8)
    fig.suptitle(f"gradient starvation: {g['verdict']}")
    paths.append(_save(fig, plt, out / "gradient_starvation.png"))
    return paths


def _save(fig: Any, plt: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
