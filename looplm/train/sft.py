"""`looplm sft`: supervised fine-tuning on chat-formatted prompt/response pairs, loss on response
tokens only.

Data: rows `{"prompt", "response", "domain"}` (from `looplm data sft`; `domain` is optional and only
groups validation numbers), or TRL's `{"messages"}` / `{"prompt", "completion"}` rows, from any
source of `looplm.data.rowsets` (a JSONL/parquet/... file, a directory, `hub:NAME`). Each row becomes
`tokenizer.encode_messages` (for one turn, `encode_chat(prompt, response)`): the chat template
`<|user|>\\n{prompt}\\n<|assistant|>\\n{response}<|eos|>` with a 0/1
mask that is 1 exactly on the response tokens and the final EOS. Rows of domain `replay`
(pre-training-format CLRS text) skip the template: `encode(prompt) + encode(response) + EOS`, loss
on the response part. Targets are the next tokens; a target whose mask is 0 (a prompt token) or a
padding position is IGNORE, so prompt tokens carry no loss and no gradient.

Batches: each micro-batch is `batch_size` rows (rank r takes its share), right-padded to the
longest row rounded up to a multiple of 32 (at most seq_len). Right padding needs no attention mask:
attention is causal, so no real token ever sees a pad. The row order is a seeded permutation per
epoch, a pure function of (seed, update, micro-batch), so `--resume` is exact. The loss of an update
is the sum over its scored targets divided by their number (over all micro-batches and ranks).

Depth: fixed (`--fixed-depth`, default the model's recurrence) unless `--sample-depth` (the same
Huginn sampler as pre-training). Everything else (optimizer, schedule, checkpoints, resume, signals,
NaN guard, logging, DDP/FSDP, bf16, compile) is shared with `looplm pretrain`.

Simplification: padding, not packing (the model takes a key-padding mask but no block-diagonal
document mask, so packed rows would attend across examples).
"""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from looplm.train.args import config_from_args, config_to_dict, need, need_str, opt_field
from looplm.train.loop_config import RESUME_FREE as LOOP_RESUME_FREE
from looplm.train.loop_config import LoopConfig
from looplm.train.pretrain import EXIT_DIVERGED

REPLAY_DOMAIN = "replay"
PAD_MULTIPLE = 32
IGNORE = -100  # == looplm.train.common.IGNORE (kept torch-free here)


@dataclass
class SFTConfig(LoopConfig):
    data: str = opt_field("", "SFT rows {prompt, response, domain}, or TRL {messages} / {prompt, completion}: a "
                              "JSONL/JSON/parquet/CSV file, a directory or hub:NAME[:CONFIG][@SPLIT]", metavar="SOURCE")
    init: str = opt_field("", "checkpoint (or run directory) to fine-tune", metavar="CKPT")
    val_data: str | None = opt_field(None, "held-out JSONL in the same format: response loss per domain at "
                                           "fixed depths", metavar="FILE.jsonl")
    # the defaults that differ from pre-training
    steps: int = opt_field(500, "optimizer updates in total")
    seq_len: int = opt_field(512, "longest example in tokens minus one (<= the model's max_seq_len); longer rows "
                                  "are an error")
    lr: float = opt_field(1e-4, "peak learning rate")
    warmup: int = opt_field(20, "linear warmup updates")
    weight_decay: float = opt_field(0.0, "AdamW weight decay on matrices (vectors get none)")
    sample_depth: bool = opt_field(False, "sample the recurrence depth per update (as in pre-training) instead of "
                                          "--fixed-depth")
    eval_every: int = opt_field(100, "evaluate on --val-data every N updates (and at the end; 0 = only at the end)")
    eval_batches: int = opt_field(4, "validation batches per domain")
    save_every: int = opt_field(250, "checkpoint every N updates (and at the end)")

    def validate(self) -> None:
        super().validate()
        need_str(self, "data")
        need_str(self, "init")
        need_str(self, "val_data", optional=True)
        need(self, "deep_fraction", self.sample_depth or self.deep_fraction == 0,
             "needs --sample-depth (a fixed depth has no deep updates)")


