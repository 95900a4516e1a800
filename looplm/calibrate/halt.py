"""AdaExit calibration (`looplm calibrate-halt`): fit the halt head on a frozen model, choose τ.

Stages of `calibrate_halt(HaltCalibConfig)`:
1. Sequences: each training prompt plus the frozen model's own full-depth greedy continuation
   (`sequences="greedy"`, the distribution adaptive decoding sees) or its reference response
   (`sequences="data"`, SFT/task data only).
2. Labels from the model's own convergence (docs/model.md): one full-depth forward keeps s_1..s_n; the coda
   is run on every s_{t+1} (all positions at the same depth), giving p_t. For each real position,
   y_t = 1 iff argmax p_t' = argmax p_full for every t' >= t and KL(p_full ‖ p_t) < kl_delta.
   Prompt positions are labelled too (for `fit_positions="all"`).
3. Fit: the halt head's `Linear(d, 1)` on the features rms(s_{t+1}) with BCE (Adam, minibatches);
   nothing else is trainable, and a bit-for-bit check refuses any other change. The rows are the steps
   before full depth (the last step's label is always 1 and its halt output is never consulted) at the
   decode positions (`fit_positions="decode"`: the positions predicting the continuation, the only ones
   the agreement criterion counts; the prompt's random graph text only adds label noise) or at every
   real position (`fit_positions="all"`). A position is a positive at step t only if its prediction has
   settled on the full-depth one for good, so a token whose prediction still moves (a hard one) is a
   negative at the early steps and the fitted head keeps it running.
4. Choose (min_steps, τ) on held-out prompts: for every pair of `min_steps_grid` × `taus` (τ = 1, never
   exiting, is always added; plus, per min_steps m < n, the `tau_quantiles` quantiles of the fitted
   head's halt probability at step m over the fit's decode positions, so that τ can hold back about
   the least settled share q of the tokens instead of a grid point that holds back none or all) run
   the model's real adaptive forward over prompt + full-depth greedy continuation, the prompt at full
   depth as generation runs it (`GenerationConfig.adaptive_prefill`), and compare its argmax at the
   decode positions (last prompt token .. last-but-one token: exactly the predictions adaptive cached
   decoding makes given the same prefix) with the full-depth argmax. The pair with the most core FLOPs
   saved at decode positions among those with agreement >= target_agreement wins (ties: higher
   agreement).
5. Check by decoding: adaptive greedy generation at the chosen pair vs full-depth greedy generation
   on the held-out prompts (exact-match fraction, matched-prefix agreement, realised exit steps), and
   tokens/s of both, interleaved in one run, at each batch size of `bench_batches`. Whole sequences
   agree less often than tokens: one flipped token changes everything after it.
6. Exit steps per token kind (`exit_kinds`): at the chosen pair, the exit step of every held-out decode
   position, grouped by the kind of the token it predicts (node label, trace action,
   punctuation/format, other): count, mean exit step, histogram over steps (`exit_steps_by_kind`).
7. Write `calibration.json`, `calibration.png` (agreement vs core FLOPs saved, one line per
   min_steps) and `exit_steps_by_kind.png` (`exit_kind_plot`) to `out` (with the new checkpoint) or
   `report_dir`. The checkpoint's meta gets
   `halt_threshold`, `halt_min_steps`, `halt_steps` (META_* below) and a `halt_calibration` summary.

Units: one step = n_core block passes. Core FLOPs saved = 1 − mean exit / n (core FLOPs are linear in
steps); total FLOPs saved uses `flops_per_token`. Simplification: the labels run the coda with every
position at the same depth, whereas adaptive decoding mixes depths across positions; the choice of τ
therefore relies on the real adaptive forward (step 4), never on the labels alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from looplm.calibrate.common import (Sample, batched_generate, check_fits, check_only_changed, clean_meta, freeze,
                                     greedy_continuations, load_samples, prefix_agreement, right_pad, snapshot,
                                     split_heldout, time_interleaved, write_json)
from looplm.calibrate.configs import (META_MIN_STEPS, META_STEPS, META_THRESHOLD, HaltCalibConfig, check_field,
                                      to_json)
from looplm.calibrate.exit_kinds import decode_exits, exit_kinds_report, save_kind_plot

HALT_PREFIX = ("core.halt.",)


# ---------------------------------------------------------------------------------------------- labels
def coda_logits(model, s: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Run the coda, final norm and LM head on core states s [B, T, d] (causal, no cache) -> [B, T, V]."""
    rope = model.rope(position_ids, s.dtype)
    x = s
    for blk in model.coda:
        x = blk(x, rope, None)
    return model.lm_head(model.norm(x))


