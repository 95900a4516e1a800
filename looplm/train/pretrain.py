"""`looplm pretrain`: language-model pre-training of a RecursiveCausalLM on a token-shard directory,
with sampled recurrence depth and truncated backprop through the core.

The stage (`PretrainStage`) of the shared loop (`looplm/train/loop.py`, which does the optimizer,
schedule, resume, guard, signals, evaluation/checkpoint cadence and logs): per update, draw the
depth n (Huginn sampler, keyed by step) and k = min(n, bptt_steps); for each of `grad_accum`
micro-batches draw random windows of seq_len + 1 tokens (generator keyed by seed, step and
micro-batch; rank r takes its rows of the global batch), forward n steps with gradients through
the last k, backward (`looplm/train/lm_stage.py`). `--windows documents` starts every window at a
document boundary; `--loss-on answers` scores only the answers of question + answer documents (and all
of plain text), by the data's loss mask; the loss is the mean over the scored targets. Evaluation:
loss and bits per byte per validation domain at fixed depths. SIGTERM/SIGINT save and exit with 128 + signal number;
`max_bad_steps` non-finite updates in a row stop with exit code 3.

Sources of the weights: a fresh model from `--preset` (+ `--set` overrides, seeded by `--seed`), a
checkpoint (`--init`, fresh optimizer at step 0), or `--resume` (newest checkpoint in `--out`:
weights, optimizer, step, RNG; the config must match except for the fields in RESUME_FREE, and the
train shards must be the same). The tokenizer is the data directory's (or the checkpoint's, which
must then equal the data's by sha256). `--max-minutes` is a training-time budget (wall clock of
the loop, summed over resumes): the cosine follows elapsed / budget when that runs ahead of
step / steps, and reaching the budget ends training as reaching `--steps` does (final evaluation,
checkpoint and `final/`). `--config RUN/run_config.json` replays a run's options (those given
on the command line win).

Validation follows the same choices: with `--windows documents` every validation document is scored
once in its own window; with `--loss-on answers` only its answer counts.

Simplification: the data stream is random windows (with replacement) over the train tokens, not
epochs; "tokens seen" is updates x batch_size x seq_len x grad_accum.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from looplm.train.args import need, need_choice, need_str, opt_field
from looplm.train.lm_stage import LMBatch, LMStage
from looplm.train.loop_config import RESUME_FREE, LoopConfig, add_stage_parser, stage_main


LOSS_ON = ("answers", "all")  # the default first: it taught CLRS-DFS 4.6x better (benchmarks/LEARNING_LOG.md)
WINDOWS = ("documents", "random")


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
    loss_on: str = opt_field("answers", "which targets are scored: answers (the answer of each question + answer "
                                        "document and all plain text, by the data's loss mask) or all tokens",
                             choices=LOSS_ON)
    windows: str = opt_field("documents", "where training windows start: at document boundaries (no scored answer "
                                          "loses its question) or at random tokens", choices=WINDOWS)

    def validate(self) -> None:
        super().validate()
        need_str(self, "data")
        need_choice(self, "loss_on", LOSS_ON)
        need_choice(self, "windows", WINDOWS)
        need(self, "preset", not (self.init and self.preset), "give --preset or --init, not both "
             "(with --init the model comes from the checkpoint)")
        need(self, "model_overrides", not (self.init and self.model_overrides), "--set cannot change a model "
             "loaded with --init")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return add_stage_parser(
        subparsers, "pretrain", PretrainConfig, ("data", "out"), main,
        help="pre-train a model on a token-shard directory (sampled depth, truncated backprop)",
        description=__doc__.split("\n\n")[1].replace("\n", " "))


def main(args: argparse.Namespace | PretrainConfig) -> int:
    """CLI entry (also callable with a PretrainConfig): returns the exit code."""
    return stage_main(PretrainConfig, args, train, "pretrain")


def train(cfg: PretrainConfig) -> dict[str, Any]:
    """Run (or resume) pre-training; returns {"exit_code", "step", "loss", "checkpoint", "final", ...}."""
    from looplm.train.loop import run

    return run(PretrainStage(cfg))


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
    if cfg.loss_on == "answers" and not data.has_mask:
        raise ManifestError(f"{data.directory}: --loss-on answers needs the data's loss mask, and this build has "
                            f"none (manifest without loss_mask); rebuild it with `looplm data pretrain-mix` or "
                            f"train with --loss-on all")
    if data.train_tokens <= cfg.seq_len:
        raise ManifestError(f"{data.directory}: {data.train_tokens} train tokens, too few for --seq-len {cfg.seq_len}")
    for dom, arr in data.val.items():
        if (len(arr) - 1) // cfg.seq_len < cfg.batch_size:
            raise ManifestError(f"{data.directory}: validation split {dom!r} has {len(arr)} tokens, fewer than one "
                                f"batch of {cfg.batch_size} windows of {cfg.seq_len} (lower --batch-size/--seq-len "
                                f"or build more --val-tokens)")


def scored_targets(w: Any, loss_on: str) -> tuple[Any, Any]:
    """Inputs [B, T] and targets [B, T] (IGNORE where not scored) of `Windows` of T + 1 tokens."""
    import numpy as np

    from looplm.train.common import IGNORE

    keep = w.valid[:, 1:] & ((w.mask[:, 1:] > 0) if loss_on == "answers" else True)
    return w.tokens[:, :-1], np.where(keep, w.tokens[:, 1:], IGNORE)


def scored_share(cfg: PretrainConfig, data: Any, probe: int = 256) -> float:
    """The share of targets scored in `probe` training windows (seeded apart from training); an error
    when none is, e.g. when --seq-len is too short to reach any answer."""
    from looplm.config import ConfigError
    from looplm.train.common import IGNORE

    w = data.sample_windows(probe, cfg.seq_len, [cfg.seed, 2**31 - 1], windows=cfg.windows)
    share = float((scored_targets(w, cfg.loss_on)[1] != IGNORE).mean())
    if share == 0:
        raise ConfigError(f"PretrainConfig.seq_len={cfg.seq_len}: no target is scored in {probe} training windows "
                          f"(--loss-on {cfg.loss_on}, --windows {cfg.windows}); the answers start later in their "
                          f"documents, so raise --seq-len")
    return share


def val_batches(cfg: PretrainConfig, data: Any, d: Any) -> dict[str, list]:
    """Per domain: the first `eval_batches` batches of sequential windows (or of documents, one per
    window), this rank's rows, scored as training is, on device."""
    from itertools import islice

    from looplm.train import common as C

    out = {}
    for dom in data.val:
        it = data.iter_documents if cfg.windows == "documents" else data.iter_windows
        out[dom] = [C.to_device_batch(C.rank_rows(x, d), C.rank_rows(y, d), d.device)
                    for x, y in (scored_targets(w, cfg.loss_on)
                                 for w in islice(it(cfg.batch_size, cfg.seq_len, split=dom), cfg.eval_batches))]
    return out


