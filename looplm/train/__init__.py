"""Training stages, one explicit loop each: `pretrain` (LM pre-training with sampled recurrence
depth and truncated backprop), `sft` (chat SFT, loss on responses only), `grpo` (RL).

Shared pieces: `args` (stage config dataclass <-> argparse, validation), `common` (distributed
setup, AdamW groups, warmup + cosine, depth sampler, FLOPs/MFU, the update with its non-finite
guard, evaluation), `rundir` (checkpoints of a run directory, resume, signals), `logger`
(stdout/tqdm, metrics.jsonl, TensorBoard/W&B). Modules import torch lazily where the CLI needs
them to stay light.
"""
