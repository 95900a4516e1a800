"""Speculative-head distillation (`looplm train-spec`): train only the draft heads of a frozen model.

Stages of `train_spec(SpecTrainConfig)`:
1. Targets: each training prompt plus the frozen model's own full-depth greedy continuation
   (`target="greedy"`, default: the drafts are verified against exactly these tokens) or its reference
   response (`target="data"`, SFT/task data only).
2. One frozen full-depth forward per batch gives the final normed coda outputs h_i; kept for every
   position i from the last prompt token to the last-but-one token (where decoding drafts), with
   targets token i + 1 + k for head k = 1..K (positions past the end are ignored).
3. Train `speculative_projs` / `speculative_biases` only (AdamW, `epochs` passes over the positions,
   loss = Σ_k CE_k) on the cached h_i: draft_k = lm_head(h + SiLU(P_k h + b_k)) with the tied head
   frozen. A bit-for-bit check refuses any change outside the heads.
4. Evaluate on held-out prompts against their full-depth greedy continuations: per-head CE before /
   after, top-1 accuracy and chained acceptance (heads 1..k all right) under teacher forcing; then
   real decoding at batch 1, plain greedy vs speculative, interleaved in one run: identical token
   lists, mean tokens per verification pass, per-head acceptance (head k accepted / examined),
   tokens/s. If the init checkpoint carries an AdaExit calibration (meta `halt_threshold`,
   `halt_min_steps`) and `halt` is "auto", adaptive greedy and adaptive + speculative are timed too.
5. Write the checkpoint (meta `stage="train-spec"`, `spec_training` summary; the halt keys are kept)
   and `train_spec.json` into `out`.

Simplification: hidden states are cached once (the body is frozen), so training never re-runs the
model; targets are hard tokens (greedy or data), not the model's full distribution.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from looplm.calibrate.common import (Sample, batched_generate, check_fits, check_only_changed, clean_meta, freeze,
                                     greedy_continuations, load_samples, prefix_agreement, right_pad, snapshot,
                                     split_heldout, time_interleaved, write_json)
from looplm.calibrate.configs import SpecTrainConfig, check_field, to_json

SPEC_PREFIX = ("speculative_projs.", "speculative_biases.")


# ---------------------------------------------------------------------------------------------- data
@torch.no_grad()
def collect_hidden(model, seqs: list[list[int]], prompt_lens: list[int], steps: int, pad_id: int,
                   batch_size: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """h [M, d] at positions plen-1 .. len-2 of every sequence and targets [M, K] (token i+1+k, or -100)."""
    device = model.embed.weight.device
    K = model.config.n_spec_heads
    hs, ts = [], []
    for i in tqdm(range(0, len(seqs), batch_size), desc="hidden states", disable=not progress, leave=False):
        chunk, plens = seqs[i:i + batch_size], prompt_lens[i:i + batch_size]
        h = model(right_pad(chunk, pad_id, device), steps).hidden  # [B, L, d]
        for b, (s, p) in enumerate(zip(chunk, plens)):
            pos = torch.arange(p - 1, len(s) - 1)  # [P]
            tgt_idx = pos[:, None] + 1 + torch.arange(1, K + 1)[None]  # [P, K]
            padded = torch.tensor(s + [-100] * (K + 1))
            hs.append(h[b, pos.to(device)].cpu())
            ts.append(padded[tgt_idx])
    return torch.cat(hs), torch.cat(ts)


@torch.no_grad()
def head_metrics(model, h: torch.Tensor, tgt: torch.Tensor, chunk: int = 1024) -> dict[str, list[float]]:
    """Per head: mean CE, top-1 accuracy, and chained acceptance P(heads 1..k all right) over positions
    where token i+1+k exists."""
    K = tgt.shape[1]
    ce, right, valid = torch.zeros(K), [], []
    device = model.embed.weight.device
    for i in range(0, len(h), chunk):
        logits = model.spec_logits(h[i:i + chunk].to(device)).float().cpu()  # [c, K, V]
        t = tgt[i:i + chunk]
        ce += F.cross_entropy(logits.transpose(1, 2), t, ignore_index=-100, reduction="none").sum(0)
        right.append(logits.argmax(-1) == t)
        valid.append(t != -100)
    right_t, valid_t = torch.cat(right), torch.cat(valid)
    n = valid_t.sum(0).clamp(min=1)
    chain = right_t.int().cummin(dim=1).values.bool()  # all heads up to k right
    return {"ce": (ce / n).tolist(), "top1": ((right_t & valid_t).sum(0) / n).tolist(),
            "chain_acceptance": ((chain & valid_t).sum(0) / n).tolist(), "positions": valid_t.sum(0).tolist()}


def fit_heads(model, h: torch.Tensor, tgt: torch.Tensor, cfg: SpecTrainConfig) -> list[float]:
    """AdamW on the speculative heads only; returns the mean training loss of each epoch."""
    params = [p for n, p in model.named_parameters() if n.startswith(SPEC_PREFIX)]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = model.embed.weight.device
    losses = []
    try:
        for _ in tqdm(range(cfg.epochs), desc="train heads", disable=not cfg.progress, leave=False):
            tot, cnt = 0.0, 0
            for idx in torch.randperm(len(h), generator=gen).split(cfg.train_batch):
                logits = model.spec_logits(h[idx].to(device))  # [b, K, V]
                t = tgt[idx].to(device)
                loss = F.cross_entropy(logits.transpose(1, 2), t, ignore_index=-100, reduction="none")
                loss = (loss.sum(0) / (t != -100).sum(0).clamp(min=1)).sum()  # Σ_k mean CE_k
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot, cnt = tot + float(loss.detach()), cnt + 1
            losses.append(tot / cnt)
    finally:
        for p in params:
            p.requires_grad_(False)
    return losses


# ---------------------------------------------------------------------------------------------- decoding
def acceptance_from_outputs(outputs: list, K: int) -> dict[str, Any]:
    """Mean tokens per verification pass and per-head acceptance (accepted / examined) from
    speculative GenerationOutputs (one prompt each; a trailing non-verify entry is dropped)."""
    counts = []
    for o in outputs:
        acc = o.accept_counts[0]
        counts.extend(acc[:o.forward_passes - 1])  # forward_passes = prefill + verify passes
    examined = [sum(c - 1 >= k - 1 for c in counts) for k in range(1, K + 1)]
    accepted = [sum(c - 1 >= k for c in counts) for k in range(1, K + 1)]
    new = sum(o.new_tokens for o in outputs)
    return {"verify_passes": len(counts), "mean_tokens_per_verify": sum(counts) / max(1, len(counts)),
            "tokens_per_forward": new / max(1, sum(o.forward_passes for o in outputs)),
            "head_acceptance": [a / e if e else None for a, e in zip(accepted, examined)]}


def decode_compare(model, prompts: list[list[int]], steps: int, cfg: SpecTrainConfig, eos: int, pad: int,
                   halt: tuple[float, int] | None) -> dict[str, Any]:
    """Plain greedy vs speculative (and adaptive variants) at batch 1, interleaved; identity and speed."""
    from looplm.generate import GenerationConfig

    base = GenerationConfig(max_new_tokens=cfg.max_new_tokens, steps=steps, stop_tokens=(eos,), pad_id=pad)
    cfgs = {"greedy": base, "speculative": GenerationConfig(**{**asdict(base), "speculative": True})}
    if halt is not None:
        ada = {"halt_threshold": halt[0], "min_steps": halt[1]}
        cfgs["adaptive"] = GenerationConfig(**{**asdict(base), **ada})
        cfgs["adaptive_speculative"] = GenerationConfig(**{**asdict(base), **ada, "speculative": True})
    t = time_interleaved({k: batched_generate(model, prompts, c, 1) for k, c in cfgs.items()}, cfg.bench_repeats,
                         cfg.progress, desc="decode + timing")
    K = model.config.n_spec_heads
    res: dict[str, Any] = {"prompts": len(prompts), "batch": 1, "repeats": cfg.bench_repeats, "interleaved": True,
                           "tokens_per_s": {k: v["tokens_per_s"] for k, v in t.items()},
                           "identical": t["speculative"]["tokens"] == t["greedy"]["tokens"],
                           "speedup": t["speculative"]["tokens_per_s"] / t["greedy"]["tokens_per_s"],
                           "speculative": acceptance_from_outputs(t["speculative"]["outputs"], K)}
    if halt is not None:
        g = t["greedy"]["tokens_per_s"]
        res["adaptive"] = {
            "halt_threshold": halt[0], "min_steps": halt[1],
            "speedup_adaptive": t["adaptive"]["tokens_per_s"] / g,
            "speedup_adaptive_speculative": t["adaptive_speculative"]["tokens_per_s"] / g,
            "identical_adaptive_speculative_vs_adaptive":
                t["adaptive_speculative"]["tokens"] == t["adaptive"]["tokens"],
            "adaptive_vs_full": prefix_agreement(t["greedy"]["tokens"], t["adaptive"]["tokens"]),
            "speculative": acceptance_from_outputs(t["adaptive_speculative"]["outputs"], K)}
    return res


# ---------------------------------------------------------------------------------------------- stage
def train_spec(cfg: SpecTrainConfig) -> dict[str, Any]:
    """Run the whole distillation (see module docstring); returns the results written to train_spec.json."""
    from looplm.checkpoint import load_checkpoint, save_checkpoint

    cfg.validate()
    model, tok, meta = load_checkpoint(cfg.init, map_location=cfg.device)
    mc = model.config
    if mc.n_spec_heads == 0:
        raise ValueError(f"{cfg.init}: the model has no speculative heads (n_spec_heads=0)")
    freeze(model)
    snap = snapshot(model)
    steps = cfg.steps or mc.recurrence
    check_field("SpecTrainConfig", "steps", steps, steps <= mc.max_steps, f"<= the model's max_steps={mc.max_steps}")
    samples = load_samples(cfg.data, cfg.n, cfg.seed, tok)
    check_fits(samples, cfg.max_new_tokens + mc.n_spec_heads + 1, mc.max_seq_len,
               f"max_new_tokens={cfg.max_new_tokens} + {mc.n_spec_heads + 1} draft positions")
    train, held = split_heldout(samples, cfg.heldout_frac, cfg.seed)
    gen = dict(steps=steps, max_new_tokens=cfg.max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id,
               batch_size=cfg.batch_size, progress=cfg.progress)
    if cfg.target == "greedy":
        conts = greedy_continuations(model, [s.prompt for s in train], desc="train continuations", **gen)
        train_seqs = [s.prompt + c for s, c in zip(train, conts)]
    else:
        if any(s.response is None for s in train):
            raise ValueError(f"SpecTrainConfig.target='data' needs responses, but {cfg.data} is an RL prompt file")
        train_seqs = [s.prompt + s.response for s in train]
        check_fits([Sample(q, None) for q in train_seqs], 0, mc.max_seq_len, "its response")
    held_prompts = [s.prompt for s in held]
    held_seqs = [p + c for p, c in zip(held_prompts, greedy_continuations(model, held_prompts,
                                                                          desc="held-out continuations", **gen))]
    h_tr, t_tr = collect_hidden(model, train_seqs, [len(s.prompt) for s in train], steps, tok.pad_id,
                                cfg.batch_size, cfg.progress)
    h_ho, t_ho = collect_hidden(model, held_seqs, [len(p) for p in held_prompts], steps, tok.pad_id,
                                cfg.batch_size, cfg.progress)
    before = {"train": head_metrics(model, h_tr, t_tr), "heldout": head_metrics(model, h_ho, t_ho)}
    epoch_losses = fit_heads(model, h_tr, t_tr, cfg)
    changed = check_only_changed(model, snap, SPEC_PREFIX)
    after = {"train": head_metrics(model, h_tr, t_tr), "heldout": head_metrics(model, h_ho, t_ho)}

    halt = None
    if cfg.halt == "auto" and meta.get("halt_threshold") is not None:
        halt = (float(meta["halt_threshold"]), int(meta.get("halt_min_steps", 1)))
    decoding = decode_compare(model, held_prompts[:cfg.eval_prompts], steps, cfg, tok.eos_id, tok.pad_id, halt)
    results = {"init": str(cfg.init), "data": cfg.data, "config": to_json(cfg), "steps": steps,
               "train_prompts": len(train), "heldout_prompts": len(held), "train_positions": len(h_tr),
               "heldout_positions": len(h_ho), "epoch_losses": epoch_losses, "before": before, "after": after,
               "changed_params": changed, "decoding": decoding}
    summary = {"heldout_ce_before": before["heldout"]["ce"], "heldout_ce_after": after["heldout"]["ce"],
               "head_acceptance": decoding["speculative"]["head_acceptance"],
               "mean_tokens_per_verify": decoding["speculative"]["mean_tokens_per_verify"],
               "target": cfg.target, "epochs": cfg.epochs}
    new_meta = {**clean_meta(meta), "stage": "train-spec", "parent": str(cfg.init), "spec_training": summary}
    results["checkpoint"] = str(save_checkpoint(cfg.out, model, tok, meta=new_meta))
    results["report"] = str(write_json(Path(cfg.out) / "train_spec.json", results))
    return results