RESUME_FREE = LOOP_RESUME_FREE | {"val_data"}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from looplm.train.args import add_config_args

    p = subparsers.add_parser(
        "sft", help="supervised fine-tuning on chat prompt/response pairs (loss on responses only)",
        description="Fine-tune a checkpoint on a JSONL file of {prompt, response, domain} rows in the chat "
                    "template, with the loss on response tokens only; same loop, checkpoints, resume and "
                    "logging as `looplm pretrain`.",
        epilog="Exit codes: 0 done, 3 stopped on non-finite updates, 128+signal when stopped by a signal.")
    add_config_args(p, SFTConfig, required=("data", "init", "out"))
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace | SFTConfig) -> int:
    """CLI entry (also callable with an SFTConfig): returns the exit code."""
    from looplm.train.common import TrainingDiverged

    cfg = args if isinstance(args, SFTConfig) else config_from_args(SFTConfig, args)
    try:
        return train(cfg)["exit_code"]
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED


# ------------------------------------------------------------------------------------------ data
@dataclass
class Example:
    ids: list[int]
    mask: list[int]  # 1 = response token (scored as a target)
    domain: str


def encode_rows(path: str | Path, tok: Any, seq_len: int) -> list[Example]:
    """Read and encode an SFT source (any spec of `looplm.data.rowsets`: looplm, TRL `messages` or
    `prompt`/`completion` rows); a row longer than seq_len + 1 tokens is an error naming file:line."""
    from looplm.data.jsonl import DataFormatError
    from looplm.data.rowsets import read_sft_rows

    out = []
    for row in read_sft_rows(str(path)):
        if row.domain == REPLAY_DOMAIN:
            p, r = tok.encode(row.messages[0]["content"]), tok.encode(row.messages[1]["content"]) + [tok.eos_id]
            ids, mask = p + r, [0] * len(p) + [1] * len(r)
        else:
            ids, mask = tok.encode_messages(row.messages)
        if len(ids) > seq_len + 1:
            raise DataFormatError(f"{row.where}: {len(ids)} tokens exceed --seq-len {seq_len} + 1; raise --seq-len "
                                  f"(up to the model's max_seq_len) or shorten the row")
        out.append(Example(ids, mask, row.domain))
    return out


