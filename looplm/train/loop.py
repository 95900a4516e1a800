"""The training loop of every stage (`looplm pretrain`, `looplm sft`, `looplm grpo`), top to bottom in
`run`; a stage (`Stage`: `pretrain.py`, `sft.py`, `grpo.py`) brings only its data and its loss.

One iteration of the loop is one *step* of the stage: the stage's batch (pre-training: token windows;
SFT: examples; GRPO: rollouts, scored and turned into advantages), then `stage.updates` optimizer
updates on it (1; GRPO: its `iterations`), each the stage's forward + backward, the all-reduce of
the loss and of the stop flags, gradient clipping, and AdamW unless the loss or the gradient norm is
non-finite. Around it, in order:

- ranks and device: under `torchrun` (`WORLD_SIZE` > 1) one process group (gloo on CPU, NCCL on GPU)
  and the model in DDP (or FSDP2, `--fsdp`, for the stages that offer it); a stage's rank takes its
  rows of every global batch, so W ranks compute what one process computes;
- weights: a fresh start (`stage.load()`), or with `--resume` the newest checkpoint of `--out` whose
  saved config differs from this one only in `stage.resume_free` (else `ResumeError` naming the
  fields) and whose data fingerprint is this run's;
- schedule: linear warmup, cosine down to `lr * min_lr_ratio`, which follows elapsed / budget under
  `--max-minutes` when that runs ahead of the steps;
- non-finite guard: an update with a NaN/inf loss or gradient norm is not applied; `max_bad_steps`
  of them in a row raise `TrainingDiverged` (exit code 3), naming the last good checkpoint;
- stops: SIGTERM/SIGINT -> a checkpoint after the current step and exit code 128 + signal (continue
  with `--resume`); reaching the time budget ends training as reaching `--steps` does;
- evaluation (`stage.evaluate`) every `eval_every` steps and at the end; checkpoints every
  `save_every` steps and at the end (the newest `keep`, plus `final/` at the end);
- logs (rank 0): `metrics.jsonl` (+ TensorBoard / W&B), a line every `log_every` steps, a tqdm bar.

bf16 autocast is applied by the stage around its forwards (never around a backward). Simplification:
one optimizer (AdamW, weight decay on matrices) and one schedule for every stage.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn

from looplm.checkpoint import capture_rng_state, load_checkpoint, load_train_state, restore_rng_state
from looplm.train import common as C
from looplm.train import rundir as R
from looplm.train.args import config_to_dict
from looplm.train.logger import MetricsLogger, check_backends, truncate_metrics


class Stage(Protocol):
    """What a training stage gives the loop."""

    name: str  # the run kind: log prefix, checkpoint meta "stage", run_config.json "stage"
    cfg: Any  # a `loop_config.RunConfig`
    resume_free: frozenset[str]  # config fields that may differ between a run and its --resume
    updates: int  # optimizer updates per step
    fsdp: bool  # shard the model with FSDP2 instead of DDP
    compile: bool  # torch.compile the transformer blocks

    def load(self) -> tuple[nn.Module, Any, str]:
        """A fresh start: (model, tokenizer, where they come from)."""

    def setup(self, raw: nn.Module, tok: Any, origin: str, d: C.Dist) -> tuple[dict[str, Any], str]:
        """Check the inputs against the model and prepare the data on `d.device`, before any update.
        Returns (this run's checkpoint meta, holding "data_fingerprint"; words for the start line)."""

    def batch(self, model: nn.Module, raw: nn.Module, step: int, d: C.Dist) -> Any:
        """This rank's data of step `step` (0-based)."""

    def backward(self, model: nn.Module, batch: Any, update: int, d: C.Dist, poison: bool
                 ) -> tuple[torch.Tensor, float]:
        """Forward + backward of update `update` of the step: (this rank's summed loss, float64 and
        detached; the global count it sums over), the gradients being d(global sum / count). With
        `poison` (test hook) the loss is NaN."""

    def record(self, batch: Any, seconds: float) -> dict[str, Any]:
        """The stage's numbers of the step for its train record (every rank calls it)."""

    def evaluate(self, model: nn.Module, raw: nn.Module, d: C.Dist) -> tuple[dict[str, float], str] | None:
        """(flat metrics, printed text) of an evaluation; None when there is nothing to evaluate."""

    def format_step(self, rec: dict[str, Any], total: int) -> str:
        """The printed line of a train record."""


def run(stage: Stage) -> dict[str, Any]:
    """Run (or resume) `stage`; returns {"exit_code", "step", "loss", "checkpoint", "final", "eval", "last"}
    (`last`: the last train record, with the evaluation of that step if there was one)."""
    check_backends(stage.cfg.tensorboard, stage.cfg.wandb)
    d = C.setup_distributed(stage.cfg.device, stage.cfg.threads or None, need_group=stage.fsdp)
    try:
        return _run(stage, d)
    finally:
        C.teardown_distributed(d)


def _run(stage: Stage, d: C.Dist) -> dict[str, Any]:
    cfg, out = stage.cfg, Path(stage.cfg.out)

    # ---- weights: a fresh start, or the newest checkpoint of --out
    state = saved_meta = None
    if cfg.resume:
        ckpt = R.newest_resumable(out)
        state = load_train_state(ckpt)
        diffs = R.config_differences(state["config"], config_to_dict(cfg), stage.resume_free)
        if diffs:
            raise R.ResumeError(f"--resume: {ckpt} was trained with a different config ({'; '.join(diffs)}); "
                                f"resume with the same options or start a new --out")
        raw, tok, saved_meta = load_checkpoint(ckpt)
        origin = str(ckpt)
    else:
        R.check_fresh_out(out)
        raw, tok, origin = stage.load()

    # ---- the stage's inputs, checked before the first update
    run_meta, about = stage.setup(raw, tok, origin, d)
    if saved_meta is not None:
        R.check_same_data(saved_meta, run_meta["data_fingerprint"], Path(origin))
    meta = {"stage": stage.name, "tokenizer_sha256": tok.sha256(), **run_meta, "origin": origin}

    # ---- the model on its device and wrapped for the ranks; AdamW, restored on resume
    C.freeze_untrained(raw)
    raw.to(d.device).train()
    if stage.compile:
        C.compile_blocks(raw, C.default_compile_cache())
    model = C.wrap_model(raw, d, stage.fsdp)
    params = [p for p in raw.parameters() if p.requires_grad]
    opt = C.build_optimizer(model if stage.fsdp else raw, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                            d.device)
    start, bad, seconds = 0, 0, 0.0  # seconds: training time so far (summed over resumes)
    if state is not None:
        C.load_optimizer_state(model, opt, state["optimizer"], stage.fsdp)
        start, bad, seconds = int(state["step"]), int(state["bad_steps"]), float(state.get("train_seconds", 0.0))

    # ---- run directory and logs
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        R.write_run_config(out, {"stage": stage.name, **config_to_dict(cfg)})
        if state is not None:
            truncate_metrics(out / R.METRICS, start)
    log = MetricsLogger(out, d.main, cfg.steps, start, config_to_dict(cfg), cfg.tensorboard, cfg.wandb,
                        cfg.progress, cfg.log_every, stage=stage.name, line=stage.format_step)
    log.event(start, f"{stage.name} {'resumed from' if state else 'from'} {origin}: step {start}/{cfg.steps}, "
                     f"{sum(p.numel() for p in params):,} trained parameters, {d.world_size} rank(s) x {d.threads} "
                     f"thread(s) on {d.device}" + (f", {about}" if about else ""))
    if state is not None:
        restore_rng_state(state["rng"])
    nan_steps = C.nan_test_steps()
    last_ckpt = origin if state is not None else None
    evals: dict[str, float] = {}
    last: dict[str, Any] = {}

    # ---- the loop: one iteration = one step of the stage
    step, loss, exit_code = start, float("nan"), 0
    budget = 60 * cfg.max_minutes if cfg.max_minutes is not None else None
    t_begin = time.perf_counter() - seconds
    with R.StopSignals() as stop:
        while step < cfg.steps:
            t0 = time.perf_counter()
            lr = C.lr_at(step, cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr_ratio, seconds / budget if budget else 0.0)
            C.set_lr(opt, lr)
            batch = stage.batch(model, raw, step, d)
            for update in range(stage.updates):
                local, count = stage.backward(model, batch, update, d, poison=step in nan_steps)
                elapsed = time.perf_counter() - t_begin  # wall clock of the loop (evaluations and saves included)
                flags = [stop.signum is not None, budget is not None and elapsed >= budget]
                loss, gnorm, ok, (signalled, timed_out), (seconds,) = C.finish_update(
                    model, opt, params, local, count, flags, cfg.grad_clip, d, [elapsed])
                bad = 0 if ok else bad + 1
                if bad >= cfg.max_bad_steps:
                    break
            C.sync(d.device)
            dt = time.perf_counter() - t0
            step += 1
            last = {"step": step, "loss": loss, "lr": lr, "grad_norm": gnorm, **stage.record(batch, dt),
                    "step_ms": 1e3 * dt, "skipped": not ok}
            log.train(last)
            if bad >= cfg.max_bad_steps:
                log.close()
                raise C.TrainingDiverged(
                    f"{bad} updates in a row had a non-finite loss or gradient (last: step {step}, loss {loss}, "
                    f"grad norm {gnorm}); none of them was applied. Last good checkpoint: "
                    f"{last_ckpt or 'none saved yet'}. Lower --lr, raise --warmup or check the data, then --resume.")
            done = step == cfg.steps or (timed_out and not signalled)
            if not signalled and (cfg.eval_every and step % cfg.eval_every == 0 or done):
                result = stage.evaluate(model, raw, d)
                if result is not None:
                    evals, text = result
                    log.eval(step, evals, text)
                    last = {**last, **evals}
            if signalled or done or (cfg.save_every and step % cfg.save_every == 0):
                saved = _save(stage, out, step, model, raw, opt, tok, {**meta, "eval": evals}, bad, done, d, seconds)
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
            "final": str(out / R.FINAL) if exit_code == 0 and step > start else None, "eval": evals, "last": last}


def _save(stage: Stage, out: Path, step: int, model: nn.Module, raw: nn.Module, opt: torch.optim.Optimizer, tok: Any,
          meta: dict, bad: int, final: bool, d: C.Dist, train_seconds: float) -> Path | None:
    """Checkpoint `step` (weights, optimizer, RNG, config, training seconds so far) on rank 0, keep the
    newest `keep`; with `final` also write `out/final`. Every rank calls it (FSDP gathers). Returns the
    path (None on other ranks)."""
    full, osd = C.full_state_for_save(model, raw, opt, stage.fsdp)
    if not d.main:
        return None
    meta = {**meta, "step": step}
    train_state = {"step": step, "bad_steps": bad, "config": config_to_dict(stage.cfg), "optimizer": osd,
                   "rng": capture_rng_state(), "train_seconds": train_seconds}
    path = R.save_step(out, step, full, tok, meta, train_state, stage.cfg.keep)
    if final:
        R.save_final(out, full, tok, meta)
    return path