# ------------------------------------------------------------------------------------------ stage
class PretrainStage(LMStage):
    """Random token windows of the data directory; the model from --preset (+ --set) or --init."""

    name = "pretrain"
    resume_free = RESUME_FREE

    def __init__(self, cfg: PretrainConfig):
        super().__init__(cfg)
        self._data: Any = None

    @property
    def data(self) -> Any:
        from looplm.data.shards import PretrainData

        if self._data is None:
            self._data = PretrainData.open(self.cfg.data)
        return self._data

    def load(self) -> tuple[Any, Any, str]:
        import torch

        from looplm.checkpoint import load_checkpoint
        from looplm.model import RecursiveCausalLM
        from looplm.tokenizer import Tokenizer
        from looplm.train import rundir as R

        cfg, data = self.cfg, self.data
        if cfg.init:
            ckpt = R.resolve_init(cfg.init)
            model, tok, _ = load_checkpoint(ckpt)
            return model, tok, str(ckpt)
        tok = Tokenizer.load(data.directory)
        torch.manual_seed(cfg.seed)
        return RecursiveCausalLM(model_config(cfg)), tok, f"preset {cfg.preset or 'tiny'}"

    def setup(self, raw: Any, tok: Any, origin: str, d: Any) -> tuple[dict[str, Any], str]:
        cfg = self.cfg
        check_inputs(cfg, self.data, tok, raw.config, origin, d.world_size)
        self.prepare(raw, tok, d)
        self.val = val_batches(cfg, self.data, d)
        self.tokens_per_update = cfg.batch_size * cfg.seq_len * cfg.grad_accum  # global
        share = scored_share(cfg, self.data)
        meta = {"data": str(cfg.data), "data_fingerprint": data_fingerprint(self.data), "scored_share": share}
        return meta, (f"{self.tokens_per_update} tokens/update ({share:.0%} of targets scored), "
                      f"peak {self.peak / 1e9:.1f} GFLOP/s/rank")

    def batch(self, model: Any, raw: Any, step: int, d: Any) -> LMBatch:
        from looplm.train import common as C

        cfg, tpu = self.cfg, self.tokens_per_update
        n, k = self.depth(step)
        micro, scored = [], 0
        for m in range(cfg.grad_accum):  # every rank draws the global batch and keeps its rows
            w = self.data.sample_windows(cfg.batch_size, cfg.seq_len, C.step_rng(cfg.seed, step, m),
                                         windows=cfg.windows)
            x, y = scored_targets(w, cfg.loss_on)  # [B, T] each
            scored += int((y != C.IGNORE).sum())
            micro.append(C.to_device_batch(C.rank_rows(x, d), C.rank_rows(y, d), d.device))  # [B/W, T] each
        return LMBatch(micro, n, k, targets=max(scored, 1), tokens=tpu, flops=self.train_flops(n, k, cfg.seq_len, tpu),
                       numbers={"tokens": (step + 1) * tpu, "scored": scored})
