"""What pre-training and SFT share as stages of the training loop (`looplm/train/loop.py`): the
recurrence depth of each update, the forward/backward over the micro-batches, the throughput numbers
of a step and evaluation at fixed depths. `PretrainStage` and `SFTStage` add their data (`load`,
`setup`, `batch`).

Per update: n = the sampled depth (Huginn, keyed by seed and step) or the fixed one, k = min(n,
bptt_steps); every micro-batch runs n steps with gradients through the last k (`common.accumulate`);
the loss is the summed cross-entropy of the update's scored targets over all ranks divided by their
number. Step records add `depth`, `bptt`, `tokens_per_s` and `mfu` (training FLOPs over the step
time and the measured (or `--peak-flops`) peak of all ranks). Torch is imported inside the methods
so the stage modules stay light for `looplm --help`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class LMBatch:
    micro: list  # [(inputs, targets)] on the device, this rank's rows of each micro-batch
    n: int  # recurrence steps of the update
    k: int  # steps back-propagated
    targets: int  # scored targets of the update over all ranks (the loss normaliser)
    tokens: int  # tokens processed by the update over all ranks
    flops: float  # training FLOPs of the update over all ranks
    numbers: dict[str, Any]  # the stage's own numbers for the train record


class LMStage:
    """The shared half of `PretrainStage` / `SFTStage`; `prepare` must run in their `setup`."""

    name: str  # set by the stage
    updates = 1

    def __init__(self, cfg: Any):
        self.cfg, self.fsdp, self.compile = cfg, cfg.fsdp, cfg.compile
        self.val: dict[str, list] = {}

    def prepare(self, raw: Any, tok: Any, d: Any) -> None:
        """Byte lengths of the tokens (bits per byte), evaluation depths, the MFU peak."""
        import torch

        from looplm.train import common as C

        self.mcfg, self.world = raw.config, d.world_size
        self.token_bytes = torch.from_numpy(C.token_byte_lengths(tok, raw.config.vocab_size)).to(d.device)
        self.depths = C.eval_depths(self.cfg.eval_depths, raw.config.recurrence, raw.config.max_steps)
        self.peak = self.cfg.peak_flops or C.measure_peak_flops(d.device, self.cfg.bf16)

    def depth(self, step: int) -> tuple[int, int]:
        from looplm.train.common import lm_depth

        return lm_depth(self.cfg, self.mcfg, step)

    def train_flops(self, n: int, k: int, seq_len: int, tokens: int) -> float:
        from looplm.train.common import train_flops_per_token

        return train_flops_per_token(self.mcfg, n, k, seq_len) * tokens

    def backward(self, model: Any, batch: LMBatch, update: int, d: Any, poison: bool) -> tuple[Any, float]:
        from looplm.train.common import accumulate, forced_exits

        exits = [forced_exits(self.cfg.seed, update, i, tuple(x.shape), self.cfg.exit_share, d)
                 for i, (x, _) in enumerate(batch.micro)]
        loss = accumulate(model, batch.micro, batch.n, batch.k, batch.targets, d, self.cfg.bf16, poison, exits)
        return loss, batch.targets

    def record(self, batch: LMBatch, seconds: float) -> dict[str, Any]:
        return {"depth": batch.n, "bptt": batch.k, **batch.numbers, "tokens_per_s": batch.tokens / seconds,
                "mfu": batch.flops / seconds / (self.peak * self.world)}

    def evaluate(self, model: Any, raw: Any, d: Any) -> tuple[dict[str, float], str] | None:
        """Loss and bits per byte per validation domain at the fixed depths (None without validation data)."""
        from looplm.train.common import evaluate
        from looplm.train.logger import lm_eval_metrics

        if not self.val:
            return None
        return lm_eval_metrics(evaluate(model, raw, self.val, self.depths, self.token_bytes, self.cfg.bf16, d))

    def format_step(self, rec: dict[str, Any], total: int) -> str:
        from looplm.train.logger import format_step

        return format_step(rec, total)
