"""`looplm pretrain`: language-model pre-training of a RecursiveCausalLM on a token-shard directory,
with sampled recurrence depth and truncated backprop through the core.

One explicit loop (`train`): per update, draw the depth n (Huginn sampler, keyed by step) and
k = min(n, bptt_steps); for each of `grad_accum` micro-batches draw random windows of seq_len + 1
tokens (generator keyed by seed, step and micro-batch; rank r takes its rows of the global batch),
forward n steps with gradients through the last k, backward; then clip, skip the update if the
loss or gradient is non-finite, else AdamW with warmup + cosine. Every `eval_every` updates: loss
and bits per byte per validation domain at fixed depths; every `save_every` and at the end: an
atomic checkpoint (newest `keep` kept) plus `final/` weights. SIGTERM/SIGINT save and exit with
128 + signal number; `max_bad_steps` non-finite updates in a row stop with exit code 3.

Sources of the weights: a fresh model from `--preset` (+ `--set` overrides, seeded by `--seed`), a
checkpoint (`--init`, fresh optimizer at step 0), or `--resume` (newest checkpoint in `--out`:
weights, optimizer, step, RNG; the config must match except for the fields in RESUME_FREE, and the
train shards must be the same). The tokenizer is the data directory's (or the checkpoint's, which
must then equal the data's by sha256). `--max-minutes` is a training-time budget (wall clock of
the loop, summed over resumes): the cosine follows elapsed / budget when that runs ahead of
step / steps, and reaching the budget ends training as reaching `--steps` does (final evaluation,
checkpoint and `final/`).

Simplification: the data stream is random windows (with replacement) over the train tokens, not
epochs; "tokens seen" is updates x batch_size x seq_len x grad_accum.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from looplm.train.args import add_config_args, config_from_args, config_to_dict, need, need_str, opt_field
from looplm.train.loop_config import RESUME_FREE, LoopConfig

EXIT_DIVERGED = 3


@dataclass
class PretrainConfig(LoopConfig):
    data: str = opt_field("", "pre-training data directory (manifest.json + shards from `looplm data pretrain-mix`)",
                          metavar="DIR")
    preset: str | None = opt_field(None, "model preset for a fresh model: tiny, small, report-200m (default: tiny; "
                                         "not with --init)", metavar="NAME")
    model_overrides: list[str] = opt_field([], "override a ModelConfig field of the fresh model, e.g. --set "
                                               "d_model=64 (repeatable; not with --init)", metavar="FIELD=VALUE")
    init: str | None = opt_field(None, "start from this checkpoint's weights (a checkpoint or run directory; fresh "
                                       "optimizer, step 0)", metavar="CKPT")

    def validate(self) -> None:
        super().validate()
        need_str(self, "data")
        need(self, "preset", not (self.init and self.preset), "give --preset or --init, not both "
             "(with --init the model comes from the checkpoint)")
        need(self, "model_overrides", not (self.init and self.model_overrides), "--set cannot change a model "
             "loaded with --init")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "pretrain", help="pre-train a model on a token-shard directory (sampled depth, truncated backprop)",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        epilog="Multi-process: torchrun --nproc_per_node=N -m looplm pretrain ... (gloo on CPU, NCCL on GPU). "
               "Exit codes: 0 done, 3 stopped on non-finite updates, 128+signal when stopped by a signal.")
    add_config_args(p, PretrainConfig, required=("data", "out"))
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace | PretrainConfig) -> int:
    """CLI entry (also callable with a PretrainConfig): returns the exit code."""
    from looplm.train.common import TrainingDiverged

    cfg = args if isinstance(args, PretrainConfig) else config_from_args(PretrainConfig, args)
    try:
        return train(cfg)["exit_code"]
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED


# ---------------------------------------------------------------------------------------- setup
def model_config(cfg: PretrainConfig):
    from looplm.commands import parse_overrides
    from looplm.config import get_preset

    return get_preset(cfg.preset or "tiny", **parse_overrides(cfg.model_overrides))


def data_fingerprint(data: Any) -> str:
    """sha256 over the train shards' sha256s (from the manifest): equal iff the train stream is."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps([s["sha256"] for s in data.manifest["train"]["shards"]]).encode()).hexdigest()


