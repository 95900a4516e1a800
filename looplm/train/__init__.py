"""Training: one loop (`loop`: device and ranks, resume, schedule, non-finite guard, signals, time
budget, evaluation/checkpoint cadence, logs) and the stages it runs, each a module with its config,
command line and `Stage` (data and loss only): `pretrain` (LM pre-training with sampled recurrence
depth and truncated backprop), `sft` (chat SFT, loss on responses only), `grpo` (RL; its rollouts,
rewards and pass@k in `grpo_rollouts`).

Shared pieces: `loop_config` (the options every stage shares, `RESUME_FREE`, the command entry),
`args` (stage config dataclass <-> argparse, validation, `--config FILE`), `lm_stage` (what pre-training
and SFT share as stages), `common` (distributed setup, AdamW groups, warmup + cosine, depth sampler,
FLOPs/MFU, the update with its non-finite guard, evaluation), `rundir` (checkpoints of a run
directory, resume, signals), `logger` (stdout/tqdm, metrics.jsonl, TensorBoard/W&B), `recipe` (the
research recipe of `benchmarks/bench_learning.py`). Modules import torch lazily where the CLI needs
them to stay light.
"""
