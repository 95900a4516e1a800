"""The three checks as functions of a model's states and gradients (definitions in `looplm.audit`).

- update shock: `find_spikes`, `update_shock(states, ...)`;
- elastic depth: `depth_runs(model, x, depths)`, `elastic_depth(finals, preds, accuracy, ...)`;
- gradient starvation: `per_step_parameters(core, n)` (per-step parameter copies),
  `step_gradients(model, x, y, steps, grad_steps)`, `gradient_starvation(full, truncated, ...)`.

Each check returns a JSON-able dict with its numbers, `thresholds` and `verdict` ("PASS" / "FAIL").
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from contextlib import contextmanager
from typing import Any, Iterator

PASS, FAIL = "PASS", "FAIL"


# ------------------------------------------------------------------------------------ update shock
def find_spikes(curve: list[float], factor: float) -> list[int]:
    """Indices i >= 1 with curve[i] > factor x median(curve[i-1], curve[i+1] if present)."""
    out = []
    for i in range(1, len(curve)):
        nb = curve[i - 1:i] + curve[i + 1:i + 2]
        if curve[i] > factor * statistics.median(nb):
            out.append(i)
    return out


def update_shock(states: list[Any], judged: int, factor: float, max_std: float) -> dict[str, Any]:
    """Check 1 from states s_0..s_D (each [N, T, d]); `judged` = J (see the module docstring)."""
    import torch

    S = torch.stack([s.float() for s in states[1:]])  # [D, N, T, d]: s_1..s_D
    u = (S[1:] - S[:-1]).norm(dim=-1) / S[:-1].norm(dim=-1).clamp_min(1e-12)  # [D-1, N, T]: u_1..u_{D-1}
    curve = u.mean(dim=(1, 2)).tolist()
    band = u.flatten(1).std(dim=1, unbiased=False).tolist()
    J = min(judged, len(states) - 1)
    m = curve[:J - 1]  # u_1..u_{J-1}
    spikes = [i + 1 for i in find_spikes(m, factor)]  # as step indices t
    uj = u[:J - 1].flatten(1)  # [J-1, N*T]
    tok_spike = torch.zeros(uj.shape[1], dtype=torch.bool)
    for i in range(1, uj.shape[0]):
        nb = uj[i - 1:i + 2:2]  # [1 or 2, N*T]: neighbours i-1 and i+1 (when present)
        tok_spike |= uj[i] > factor * nb.mean(dim=0)  # the median of <= 2 values is their mean
    mean = statistics.fmean(m) if m else float("nan")
    std = statistics.pstdev(m) if len(m) > 1 else 0.0
    std_later = statistics.pstdev(m[1:]) if len(m) > 2 else 0.0
    ok = not spikes and std_later <= max_std
    return {"steps": list(range(1, len(curve) + 1)), "u_mean": curve, "u_token_std": band, "judged_steps": J,
            "mean": mean, "std": std, "variance": std ** 2, "std_after_first": std_later, "spikes": spikes,
            "token_spike_rate": float(tok_spike.float().mean()) if uj.shape[0] > 1 else 0.0,
            "thresholds": {"spike_factor": factor, "max_std": max_std},
            "verdict": PASS if ok else FAIL}


# ----------------------------------------------------------------------------------- elastic depth
def depth_runs(model: Any, x: Any, depths: list[int]) -> tuple[dict[int, Any], dict[int, Any], list[Any]]:
    """Final states s_d and greedy predictions at each depth d, and every state of the deepest run."""
    import torch

    finals, preds, deepest = {}, {}, []
    with torch.no_grad():
        for d in depths:
            out = model(x, d, return_states=True)
            finals[d], preds[d] = out.states[-1], out.logits.argmax(dim=-1)  # [N, T, d_model], [N, T]
            if d == max(depths):
                deepest = out.states
    return finals, preds, deepest


def elastic_depth(finals: dict[int, Any], preds: dict[int, Any], accuracy: dict[str, dict[int, float]],
                  min_agreement: float, max_acc_drop: float) -> dict[str, Any]:
    """Check 2 from `depth_runs` and per-task accuracies `{task: {depth: accuracy}}`."""
    import torch.nn.functional as F

    depths = sorted(finals)
    R = depths[0]
    cos = {d: float(F.cosine_similarity(finals[d].float(), finals[R].float(), dim=-1).mean()) for d in depths}
    agree = {d: float((preds[d] == preds[R]).float().mean()) for d in depths}
    low_agree = [d for d in depths[1:] if agree[d] < min_agreement]
    drops = [(t, d) for t, acc in accuracy.items() for d in depths[1:] if acc[d] < acc[R] - max_acc_drop]
    return {"steps": depths, "cosine": [cos[d] for d in depths], "agreement": [agree[d] for d in depths],
            "accuracy": {t: [acc[d] for d in depths] for t, acc in accuracy.items()},
            "low_agreement_at": low_agree, "accuracy_drops": [{"task": t, "steps": d} for t, d in drops],
            "thresholds": {"min_agreement": min_agreement, "max_acc_drop": max_acc_drop},
            "verdict": PASS if not low_agree and not drops else FAIL}


# ----------------------------------------------------------------------------- gradient starvation
def _core_caller(core: Any) -> Any:
    """A Module wrapping `core` whose forward runs fn(core, *args): what `functional_call` needs."""
    import torch.nn as nn

    class CoreCall(nn.Module):
        def __init__(self):
            super().__init__()
            self.core = core

        def forward(self, fn, *args):
            return fn(core, *args)

    return CoreCall()


def _row_table(tables: list[Any]) -> Any:
    """One step table whose row t is row t of `tables[t]` (every field, or dict of fields, is a
    per-step sequence indexed by step)."""

    def pick(values: list[Any]) -> Any:
        if isinstance(values[0], dict):
            return {k: pick([v[k] for v in values]) for k in values[0]}
        return [v[t] for t, v in enumerate(values)]

    first = tables[-1]
    fields = {f.name: pick([getattr(tb, f.name) for tb in tables]) for f in dataclasses.fields(first)}
    return dataclasses.replace(first, **fields)


@contextmanager
def per_step_parameters(core: Any, n: int) -> Iterator[list[dict[str, Any]]]:
    """While active, everything the core computes for step t runs on its own leaf copy `copies[t]` of
    the core parameters (`torch.func.functional_call`): the step itself, its row of the step table
    (step embedding, depth gate, modulation terms) and its injection W_e e. So `copies[t][k].grad` is
    exactly step t's contribution to parameter k's gradient; the core's own `.grad` keeps only what is
    used outside the loop (the anchored latents). Relies on the core's protocol `inject(e)`,
    `step_table(steps)`, `step(s, e_in, t, table, ...)` (RecurrentCore), overridden per instance."""
    from torch.func import functional_call

    cls = type(core)
    copies = [{k: p.detach().clone().requires_grad_(True) for k, p in core.named_parameters()} for _ in range(n)]
    caller = _core_caller(core)

    def on_copy(t: int, fn: Any, *args: Any) -> Any:
        return functional_call(caller, {f"core.{k}": v for k, v in copies[t].items()}, (fn, *args))

    def step(s, e, t, *rest):  # e: the raw prelude output (inject is the identity below)
        return on_copy(t, lambda c, *a: cls.step(c, a[0], cls.inject(c, a[1]), *a[2:]), s, e, t, *rest)

    core.inject = lambda e: e  # instance attributes shadow RecurrentCore's methods, for this core only
    core.step_table = lambda steps: _row_table([on_copy(t, cls.step_table, t + 1) for t in range(steps)])
    core.step = step
    try:
        yield copies
    finally:
        for name in ("inject", "step_table", "step"):
            delattr(core, name)


def _norm(grads: list[Any]) -> float:
    return math.sqrt(sum(float(g.float().pow(2).sum()) for g in grads if g is not None))


def step_gradients(model: Any, x: Any, y: Any, steps: int, grad_steps: int | None) -> dict[str, Any]:
    """Per-step `||dL/ds_i||` and `||g_i||` (i = 1..steps) of the LM loss at `steps` steps with
    `grad_steps` steps back-propagated (None = all), and the outside-the-loop core gradient."""
    import torch
    import torch.nn.functional as F

    params = dict(model.core.named_parameters())
    model.zero_grad(set_to_none=True)
    try:
        with torch.enable_grad(), per_step_parameters(model.core, steps) as copies:
            out = model(x, steps, grad_steps=grad_steps, return_states=True)
            states = out.states[1:]  # s_1..s_n
            for s in states:
                if s.requires_grad:
                    s.retain_grad()
            loss = F.cross_entropy(out.logits.flatten(0, 1).float(), y.flatten())  # [N*T, V] vs [N*T]
            loss.backward()
        state_norms = [_norm([s.grad]) for s in states]
        step_norms = [_norm([c.grad for c in cp.values()]) for cp in copies]
        shared = _norm([p.grad for p in params.values()])
    finally:
        model.zero_grad(set_to_none=True)
    k = steps if grad_steps is None else min(grad_steps, steps)
    return {"loss": float(loss.detach()), "bptt_steps": k, "state_grad": state_norms, "param_grad": step_norms,
            "shared_param_grad": shared, "truncated": [i <= steps - k for i in range(1, steps + 1)]}


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _labels(norms: list[float], truncated: list[bool], min_ratio: float) -> list[str]:
    top = max([v for v, t in zip(norms, truncated) if not t], default=0.0)
    return ["truncated" if t else ("starved" if v < min_ratio * top else "ok") for v, t in zip(norms, truncated)]


def gradient_starvation(full: dict[str, Any], trunc: dict[str, Any], min_ratio: float) -> dict[str, Any]:
    """Check 3 from the untruncated and truncated `step_gradients`."""
    for run in (full, trunc):
        run["state_label"] = _labels(run["state_grad"], run["truncated"], min_ratio)
        run["param_label"] = _labels(run["param_grad"], run["truncated"], min_ratio)
    zeros = [v for run in (trunc,) for key in ("state_grad", "param_grad")
             for v, t in zip(run[key], run["truncated"]) if t]
    starved = sorted({i + 1 for key in ("state_label", "param_label") for i, lab in enumerate(full[key])
                      if lab == "starved"})
    sg, pg = full["state_grad"], full["param_grad"]
    return {"steps": list(range(1, len(sg) + 1)), "untruncated": full, "truncated_run": trunc,
            "state_ratio_deepest_shallowest": _ratio(sg[-1], sg[0]),
            "param_ratio_deepest_shallowest": _ratio(pg[-1], pg[0]),
            "state_ratio_min_max": _ratio(min(sg), max(sg)), "param_ratio_min_max": _ratio(min(pg), max(pg)),
            "starved_steps": starved, "truncated_steps": [i + 1 for i, t in enumerate(trunc["truncated"]) if t],
            "structural_zero_exact": all(v == 0.0 for v in zeros),
            "thresholds": {"starve_min_ratio": min_ratio}, "verdict": PASS if not starved else FAIL}