def load_start(cfg: PretrainConfig, data: Any) -> tuple[Any, Any, Any, str]:
    """(model, tokenizer, train_state or None, origin) for a fresh, --init or --resume start."""
    import torch

    from looplm.checkpoint import load_checkpoint, load_train_state
    from looplm.model import RecursiveCausalLM
    from looplm.tokenizer import Tokenizer
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
        R.check_same_data(meta, data_fingerprint(data), ckpt)
        return model, tok, state, str(ckpt)
    R.check_fresh_out(out)
    if cfg.init:
        ckpt = R.resolve_init(cfg.init)
        model, tok, _ = load_checkpoint(ckpt)
        return model, tok, None, str(ckpt)
    tok = Tokenizer.load(data.directory)
    torch.manual_seed(cfg.seed)
    return RecursiveCausalLM(model_config(cfg)), tok, None, f"preset {cfg.preset or 'tiny'}"


def check_inputs(cfg: PretrainConfig, data: Any, tok: Any, model_cfg: Any, origin: str, world: int) -> None:
    """Every mismatch between data, tokenizer, model and config, before any training step."""
    from looplm.config import ConfigError
    from looplm.data.shards import ManifestError

    if tok.sha256() != data.tokenizer_sha256:
        raise ManifestError(f"tokenizer mismatch: {origin} has tokenizer sha256 {tok.sha256()[:16]}..., but "
                            f"{data.directory}/manifest.json records tokenizer_sha256 {data.tokenizer_sha256[:16]}...; "
                            f"build the data with this tokenizer or train a model on the data's tokenizer")
    if data.vocab_size > model_cfg.vocab_size:
        raise ConfigError(f"the data's vocabulary ({data.vocab_size} ids) exceeds ModelConfig.vocab_size="
                          f"{model_cfg.vocab_size} of {origin} (use --set vocab_size=N)")
    if cfg.seq_len > model_cfg.max_seq_len:
        raise ConfigError(f"PretrainConfig.seq_len={cfg.seq_len} exceeds the model context max_seq_len="
                          f"{model_cfg.max_seq_len} of {origin} (option --seq-len)")
    if cfg.batch_size % world:
        raise ConfigError(f"PretrainConfig.batch_size={cfg.batch_size} must be divisible by the world size {world} "
                          f"(option --batch-size)")
    if data.train_tokens <= cfg.seq_len:
        raise ManifestError(f"{data.directory}: {data.train_tokens} train tokens, too few for --seq-len {cfg.seq_len}")
    for dom, arr in data.val.items():
        if (len(arr) - 1) // cfg.seq_len < cfg.batch_size:
            raise ManifestError(f"{data.directory}: validation split {dom!r} has {len(arr)} tokens, fewer than one "
                                f"batch of {cfg.batch_size} windows of {cfg.seq_len} (lower --batch-size/--seq-len "
                                f"or build more --val-tokens)")


def val_batches(cfg: PretrainConfig, data: Any, d: Any) -> dict[str, list]:
    """Per domain: the first `eval_batches` sequential windows batches, this rank's rows, on device."""
    from itertools import islice

    from looplm.train import common as C

    out = {}
    for dom in data.val:
        batches = islice(data.iter_batches(cfg.batch_size, cfg.seq_len, split=dom), cfg.eval_batches)
        out[dom] = [C.to_device_batch(b[:, :-1], b[:, 1:], d.device) for b in (C.rank_rows(x, d) for x in batches)]
    return out


# ------------------------------------------------------------------------------------------ loop
def train(cfg: PretrainConfig) -> dict[str, Any]:
    """Run (or resume) pre-training; returns {"exit_code", "step", "loss", "checkpoint", "final", ...}."""
    from looplm.train import common as C
    from looplm.train.logger import check_backends

    check_backends(cfg.tensorboard, cfg.wandb)
    d = C.setup_distributed(cfg.device, cfg.threads, need_group=cfg.fsdp)
    try:
        return _train(cfg, d)
    finally:
        C.teardown_distributed(d)


