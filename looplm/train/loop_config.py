"""The options every training loop shares: optimizer, schedule, recurrence depth, evaluation cadence,
checkpoints, runtime and logging, in one dataclass that the stage configs extend.

`PretrainConfig` and `SFTConfig` subclass `LoopConfig`: each adds its data and model fields and
restates only the fields whose default differs between the stages (a field redeclared in a subclass
keeps its place and just changes its default and help). `looplm <stage> --help` lists a stage's own
fields first (see `args.add_config_args`). Torch-free, so `looplm --help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from looplm.train.args import opt_field, validate_stage

# Fields that may change between a run and its --resume (they do not change the numbers).
RESUME_FREE = frozenset({"out", "resume", "init", "data", "eval_every", "eval_batches", "eval_depths",
                         "save_every", "keep", "threads", "log_every", "peak_flops", "compile", "tensorboard",
                         "wandb", "progress", "max_bad_steps", "device", "max_minutes"})


@dataclass
class LoopConfig:
    out: str = opt_field("", "run directory: step checkpoints, final/, metrics.jsonl", metavar="DIR")
    resume: bool = opt_field(False, "continue from the newest checkpoint in --out (weights, optimizer, step, RNG)")
    steps: int = opt_field(1000, "optimizer updates in total")
    batch_size: int = opt_field(16, "rows (sequences or examples) per micro-batch, summed over all ranks (divisible "
                                    "by the world size)")
    seq_len: int = opt_field(256, "tokens per training row (<= the model's max_seq_len)")
    grad_accum: int = opt_field(1, "micro-batches accumulated per update")
    lr: float = opt_field(1e-3, "peak learning rate")
    min_lr_ratio: float = opt_field(0.1, "final learning rate as a fraction of --lr (cosine decay)")
    warmup: int = opt_field(100, "linear warmup updates")
    weight_decay: float = opt_field(0.1, "AdamW weight decay on matrices (vectors get none)")
    beta1: float = opt_field(0.9, "AdamW beta1")
    beta2: float = opt_field(0.95, "AdamW beta2")
    grad_clip: float = opt_field(1.0, "clip the gradient 2-norm to this (0 = no clipping)")
    sample_depth: bool = opt_field(True, "sample the recurrence depth per update (Huginn) instead of --fixed-depth")
    fixed_depth: int | None = opt_field(None, "recurrence depth when not sampling (default: the model's recurrence)")
    mean_steps: float | None = opt_field(None, "mean r̄ of the depth sampler's log-normal (default: the model's "
                                               "recurrence)")
    depth_sigma: float = opt_field(0.5, "sigma of the depth sampler's log-normal")
    bptt_steps: int = opt_field(8, "back-propagate through the last k = min(n, bptt_steps) recurrence steps")
    deep_fraction: float = opt_field(0.0, "share of updates with depth n ~ U[16, 32] (clipped to max_steps; needs "
                                          "sampled depth)")
    eval_every: int = opt_field(250, "evaluate every N updates (and at the end; 0 = only at the end)")
    eval_batches: int = opt_field(2, "validation batches per domain")
    eval_depths: tuple[int, ...] = opt_field((4, 8, 16), "fixed depths to evaluate at (those <= max_steps, plus the "
                                                         "model's recurrence)")
    save_every: int = opt_field(500, "checkpoint every N updates (and at the end)")
    keep: int = opt_field(3, "keep the newest K step checkpoints")
    seed: int = opt_field(0, "seed of the data order, the depth sampler and (pre-training) the fresh model")
    bf16: bool = opt_field(False, "bfloat16 autocast (CPU and GPU); fp16 is never used")
    compile: bool = opt_field(False, "torch.compile the transformer blocks (caches under ~/.cache/looplm/compile)")
    fsdp: bool = opt_field(False, "shard parameters, gradients and optimizer state with FSDP (multi-GPU; one unit)")
    device: str = opt_field("auto", "cpu, cuda or auto")
    threads: int | None = opt_field(None, "CPU threads per rank (default: OMP_NUM_THREADS, else cores / ranks)")
    max_minutes: float | None = opt_field(None, "training time budget in minutes (summed over resumes): the cosine "
                                                "schedule follows the budget when it runs ahead of the steps, and "
                                                "reaching it ends training as --steps would")
    max_bad_steps: int = opt_field(3, "stop after this many non-finite updates in a row (none is applied)")
    log_every: int = opt_field(1, "print a line every N updates (metrics.jsonl gets every update)")
    peak_flops: float | None = opt_field(None, "peak FLOP/s per rank for MFU (default: measured with a matmul)")
    tensorboard: bool = opt_field(False, "also log to TensorBoard (DIR/tensorboard; needs the tensorboard package)")
    wandb: bool = opt_field(False, "also log to Weights & Biases (needs the wandb package)")
    progress: bool = opt_field(True, "show a tqdm progress bar when stdout is a terminal")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        validate_stage(self)
