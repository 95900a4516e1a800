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
Huginn sampler as pre-training). `SFTStage` is a stage of the shared loop (`looplm/train/loop.py`):
optimizer, schedule, checkpoints, resume, signals, NaN guard, logging, DDP/FSDP, bf16, compile and
`--config FILE` are those of `looplm pretrain`.

Simplification: padding, not packing (the model takes a key-padding mask but no block-diagonal
document mask, so packed rows would attend across examples).
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from looplm.train.args import need, need_str, opt_field
from looplm.train.lm_stage import LMBatch, LMStage
from looplm.train.loop_config import RESUME_FREE as LOOP_RESUME_FREE
from looplm.train.loop_config import LoopConfig, add_stage_parser, stage_main

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
    save_every: int = opt_field(250, "checkpoint every N updates (and at the end; 0 = only at the end)")

    def validate(self) -> None:
        super().validate()
        need_str(self, "data")
        need_str(self, "init")
        need_str(self, "val_data", optional=True)
        need(self, "deep_fraction", self.sample_depth or self.deep_fraction == 0,
             "needs --sample-depth (a fixed depth has no deep updates)")


RESUME_FREE = LOOP_RESUME_FREE | {"val_data"}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return add_stage_parser(
        subparsers, "sft", SFTConfig, ("data", "init", "out"), main,
        help="supervised fine-tuning on chat prompt/response pairs (loss on responses only)",
        description="Fine-tune a checkpoint on a JSONL file of {prompt, response, domain} rows in the chat "
                    "template, with the loss on response tokens only; same loop, checkpoints, resume and "
                    "logging as `looplm pretrain`.")


def main(args: argparse.Namespace | SFTConfig) -> int:
    """CLI entry (also callable with an SFTConfig): returns the exit code."""
    return stage_main(SFTConfig, args, train, "sft")


def train(cfg: SFTConfig) -> dict[str, Any]:
    """Run (or resume) SFT; returns {"exit_code", "step", "loss", "checkpoint", "final", "eval", "last"}."""
    from looplm.train.loop import run

    return run(SFTStage(cfg))


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


# ------------------------------------------------------------------------------------------ stage
class SFTStage(LMStage):
    """Encoded rows of the SFT source in seeded epoch order; the model from --init."""

    name = "sft"
    resume_free = RESUME_FREE

    def load(self) -> tuple[Any, Any, str]:
        from looplm.checkpoint import load_checkpoint
        from looplm.train import rundir as R

        ckpt = R.resolve_init(self.cfg.init)
        model, tok, _ = load_checkpoint(ckpt)
        return model, tok, str(ckpt)

    def setup(self, raw: Any, tok: Any, origin: str, d: Any) -> tuple[dict[str, Any], str]:
        from looplm.config import ConfigError
        from looplm.data.rowsets import source_fingerprint

        cfg, mcfg = self.cfg, raw.config
        if cfg.seq_len > mcfg.max_seq_len:
            raise ConfigError(f"SFTConfig.seq_len={cfg.seq_len} exceeds the model context max_seq_len="
                              f"{mcfg.max_seq_len} of {origin} (option --seq-len)")
        if cfg.batch_size % d.world_size:
            raise ConfigError(f"SFTConfig.batch_size={cfg.batch_size} must be divisible by the world size "
                              f"{d.world_size} (option --batch-size)")
        self.examples = encode_rows(cfg.data, tok, cfg.seq_len)
        self.val = val_batches(cfg, encode_rows(cfg.val_data, tok, cfg.seq_len), tok.pad_id, d) if cfg.val_data else {}
        self.pad_id = tok.pad_id
        self.prepare(raw, tok, d)
        meta = {"data": str(cfg.data), "data_fingerprint": source_fingerprint(cfg.data)}
        return meta, f"{len(self.examples)} examples"

    def batch(self, model: Any, raw: Any, step: int, d: Any) -> LMBatch:
        from looplm.train import common as C

        cfg = self.cfg
        n, k = self.depth(step)
        micro, n_targets, n_tokens = [], 0, 0
        for m in range(cfg.grad_accum):
            rows = batch_rows(len(self.examples), cfg.seed, step, m, cfg.grad_accum, cfg.batch_size)
            x, y = make_batch([self.examples[i] for i in rows], self.pad_id, cfg.seq_len)  # global [B, L]
            n_targets += int((y != IGNORE).sum())
            n_tokens += x.size
            micro.append(C.to_device_batch(C.rank_rows(x, d), C.rank_rows(y, d), d.device))
        seen = (step + 1) * cfg.batch_size * cfg.grad_accum
        return LMBatch(micro, n, k, targets=n_targets, tokens=n_tokens,
                       flops=self.train_flops(n, k, micro[0][0].shape[1], n_tokens),
                       numbers={"tokens": n_tokens, "response_tokens": n_targets, "examples": seen,
                                "epoch": seen / len(self.examples)})