def _train(cfg: PretrainConfig, d: Any) -> dict[str, Any]:
    import signal
    import time

    import torch

    from looplm.checkpoint import restore_rng_state
    from looplm.data.shards import PretrainData
    from looplm.train import common as C
    from looplm.train import rundir as R
    from looplm.train.logger import MetricsLogger, evals_to_json, truncate_metrics

    # ---- inputs, all checked before the first update
    data = PretrainData.open(cfg.data)
    raw, tok, state, origin = load_start(cfg, data)
    check_inputs(cfg, data, tok, raw.config, origin, d.world_size)
    mcfg, out = raw.config, Path(cfg.out)
    model, params, opt, start, bad = C.prepare_model(raw, cfg, d, state)
    peak = cfg.peak_flops or C.measure_peak_flops(d.device, cfg.bf16)
    token_bytes = torch.from_numpy(C.token_byte_lengths(tok, mcfg.vocab_size)).to(d.device)
    val = val_batches(cfg, data, d)
    depths = C.eval_depths(cfg.eval_depths, mcfg.recurrence, mcfg.max_steps)
    mean_steps = cfg.mean_steps or float(mcfg.recurrence)
    fixed = min(cfg.fixed_depth or mcfg.recurrence, mcfg.max_steps)
    tokens_per_update = cfg.batch_size * cfg.seq_len * cfg.grad_accum  # global; every target is scored
    meta = {"stage": "pretrain", "tokenizer_sha256": tok.sha256(), "data": str(cfg.data),
            "data_fingerprint": data_fingerprint(data), "origin": origin}
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        R.write_run_config(out, config_to_dict(cfg))
        if state is not None:
            truncate_metrics(out / R.METRICS, start)
    log = MetricsLogger(out, d.main, cfg.steps, start, config_to_dict(cfg), cfg.tensorboard, cfg.wandb,
                        cfg.progress, cfg.log_every, stage="pretrain")
    log.event(start, f"pretrain {'resumed from' if state else 'from'} {origin}: step {start}/{cfg.steps}, "
                     f"{sum(p.numel() for p in params):,} trained parameters, {d.world_size} rank(s) x {d.threads} "
                     f"thread(s) on {d.device}, {tokens_per_update} tokens/update, peak {peak / 1e9:.1f} GFLOP/s/rank")
    if state is not None:
        restore_rng_state(state["rng"])
    nan_steps = C.nan_test_steps()
    last_ckpt = origin if state is not None else None
    evals: dict[str, Any] = {}

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
            micro = []
            for m in range(cfg.grad_accum):
                rows = C.rank_rows(data.sample_batch(cfg.batch_size, cfg.seq_len, C.step_rng(cfg.seed, step, m)), d)
                micro.append(C.to_device_batch(rows[:, :-1], rows[:, 1:], d.device))  # [B/W, T] each
            local = C.accumulate(model, micro, n, k, tokens_per_update, d, cfg.bf16, poison=step in nan_steps)
            elapsed = time.perf_counter() - t_begin  # wall clock of the loop (evaluations and saves included)
            flags = [stop.signum is not None, budget is not None and elapsed >= budget]
            loss, gnorm, ok, (signalled, timed_out), (seconds,) = C.finish_update(
                model, opt, params, local, tokens_per_update, flags, cfg.grad_clip, d, [elapsed])
            bad = 0 if ok else bad + 1
            C.sync(d.device)
            dt = time.perf_counter() - t0
            step += 1
            flops = C.train_flops_per_token(mcfg, n, k, cfg.seq_len) * tokens_per_update
            log.train({"step": step, "loss": loss, "lr": lr, "grad_norm": gnorm, "depth": n, "bptt": k,
                       "tokens": step * tokens_per_update, "tokens_per_s": tokens_per_update / dt,
                       "mfu": flops / dt / (peak * d.world_size), "step_ms": 1e3 * dt, "skipped": not ok})
            if bad >= cfg.max_bad_steps:
                log.close()
                raise C.TrainingDiverged(
                    f"{bad} updates in a row had a non-finite loss or gradient (last: update {step}, loss {loss}, "
                    f"grad norm {gnorm}); none of them was applied. Last good checkpoint: "
                    f"{last_ckpt or 'none saved yet'}. Lower --lr, raise --warmup or check the data, then --resume.")
            done = step == cfg.steps or (timed_out and not signalled)
            if not signalled and (cfg.eval_every and step % cfg.eval_every == 0 or done):
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

