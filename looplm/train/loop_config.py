"""The options of the training loop (`looplm/train/loop.py`), in two dataclasses the stage configs
extend, and the command-line entry every stage shares.

- `RunConfig`: what every stage has (run directory, resume, optimizer and schedule, evaluation and
  checkpoint cadence, device and threads, time budget, non-finite guard, logging). `GRPOConfig`
  extends it.
- `LoopConfig(RunConfig)`: the language-modelling options of pre-training and SFT (batch geometry,
  recurrence depth sampling, truncated backprop, fixed-depth evaluation, compile, FSDP, MFU peak).
  `PretrainConfig` and `SFTConfig` extend it.

A stage config adds its data and model fields and restates only the fields whose default differs
(a field redeclared in a subclass keeps its place and just changes its default and help). `looplm
<stage> --help` lists a stage's own fields first (see `args.add_config_args`). `stage_main` is each
command's `main`: the config from the options (and `--config FILE`), the run, its exit code.
Torch-free, so `looplm --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Callable

from looplm.train.args import add_config_args, config_from_args, opt_field, validate_run, validate_stage

# Fields that may change between a run and its --resume (they do not change the numbers).
RESUME_FREE = frozenset({"out", "resume", "init", "data", "eval_every", "eval_batches", "eval_depths",
                         "save_every", "keep", "threads", "log_every", "peak_flops", "compile", "tensorboard",
                         "wandb", "progress", "max_bad_steps", "device", "max_minutes"})
EXIT_DIVERGED = 3  # exit code of a run stopped by `max_bad_steps` non-finite updates in a row
EXIT_CODES = "Exit codes: 0 done, 3 stopped on non-finite updates, 128+signal when stopped by a signal."


@dataclass
class RunConfig:
    out: str = opt_field("", "run directory: step checkpoints, final/, metrics.jsonl, run_config.json", metavar="DIR")
    resume: bool = opt_field(False, "continue from the newest checkpoint in --out (weights, optimizer, step, RNG)")
    steps: int = opt_field(1000, "optimizer updates in total")
    lr: float = opt_field(1e-3, "peak learning rate")
    min_lr_ratio: float = opt_field(0.1, "final learning rate as a fraction of --lr (cosine decay; 1 = constant)")
    warmup: int = opt_field(100, "linear warmup updates")
    weight_decay: float = opt_field(0.1, "AdamW weight decay on matrices (vectors get none)")
    beta1: float = opt_field(0.9, "AdamW beta1")
    beta2: float = opt_field(0.95, "AdamW beta2")
    grad_clip: float = opt_field(1.0, "clip the gradient 2-norm to this (0 = no clipping)")
    eval_every: int = opt_field(250, "evaluate every N updates (and at the end; 0 = only at the end)")
    save_every: int = opt_field(500, "checkpoint every N updates (and at the end; 0 = only at the end)")
    keep: int = opt_field(3, "keep the newest K step checkpoints")
    seed: int = opt_field(0, "seed of the data order, the depth sampler and (pre-training) the fresh model")
    bf16: bool = opt_field(False, "bfloat16 autocast (CPU and GPU); fp16 is never used")
    device: str = opt_field("auto", "cpu, cuda or auto")
    threads: int | None = opt_field(None, "CPU threads per rank (default or 0: OMP_NUM_THREADS, else cores / ranks)")
    max_minutes: float | None = opt_field(None, "training time budget in minutes (summed over resumes): the cosine "
                                                "schedule follows the budget when it runs ahead of the steps, and "
                                                "reaching it ends training as --steps would")
    max_bad_steps: int = opt_field(3, "stop after this many non-finite updates in a row (none is applied)")
    log_every: int = opt_field(1, "print a line every N updates (metrics.jsonl gets every update)")
    tensorboard: bool = opt_field(False, "also log to TensorBoard (DIR/tensorboard; needs the tensorboard package)")
    wandb: bool = opt_field(False, "also log to Weights & Biases (needs the wandb package)")
    progress: bool = opt_field(True, "show a tqdm progress bar when stdout is a terminal")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        validate_run(self)


@dataclass
class LoopConfig(RunConfig):
    batch_size: int = opt_field(16, "rows (sequences or examples) per micro-batch, summed over all ranks (divisible "
                                    "by the world size)")
    seq_len: int = opt_field(256, "tokens per training row (<= the model's max_seq_len)")
    grad_accum: int = opt_field(1, "micro-batches accumulated per update")
    sample_depth: bool = opt_field(True, "sample the recurrence depth per update (Huginn) instead of --fixed-depth")
    fixed_depth: int | None = opt_field(None, "recurrence depth when not sampling (default: the model's recurrence)")
    mean_steps: float | None = opt_field(None, "mean r̄ of the depth sampler's log-normal (default: the model's "
                                               "recurrence)")
    depth_sigma: float = opt_field(0.5, "sigma of the depth sampler's log-normal")
    min_depth: int = opt_field(1, "floor of the sampled depth: draws below it are raised to it (the model never "
                                  "answers after fewer steps, so it can rely on them)")
    bptt_steps: int = opt_field(8, "back-propagate through the last k = min(n, bptt_steps) recurrence steps")
    deep_fraction: float = opt_field(0.0, "share of updates with depth n ~ U[16, 32] (clipped to max_steps; needs "
                                          "sampled depth)")
    exit_share: float = opt_field(0.0, "AdaExit-aware training: this share of the positions of every update leaves "
                                       "the core after one step (frozen, as an early exit), so the coda learns "
                                       "contexts of mixed depth and one-step states learn to predict; 0 = off")
    eval_batches: int = opt_field(2, "validation batches per domain")
    eval_depths: tuple[int, ...] = opt_field((4, 8, 16), "fixed depths to evaluate at (those <= max_steps, plus the "
                                                         "model's recurrence)")
    compile: bool = opt_field(False, "torch.compile the transformer blocks (caches under ~/.cache/looplm/compile)")
    fsdp: bool = opt_field(False, "shard parameters, gradients and optimizer state with FSDP (multi-GPU; one unit)")
    peak_flops: float | None = opt_field(None, "peak FLOP/s per rank for MFU (default: measured with a matmul)")

    def validate(self) -> None:
        validate_stage(self)


def add_stage_parser(subparsers: argparse._SubParsersAction, stage: str, cls: type, required: tuple[str, ...],
                     main: Callable[[Any], int], **kw: Any) -> argparse.ArgumentParser:
    """The subcommand `stage`: an option per field of `cls` plus `--config FILE`; `kw` go to
    `add_parser` (help, description); the epilog gives the torchrun form and the exit codes."""
    p = subparsers.add_parser(stage, epilog=f"Multi-process: torchrun --nproc_per_node=N -m looplm {stage} ... (gloo "
                                            f"on CPU, NCCL on GPU). {EXIT_CODES}", **kw)
    add_config_args(p, cls, required=required, config_file=True)
    p.set_defaults(func=main)
    return p


def stage_main(cls: type, args: Any, train: Callable[[Any], dict], stage: str) -> int:
    """A stage command's `main`: `args` is a namespace from its parser (or already a `cls`); runs
    `train` and returns its exit code, `EXIT_DIVERGED` (with the reason on stderr) when too many
    updates in a row were non-finite."""
    from looplm.train.common import TrainingDiverged

    cfg = args if isinstance(args, cls) else config_from_args(cls, args, stage=stage)
    try:
        return train(cfg)["exit_code"]
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