def make_batch(examples: list[Example], pad_id: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), each int64 [B, L] with L = the longest row - 1 rounded up to a multiple of
    32 (<= seq_len). targets[i, t] = ids[i, t + 1] where that token is a response token, else IGNORE;
    inputs are right-padded with pad_id."""
    longest = max(len(e.ids) for e in examples) - 1
    L = min(seq_len, -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE)
    inputs = np.full((len(examples), L), pad_id, dtype=np.int64)
    targets = np.full((len(examples), L), IGNORE, dtype=np.int64)
    for i, e in enumerate(examples):
        ids, mask = np.asarray(e.ids, dtype=np.int64), np.asarray(e.mask, dtype=bool)
        inputs[i, :len(ids) - 1] = ids[:-1]
        targets[i, :len(ids) - 1] = np.where(mask[1:], ids[1:], IGNORE)
    return inputs, targets


@functools.lru_cache(maxsize=4)
def _epoch_perm(n: int, seed: int, epoch: int) -> np.ndarray:
    from looplm.train.common import DATA_STREAM

    return np.random.default_rng([seed, DATA_STREAM, epoch]).permutation(n)


def batch_rows(n: int, seed: int, step: int, micro: int, accum: int, batch: int) -> list[int]:
    """Example indices of micro-batch `micro` of update `step`: row j is perm_e[g mod n] with
    g = (step * accum + micro) * batch + j, e = g div n, perm_e a seeded permutation per epoch."""
    first = (step * accum + micro) * batch
    return [int(_epoch_perm(n, seed, g // n)[g % n]) for g in range(first, first + batch)]


def val_batches(cfg: SFTConfig, examples: list[Example], pad_id: int, d: Any) -> dict[str, list]:
    """Per domain, in file order: up to `eval_batches` batches of batch_size rows (this rank's rows);
    a short last batch is filled with copies of its last row whose targets are all IGNORE."""
    from looplm.train import common as C

    by_domain: dict[str, list[Example]] = {}
    for e in examples:
        by_domain.setdefault(e.domain, []).append(e)
    out: dict[str, list] = {}
    for dom, exs in by_domain.items():
        out[dom] = []
        for b in range(min(cfg.eval_batches, -(-len(exs) // cfg.batch_size))):
            chunk = exs[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            real = len(chunk)
            x, y = make_batch(chunk + [chunk[-1]] * (cfg.batch_size - real), pad_id, cfg.seq_len)
            y[real:] = IGNORE
            out[dom].append(C.to_device_batch(C.rank_rows(x, d), C.rank_rows(y, d), d.device))
    return out


# ------------------------------------------------------------------------------------------ loop
def train(cfg: SFTConfig) -> dict[str, Any]:
    """Run (or resume) SFT; returns {"exit_code", "step", "loss", "checkpoint", "final", "eval"}."""
    from looplm.train import common as C
    from looplm.train.logger import check_backends

    check_backends(cfg.tensorboard, cfg.wandb)
    d = C.setup_distributed(cfg.device, cfg.threads, need_group=cfg.fsdp)
    try:
        return _train(cfg, d)
    finally:
        C.teardown_distributed(d)


def load_start(cfg: SFTConfig) -> tuple[Any, Any, Any, str]:
    from looplm.checkpoint import load_checkpoint, load_train_state
    from looplm.data.rowsets import source_fingerprint
    from looplm.train import rundir as R

    out = Path(cfg.out)
    if cfg.resume:
        ckpt = R.newest_resumable(out)
        state = load_train_state(ckpt)
        diffs = R.config_differences(state["config"], config_to_dict(cfg), RESUME_FREE)
        if diffs:
            raise R.ResumeError(f"--resume: {ckpt} was trained with a different config ({'; '.join(diffs)}); "
                                f"resume with the same options or start a new --out")
        model, tok, meta = load_checkpoint(ckpt)
        R.check_same_data(meta, source_fingerprint(cfg.data), ckpt)
        return model, tok, state, str(ckpt)
    R.check_fresh_out(out)
    ckpt = R.resolve_init(cfg.init)
    model, tok, _ = load_checkpoint(ckpt)
    return model, tok, None, str(ckpt)


def _train(cfg: SFTConfig, d: Any) -> dict[str, Any]:
    import signal
    import time

    import torch

    from looplm.checkpoint import restore_rng_state
    from looplm.config import ConfigError
    from looplm.data.rowsets import source_fingerprint
    from looplm.train import common as C
    from looplm.train import rundir as R
    from looplm.train.logger import MetricsLogger, evals_to_json, truncate_metrics

    # ---- inputs, all checked before the first update
    raw, tok, state, origin = load_start(cfg)
    mcfg, out = raw.config, Path(cfg.out)
    if cfg.seq_len > mcfg.max_seq_len:
        raise ConfigError(f"SFTConfig.seq_len={cfg.seq_len} exceeds the model context max_seq_len={mcfg.max_seq_len} "
                          f"of {origin} (option --seq-len)")
    if cfg.batch_size % d.world_size:
        raise ConfigError(f"SFTConfig.batch_size={cfg.batch_size} must be divisible by the world size {d.world_size} "
                          f"(option --batch-size)")
    examples = encode_rows(cfg.data, tok, cfg.seq_len)
    val = val_batches(cfg, encode_rows(cfg.val_data, tok, cfg.seq_len), tok.pad_id, d) if cfg.val_data else {}
    model, params, opt, start, bad = C.prepare_model(raw, cfg, d, state)
    peak = cfg.peak_flops or C.measure_peak_flops(d.device, cfg.bf16)
    token_bytes = torch.from_numpy(C.token_byte_lengths(tok, mcfg.vocab_size)).to(d.device)
    depths = C.eval_depths(cfg.eval_depths, mcfg.recurrence, mcfg.max_steps)
    mean_steps = cfg.mean_steps or float(mcfg.recurrence)
    fixed = min(cfg.fixed_depth or mcfg.recurrence, mcfg.max_steps)
    meta = {"stage": "sft", "tokenizer_sha256": tok.sha256(), "data": str(cfg.data),
            "data_fingerprint": source_fingerprint(cfg.data), "origin": origin}
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        R.write_run_config(out, config_to_dict(cfg))
        if state is not None:
            truncate_metrics(out / R.METRICS, start)
    log = MetricsLogger(out, d.main, cfg.steps, start, config_to_dict(cfg), cfg.tensorboard, cfg.wandb,
                        cfg.progress, cfg.log_every, stage="sft")
    log.event(start, f"sft {'resumed from' if state else 'from'} {origin}: step {start}/{cfg.steps}, "
                     f"{len(examples)} examples, {sum(p.numel() for p in params):,} trained parameters, "
                     f"{d.world_size} rank(s) x {d.threads} thread(s) on {d.device}")
    if state is not None:
        restore_rng_state(state["rng"])
    nan_steps = C.nan_test_steps()
    last_ckpt = origin if state is not None else None
    evals: dict[str, Any] = {}
    seen = start * cfg.batch_size * cfg.grad_accum

    # ---- the loop: one iteration = one optimizer update
    step, loss, exit_code = start, float("nan"), 0
    seconds = float(state.get("train_seconds", 0.0)) if state is not None else 0.0  # training time so far
    budget = 60 * cfg.max_minutes if cfg.max_minutes is not None else None
    t_begin = time.perf_counter() - seconds
    with R.StopSignals() as stop:
        while step < cfg.steps:
            t0 = time.perf_counter()
            n = (C.sample_depth(cfg.seed, step, mean_steps, cfg.depth_sigma, mcfg.max_steps, cfg.deep_fraction)
                 if cfg.sample_depth else fixed)
            k = min(n, cfg.bptt_steps)
            lr = C.lr_at(step, cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr_ratio, seconds / budget if budget else 0.0)
            C.set_lr(opt, lr)
            micro, n_targets, n_tokens = [], 0, 0
            for m in range(cfg.grad_accum):
                rows = batch_rows(len(examples), cfg.seed, step, m, cfg.grad_accum, cfg.batch_size)
                x, y = make_batch([examples[i] for i in rows], tok.pad_id, cfg.seq_len)  # global [B, L]
                n_targets += int((y != IGNORE).sum())
                n_tokens += x.size
                micro.append(C.to_device_batch(C.rank_rows(x, d), C.rank_rows(y, d), d.device))
            local = C.accumulate(model, micro, n, k, n_targets, d, cfg.bf16, poison=step in nan_steps)
            elapsed = time.perf_counter() - t_begin  # wall clock of the loop (evaluations and saves included)
            flags = [stop.signum is not None, budget is not None and elapsed >= budget]
            loss, gnorm, ok, (signalled, timed_out), (seconds,) = C.finish_update(
                model, opt, params, local, n_targets, flags, cfg.grad_clip, d, [elapsed])
            bad = 0 if ok else bad + 1
            C.sync(d.device)
            dt = time.perf_counter() - t0
            step += 1
            seen += cfg.batch_size * cfg.grad_accum
            flops = C.train_flops_per_token(mcfg, n, k, micro[0][0].shape[1]) * n_tokens
            log.train({"step": step, "loss": loss, "lr": lr, "grad_norm": gnorm, "depth": n, "bptt": k,
                       "tokens": n_tokens, "response_tokens": n_targets, "examples": seen,
                       "epoch": seen / len(examples), "tokens_per_s": n_tokens / dt,
                       "mfu": flops / dt / (peak * d.world_size), "step_ms": 1e3 * dt, "skipped": not ok})
            if bad >= cfg.max_bad_steps:
                log.close()
                raise C.TrainingDiverged(
                    f"{bad} updates in a row had a non-finite loss or gradient (last: update {step}, loss {loss}, "
                    f"grad norm {gnorm}); none of them was applied. Last good checkpoint: "
                    f"{last_ckpt or 'none saved yet'}. Lower --lr, raise --warmup or check the data, then --resume.")
            done = step == cfg.steps or (timed_out and not signalled)
            if val and not signalled and (cfg.eval_every and step % cfg.eval_every == 0 or done):
                evals = C.evaluate(model, raw, val, depths, token_bytes, cfg.bf16, d)
                log.eval(step, evals)
            if signalled or done or step % cfg.save_every == 0:
                saved = C.save_training(out, step, model, raw, opt, tok, cfg, {**meta, "eval": evals_to_json(evals)},
                                        bad, done, d, seconds)
                last_ckpt = str(saved) if saved else last_ckpt
                log.event(step, f"saved {saved}" + (f" and {out / R.FINAL}" if done else ""))
            if signalled:
                exit_code = 128 + (stop.signum or signal.SIGTERM)
                log.event(step, f"stopped by a signal at update {step} (exit code {exit_code}); continue with --resume")
                break
            if done and step < cfg.steps:
                log.event(step, f"time limit of {cfg.max_minutes} min reached at update {step}/{cfg.steps}")
                break
    log.close()
    return {"exit_code": exit_code, "step": step, "loss": loss, "checkpoint": last_ckpt,
            "final": str(out / R.FINAL) if exit_code == 0 and step > start else None, "eval": evals}
