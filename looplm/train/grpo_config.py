"""`looplm grpo`: the GRPO stage's config (validated, torch-free) and its command line.

The loop itself is `looplm.train.grpo.train`; this module stays light so `looplm --help` does not
import torch.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from looplm.config import ConfigError
from looplm.train.args import add_config_args, config_from_args

NUMERIC_TASKS = ("arith", "word_problems", "gsm8k", "orca_math")
SCORED_TASKS = ("dfs_verbal", "clrs_dfs")
LOSS_TYPES, SCALES, REWARDS = ("grpo", "dr_grpo", "dapo"), ("group", "batch", "none"), ("outcome", "process")


@dataclass
class GRPOConfig:
    init: str = field(default="", metadata={"help": 'checkpoint (or run directory) to start from; also the frozen reference'})
    out: str = field(default="", metadata={"help": 'run directory (step checkpoints, final/, metrics.jsonl)'})
    prompts: str = field(default="", metadata={"help": '{prompt, answer, task} rows (e.g. from `looplm data rl`; or TRL {prompt, completion, task}): a JSONL/parquet/... file, a directory or hub:NAME'})
    task: str = field(default="", metadata={"help": "or: draw prompts from this generated task's train split (arith, word_problems, dfs_verbal, clrs_dfs)"})
    n_prompts: int = field(default=2000, metadata={"help": 'number of prompts generated with --task'})
    eval_prompts: str = field(default="", metadata={"help": "held-out JSONL for pass@k (default with --task: the task's eval split)"})
    eval_n: int = field(default=32, metadata={"help": 'held-out prompts evaluated'})
    eval_every: int = field(default=25, metadata={"help": 'evaluate pass@1 / pass@k every N steps (0 = never)'})
    pass_k: int = field(default=4, metadata={"help": 'k of the sampled pass@k'})
    reward: str = field(default="outcome", metadata={"help": 'outcome (1/0 on the final answer) or process (programmatic step reward)'})
    reward_mode: str = field(default="strict", metadata={"help": "process reward mode: strict (hack-resistant) or report (the report's arithmetic)"})
    group_size: int = field(default=4, metadata={"help": 'completions per prompt G (>= 2)'})
    prompts_per_step: int = field(default=2, metadata={"help": 'prompts per step'})
    max_new_tokens: int = field(default=128, metadata={"help": 'completion length limit'})
    lr: float = field(default=1e-6, metadata={"help": 'learning rate (AdamW)'})
    warmup: int = field(default=0, metadata={"help": 'linear warm-up steps'})
    weight_decay: float = field(default=0.0, metadata={"help": 'AdamW weight decay'})
    grad_clip: float = field(default=1.0, metadata={"help": 'gradient-norm clip'})
    beta: float = field(default=0.04, metadata={"help": 'KL coefficient (k3 estimator against the frozen reference); 0 = no reference'})
    steps: int = field(default=250, metadata={"help": 'optimizer steps'})
    loss_type: str = field(default="grpo", metadata={"help": 'grpo, dr_grpo or dapo aggregation'})
    scale: str = field(default="group", metadata={"help": 'advantage scaling: group (std of the group), batch, none (mean-centring only)'})
    eps_low: float = field(default=0.2, metadata={"help": 'PPO clip epsilon below 1'})
    eps_high: float = field(default=0.2, metadata={"help": "PPO clip epsilon above 1 (DAPO's clip-higher when > eps_low)"})
    iterations: int = field(default=1, metadata={"help": 'policy updates per rollout batch (mu)'})
    temperature: float = field(default=1.0, metadata={"help": 'sampling temperature, also applied inside every log-prob'})
    top_k: int = field(default=0, metadata={"help": 'top-k for rollouts (0 = off)'})
    top_p: float = field(default=1.0, metadata={"help": 'top-p for rollouts (1 = off)'})
    mask_truncated: bool = field(default=False, metadata={"help": 'give no loss to completions that hit max_new_tokens without EOS'})
    dynamic_sampling: bool = field(default=False, metadata={"help": 'replace groups whose rewards are all equal with fresh prompts (DAPO)'})
    max_resample: int = field(default=4, metadata={"help": 'extra prompt draws per step for dynamic sampling'})
    recurrence: int = field(default=0, metadata={"help": "recurrence steps for rollouts and loss (0 = the model's R)"})
    compile_rollouts: bool = field(default=False, metadata={"help": "decode rollouts with the torch.compile'd step (looplm/compiled_decode.py): same tokens, about 1.7x faster at batch 8 after a one-time compile; needs a C++ compiler"})
    seed: int = field(default=0, metadata={"help": 'seed of prompt draws and sampling'})
    resume: bool = field(default=False, metadata={"help": 'continue the run in --out from its newest checkpoint'})
    save_every: int = field(default=50, metadata={"help": 'checkpoint every N steps (0 = only at the end)'})
    keep: int = field(default=2, metadata={"help": 'step checkpoints kept'})
    threads: int = field(default=0, metadata={"help": 'torch CPU threads (0 = default)'})
    log_every: int = field(default=1, metadata={"help": 'print a log line every N steps (JSONL gets every step)'})

    def validate(self) -> None:
        def need(name: str, ok: bool, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"GRPOConfig.{name}={getattr(self, name)!r} is invalid: {allowed}")

        need("init", bool(self.init), "a checkpoint directory is required (--init)")
        need("out", bool(self.out), "an output directory is required (--out)")
        need("prompts", bool(self.prompts) != bool(self.task), "give exactly one of --prompts FILE or --task NAME")
        need("reward", self.reward in REWARDS, f"allowed: {', '.join(REWARDS)}")
        need("reward_mode", self.reward_mode in ("strict", "report"), "allowed: strict, report")
        need("group_size", self.group_size >= 2, "GRPO needs at least 2 completions per prompt (>= 2)")
        need("loss_type", self.loss_type in LOSS_TYPES, f"allowed: {', '.join(LOSS_TYPES)}")
        need("scale", self.scale in SCALES, f"allowed: {', '.join(SCALES)}")
        for name in ("prompts_per_step", "max_new_tokens", "steps", "iterations", "keep", "n_prompts", "pass_k",
                     "log_every"):
            need(name, getattr(self, name) >= 1, "must be >= 1")
        for name in ("eval_every", "save_every", "warmup", "recurrence", "max_resample", "eval_n", "threads", "top_k"):
            need(name, getattr(self, name) >= 0, "must be >= 0")
        need("lr", 0 < self.lr < 1, "must be in (0, 1)")
        need("beta", self.beta >= 0, "must be >= 0")
        need("eps_low", 0 <= self.eps_low < 1, "must be in [0, 1)")
        need("eps_high", self.eps_high >= 0, "must be >= 0")
        need("temperature", self.temperature > 0, "must be > 0 (rollouts are sampled)")
        need("top_p", 0 < self.top_p <= 1, "must be in (0, 1]")
        need("grad_clip", self.grad_clip > 0, "must be > 0")
        need("weight_decay", self.weight_decay >= 0, "must be >= 0")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("grpo", help="GRPO with an outcome or process reward (from an SFT checkpoint)",
                              description="GRPO (DeepSeekMath/TRL objective) with the outcome or the programmatic "
                                          "process reward; see looplm/train/grpo.py for the loop.")
    add_config_args(p, GRPOConfig)
    p.set_defaults(func=main)
    return p


def main(args) -> int:
    from looplm.train.grpo import train

    train(args if isinstance(args, GRPOConfig) else config_from_args(GRPOConfig, args))
    return 0