@torch.no_grad()
def depth_predictions(model, ids: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per step t = 0..n-1 of a full-depth pass over ids [B, T]: argmax of p_t [n, B, T],
    KL(p_full ‖ p_t) [n, B, T] and the halt features rms(s_{t+1}) [n, B, T, d]."""
    from looplm.model.layers import rms

    out = model(ids, steps, return_states=True)
    pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    logps = [F.log_softmax(coda_logits(model, s, pos).float(), dim=-1) for s in out.states[1:]]
    full = logps[-1]
    preds = torch.stack([lp.argmax(-1) for lp in logps])
    kl = torch.stack([(full.exp() * (full - lp)).sum(-1) for lp in logps])
    feats = torch.stack([rms(s) for s in out.states[1:]])
    return preds, kl, feats


def convergence_labels(preds: torch.Tensor, kl: torch.Tensor, kl_delta: float) -> torch.Tensor:
    """y_t = 1 iff argmax p_t' equals the full-depth argmax for every t' >= t and KL_t < kl_delta.
    preds, kl: [n, ...] with the full depth last -> bool [n, ...]."""
    agree = (preds == preds[-1]).int()
    stays = agree.flip(0).cummin(dim=0).values.flip(0).bool()  # all later steps agree too
    return stays & (kl < kl_delta)


def build_labels(model, seqs: list[list[int]], steps: int, kl_delta: float, pad_id: int, batch_size: int,
                 progress: bool, prompt_lens: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Features [n, N, d] and labels [n, N] over every real position of `seqs`, plus per-step stats;
    with `prompt_lens`, also `decode` [N]: the positions predicting a continuation token (last prompt
    token .. last-but-one token)."""
    device = model.embed.weight.device
    feats, labels, agree, decode = [], [], [], []
    for i in tqdm(range(0, len(seqs), batch_size), desc="labels", disable=not progress, leave=False):
        chunk = seqs[i:i + batch_size]
        ids = right_pad(chunk, pad_id, device)
        preds, kl, f = depth_predictions(model, ids, steps)
        ar = torch.arange(ids.shape[1], device=device)[None]
        lens = torch.tensor([len(s) for s in chunk], device=device)[:, None]
        real = ar < lens  # [B, T]
        y = convergence_labels(preds, kl, kl_delta)
        feats.append(f[:, real].cpu())  # [n, N_chunk, d]
        labels.append(y[:, real].cpu())
        agree.append((preds == preds[-1])[:, real].cpu())
        if prompt_lens is not None:
            plen = torch.tensor(prompt_lens[i:i + batch_size], device=device)[:, None]
            decode.append(((ar >= plen - 1) & (ar <= lens - 2))[real].cpu())
    out = {"feats": torch.cat(feats, 1), "labels": torch.cat(labels, 1), "agree": torch.cat(agree, 1)}
    if prompt_lens is not None:
        out["decode"] = torch.cat(decode)
    return out


def fit_rows(lab: dict[str, torch.Tensor], positions: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (features [M, d], labels [M]) the halt head is fitted on: steps 1..n-1 (all n if n = 1; the
    last step's label is always 1 and the head is never consulted there) at the decode positions
    (`positions="decode"`, needs `lab["decode"]`) or at every real position (`"all"`)."""
    n, N, d = lab["feats"].shape
    k = max(n - 1, 1)
    cols = lab["decode"] if positions == "decode" else torch.ones(N, dtype=torch.bool)
    if not bool(cols.any()):
        raise ValueError("no decode positions to fit the halt head on (every continuation is empty)")
    return lab["feats"][:k, cols].reshape(-1, d), lab["labels"][:k, cols].reshape(-1)


# ---------------------------------------------------------------------------------------------- fit
def fit_halt_head(model, feats: torch.Tensor, labels: torch.Tensor, epochs: int, lr: float, batch: int,
                  seed: int, progress: bool) -> dict[str, float]:
    """BCE-fit a copy of the halt head on feats [M, d] / labels [M], then copy it into the model."""
    halt = model.core.halt
    head = nn.Linear(halt.in_features, 1).to(dtype=halt.weight.dtype)
    head.load_state_dict(halt.state_dict())
    x, y = feats.to(halt.weight.dtype), labels.to(halt.weight.dtype)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)

    def bce() -> float:
        with torch.no_grad():
            return float(F.binary_cross_entropy_with_logits(head(x).squeeze(-1), y))

    before = bce()
    for _ in tqdm(range(epochs), desc="fit halt head", disable=not progress, leave=False):
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            loss = F.binary_cross_entropy_with_logits(head(x[idx]).squeeze(-1), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    after = bce()
    with torch.no_grad():
        acc = float(((head(x).squeeze(-1) > 0) == labels).float().mean())
        halt.weight.copy_(head.weight.to(halt.weight.device))
        halt.bias.copy_(head.bias.to(halt.bias.device))
    return {"bce_before": before, "bce_after": after, "label_accuracy": acc}


# ---------------------------------------------------------------------------------------------- sweep
@torch.no_grad()
def adaptive_sweep(model, prompt_lens: list[int], seqs: list[list[int]], steps: int,
                   grid: list[tuple[int, float]], pad_id: int, batch_size: int, progress: bool) -> list[dict]:
    """For each (min_steps, τ): agreement of the adaptive forward's argmax with full depth at decode
    positions, and mean exit steps at decode positions and over all real positions."""
    device = model.embed.weight.device
    batches = []
    for i in range(0, len(seqs), batch_size):
        ids = right_pad(seqs[i:i + batch_size], pad_id, device)
        ar = torch.arange(ids.shape[1], device=device)[None]
        lens = torch.tensor([len(s) for s in seqs[i:i + batch_size]], device=device)[:, None]
        plen = torch.tensor(prompt_lens[i:i + batch_size], device=device)[:, None]
        decode = (ar >= plen - 1) & (ar <= lens - 2)  # positions predicting the continuation tokens
        may_exit = (ar >= plen).expand_as(ids)  # as generation: the prompt at full depth, continuation tokens exit
        batches.append((ids, decode, may_exit, ar < lens, model(ids, steps).logits.argmax(-1)))
    rows = []
    for m, tau in tqdm(grid, desc="tau sweep", disable=not progress, leave=False):
        agree = n_dec = exit_dec = exit_all = n_all = 0
        for ids, decode, may_exit, real, ref in batches:
            out = model(ids, steps, halt_threshold=tau, min_steps=m, exit_mask=may_exit)
            agree += int((out.logits.argmax(-1) == ref)[decode].sum())
            n_dec += int(decode.sum())
            exit_dec += int(out.exit_steps[decode].sum())
            exit_all += int(out.exit_steps[real].sum())
            n_all += int(real.sum())
        rows.append({"min_steps": m, "tau": tau, "agreement": agree / n_dec, "mean_exit_steps": exit_dec / n_dec,
                     "core_flops_saved": 1 - exit_dec / n_dec / steps, "mean_exit_steps_all": exit_all / n_all,
                     "core_flops_saved_all": 1 - exit_all / n_all / steps, "decode_positions": n_dec})
    return rows


@torch.no_grad()
def quantile_taus(model, prompt_lens: list[int], seqs: list[list[int]], steps: int, grid_m: tuple[int, ...],
                  qs: tuple[float, ...], pad_id: int, batch_size: int) -> dict[int, list[float]]:
    """Per m in `grid_m` with m < steps: the quantiles `qs` of the (fitted) head's halt probability at
    step m over the decode positions of `seqs` (full-depth forward). With τ = the q-quantile, about a
    share q of those positions stays below τ at step m and runs on."""
    ms = [m for m in sorted(set(grid_m)) if m < steps]
    if not qs or not ms:
        return {}
    device = model.embed.weight.device
    probs: dict[int, list[torch.Tensor]] = {m: [] for m in ms}
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i:i + batch_size]
        ids = right_pad(chunk, pad_id, device)
        ar = torch.arange(ids.shape[1], device=device)[None]
        lens = torch.tensor([len(s) for s in chunk], device=device)[:, None]
        plen = torch.tensor(prompt_lens[i:i + batch_size], device=device)[:, None]
        decode = (ar >= plen - 1) & (ar <= lens - 2)
        hp = model(ids, steps, return_halt=True).halt_probs  # [n, B, T]
        for m in ms:
            probs[m].append(hp[m - 1][decode].double().cpu())
    q = torch.tensor(qs, dtype=torch.float64)
    out = {}
    for m in ms:
        p = torch.cat(probs[m])
        out[m] = sorted({float(v) for v in torch.quantile(p, q) if 0.0 < float(v) < 1.0}) if p.numel() else []
    return out


def choose(rows: list[dict], target: float) -> dict:
    feasible = [r for r in rows if r["agreement"] >= target]
    if not feasible:  # cannot happen when τ = 1 is in the grid (nothing exits: agreement 1)
        raise RuntimeError(f"no (min_steps, tau) reaches agreement {target}")
    return max(feasible, key=lambda r: (r["core_flops_saved"], r["agreement"], -r["tau"]))


def save_plot(rows: list[dict], chosen: dict, target: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in sorted({r["min_steps"] for r in rows}):
        pts = sorted((r["core_flops_saved"] * 100, r["agreement"] * 100) for r in rows if r["min_steps"] == m)
        ax.plot(*zip(*pts), marker="o", ms=3, label=f"min_steps={m}")
    ax.axhline(target * 100, color="grey", ls="--", lw=1, label=f"target {target:.1%}")
    ax.plot(chosen["core_flops_saved"] * 100, chosen["agreement"] * 100, "k*", ms=12,
            label=f"chosen τ={chosen['tau']}, m={chosen['min_steps']}")
    ax.set_xlabel("core FLOPs saved at decode positions (%)")
    ax.set_ylabel("greedy agreement with full depth (%)")
    ax.set_title("AdaExit: agreement vs savings (τ sweep, held-out)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- stage
def calibrate_halt(cfg: HaltCalibConfig) -> dict[str, Any]:
    """Run the whole calibration (see module docstring); returns the results written to calibration.json."""
    from looplm.checkpoint import load_checkpoint, save_checkpoint
    from looplm.generate import GenerationConfig

    cfg.validate()
    model, tok, meta = load_checkpoint(cfg.init, map_location=cfg.device)
    freeze(model)
    snap = snapshot(model)
    mc = model.config
    steps = cfg.steps or mc.recurrence
    check_field("HaltCalibConfig", "steps", steps, steps <= mc.max_steps, f"<= the model's max_steps={mc.max_steps}")
    grid_m = cfg.min_steps_grid or tuple(range(1, min(3, steps) + 1))  # unset: 1 .. min(3, steps)
    check_field("HaltCalibConfig", "min_steps_grid", grid_m, max(grid_m) <= steps, f"every value <= steps={steps}")
    samples = load_samples(cfg.data, cfg.n, cfg.seed, tok)
    check_fits(samples, cfg.max_new_tokens, mc.max_seq_len, f"max_new_tokens={cfg.max_new_tokens}")
    train, held = split_heldout(samples, cfg.heldout_frac, cfg.seed)
    if cfg.sequences == "data" and any(s.response is None for s in train):
        raise ValueError(f"HaltCalibConfig.sequences='data' needs responses, but {cfg.data} is an RL prompt file")
    gen = dict(steps=steps, max_new_tokens=cfg.max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id,
               batch_size=cfg.batch_size, progress=cfg.progress)
    if cfg.sequences == "greedy":
        train_seqs = [s.prompt + c for s, c in zip(train, greedy_continuations(model, [s.prompt for s in train],
                                                                               desc="train continuations", **gen))]
    else:
        train_seqs = [s.prompt + s.response for s in train]
        check_fits([Sample(q, None) for q in train_seqs], 0, mc.max_seq_len, "its response")
    held_prompts = [s.prompt for s in held]
    held_full = greedy_continuations(model, held_prompts, desc="held-out continuations", **gen)

    train_plens = [len(s.prompt) for s in train]
    lab = build_labels(model, train_seqs, steps, cfg.kl_delta, tok.pad_id, cfg.batch_size, cfg.progress,
                       prompt_lens=train_plens)
    n, N, d = lab["feats"].shape
    x, y = fit_rows(lab, cfg.fit_positions)
    fit = fit_halt_head(model, x, y, cfg.epochs, cfg.lr, cfg.train_batch, cfg.seed, cfg.progress)
    fit.update(positions=cfg.fit_positions, steps_fitted=max(steps - 1, 1), rows=len(y),
               positive_rate=float(y.float().mean()))
    changed = check_only_changed(model, snap, HALT_PREFIX)

    held_plens = [len(p) for p in held_prompts]
    held_seqs = [p + c for p, c in zip(held_prompts, held_full)]
    qtaus = quantile_taus(model, train_plens, train_seqs, steps, grid_m, tuple(cfg.tau_quantiles), tok.pad_id,
                          cfg.batch_size)  # from the fit's sequences: the held-out ones only choose
    grid = sorted({(m, float(t)) for m in grid_m for t in (*cfg.taus, *qtaus.get(m, ()), 1.0)})
    rows = adaptive_sweep(model, held_plens, held_seqs, steps, grid, tok.pad_id, cfg.batch_size, cfg.progress)
    best = choose(rows, cfg.target_agreement)
    tau, m = best["tau"], best["min_steps"]
    targets, exits = decode_exits(model, held_plens, held_seqs, steps, m, tau, tok.pad_id, cfg.batch_size)
    by_kind = exit_kinds_report(tok, targets, exits, steps, m, tau)

    gcfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens, steps=steps, stop_tokens=(tok.eos_id,),
                            pad_id=tok.pad_id)
    acfg = GenerationConfig(**{**asdict(gcfg), "halt_threshold": tau, "min_steps": m})
    generation = generation_check(model, held_prompts, held_full, acfg, cfg.batch_size)
    speed = bench_speed(model, held_prompts, gcfg, acfg, cfg)
    seq_len = round(sum(len(p) + len(c) for p, c in zip(held_prompts, held_full)) / len(held))
    chosen = describe_choice(model, best, steps, seq_len)
    results = {
        "init": str(cfg.init), "data": cfg.data, "config": to_json(cfg), "steps": steps,
        "n_core": mc.n_core, "train_prompts": len(train), "heldout_prompts": len(held),
        "label_positions": N, "label_positive_rate_by_step": lab["labels"].float().mean(1).tolist(),
        "label_positive_rate_by_step_decode": lab["labels"][:, lab["decode"]].float().mean(1).tolist(),
        "argmax_agreement_by_step": lab["agree"].float().mean(1).tolist(), "halt_fit": fit,
        "quantile_taus": {str(k): v for k, v in qtaus.items()},
        "changed_params": changed, "sweep": rows, "chosen": chosen, "generation": generation, "speed": speed,
        "exit_steps_by_kind": by_kind,
        "meta_keys": {META_THRESHOLD: tau, META_MIN_STEPS: m, META_STEPS: steps}, "checkpoint": None,
    }
    report_dir = Path(cfg.out or cfg.report_dir)
    if cfg.out:
        new_meta = {**clean_meta(meta), "stage": "calibrate-halt", "parent": str(cfg.init), META_THRESHOLD: tau,
                    META_MIN_STEPS: m, META_STEPS: steps,
                    "halt_calibration": {k: chosen[k] for k in ("agreement", "core_flops_saved", "mean_exit_steps")}
                    | {"target_agreement": cfg.target_agreement, "kl_delta": cfg.kl_delta}}
        results["checkpoint"] = str(save_checkpoint(cfg.out, model, tok, meta=new_meta))
    report_dir.mkdir(parents=True, exist_ok=True)
    results["plot"] = str(save_plot(rows, best, cfg.target_agreement, report_dir / "calibration.png"))
    results["exit_kind_plot"] = str(save_kind_plot(by_kind, report_dir / "exit_steps_by_kind.png"))
    results["report"] = str(write_json(report_dir / "calibration.json", results))
    return results


def generation_check(model, prompts: list[list[int]], full: list[list[int]], ada_cfg, batch: int) -> dict[str, Any]:
    """Adaptive greedy decoding vs the full-depth outputs `full`: identity, prefix agreement, exits."""
    from looplm.generate import generate

    outs = [generate(model, prompts[i:i + batch], ada_cfg) for i in range(0, len(prompts), batch)]
    exits = [e for o in outs for row in o.exit_steps for e in row]
    mean_exit = sum(exits) / len(exits)
    return {**prefix_agreement(full, [t for o in outs for t in o.tokens]), "mean_exit_steps": mean_exit,
            "core_flops_saved": 1 - mean_exit / ada_cfg.steps, "prompts": len(prompts)}


def describe_choice(model, best: dict, steps: int, seq_len: int) -> dict[str, Any]:
    """The chosen sweep row plus block passes and the share of total FLOPs saved."""
    n_core = model.config.n_core
    f_full = model.flops_per_token(steps, seq_len)
    f_step = model.flops_per_token(steps + 1, seq_len) - f_full  # core FLOPs of one step
    return {**best, "mean_exit_block_passes": best["mean_exit_steps"] * n_core, "full_depth_steps": steps,
            "full_depth_block_passes": steps * n_core,
            "total_flops_saved": (steps - best["mean_exit_steps"]) * f_step / f_full}


def bench_speed(model, prompts: list[list[int]], full_cfg, ada_cfg, cfg: HaltCalibConfig) -> dict[str, Any]:
    """tokens/s of full-depth vs adaptive greedy decoding per batch size, measured interleaved."""
    if cfg.bench_repeats == 0:
        return {}
    reps = math.ceil(cfg.bench_prompts / len(prompts))
    ps = (prompts * reps)[:cfg.bench_prompts]
    out: dict[str, Any] = {"repeats": cfg.bench_repeats, "prompts": len(ps), "interleaved": True}
    for b in cfg.bench_batches:
        t = time_interleaved({"full": batched_generate(model, ps, full_cfg, b),
                              "adaptive": batched_generate(model, ps, ada_cfg, b)},
                             cfg.bench_repeats, cfg.progress, desc=f"timing batch {b}")
        out[f"batch_{b}"] = {"full_tokens_per_s": t["full"]["tokens_per_s"],
                             "adaptive_tokens_per_s": t["adaptive"]["tokens_per_s"],
                             "speedup": t["adaptive"]["tokens_per_s"] / t["full"]["tokens_per_s"]}
    return out
