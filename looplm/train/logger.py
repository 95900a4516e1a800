"""Training logs: one line per step on stdout (and a tqdm bar on a terminal), `metrics.jsonl`, and
TensorBoard / W&B when installed and asked for.

Records (one JSON object per line in `DIR/metrics.jsonl`):
- `{"type": "train", "step", "loss", "lr", "grad_norm", ..., "step_ms", "skipped", "time"}`; `step`
  counts steps done (1-based), `skipped` marks a non-finite update that was not applied; the stage
  adds its own numbers: pre-training and SFT `depth` (the sampled n), `bptt` (the k steps
  back-propagated), `tokens`, `tokens_per_s`, `mfu`; GRPO its rewards, advantages, KL, clipping and
  timings (`looplm/train/grpo.py`). Non-finite numbers are written as null (strict JSON);
- `{"type": "eval", "step", ...}`: pre-training and SFT `val/<domain>/loss@<n>`,
  `val/<domain>/bpb@<n>` (loss in nats per scored token; bits per byte of the decoded targets) at
  each fixed depth n; GRPO `eval/pass@1`, `eval/pass@<k>`, `eval/n` on held-out prompts;
- `{"type": "event", "step", "message"}` for starts, resumes, saves and stops.
On resume the file is cut back to the checkpoint's step, so it reads as one uninterrupted run.
Only rank 0 logs. Simplification: TensorBoard/W&B get the same flat scalars as the JSONL.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from looplm.config import ConfigError


def check_backends(tensorboard: bool, wandb: bool) -> None:
    """Fail before training when a requested backend is not installed."""
    if tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError as e:
            raise ConfigError(f"--tensorboard needs the tensorboard package ({e}); `pip install tensorboard` "
                              "or drop --tensorboard") from e
    if wandb:
        try:
            import wandb as _wandb  # noqa: F401
        except ImportError as e:
            raise ConfigError(f"--wandb needs the wandb package ({e}); `pip install wandb` or drop --wandb") from e


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records after `step` (written by a run that was killed after its last checkpoint)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if rec.get("step", 0) <= step:
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    os.replace(tmp, path)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics file (a malformed line is an error naming file:line)."""
    out = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not a JSON record ({e.msg})") from e
    return out


def _fmt_rate(x: float) -> str:
    return f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def format_step(rec: dict[str, Any], total: int) -> str:
    """The line of a pre-training / SFT step record."""
    width = len(str(total))
    mfu = rec.get("mfu")
    parts = [f"step {rec['step']:>{width}}/{total}", f"loss {rec['loss']:.4f}", f"lr {rec['lr']:.2e}",
             f"{_fmt_rate(rec['tokens_per_s'])} tok/s", f"MFU {100 * mfu:.2f}%" if mfu is not None else "MFU -",
             f"depth {rec['depth']} (bptt {rec['bptt']})", f"{rec['step_ms']:.0f} ms"]
    if rec.get("skipped"):
        parts.append("SKIPPED (non-finite)")
    return " | ".join(parts)


class MetricsLogger:
    """Writes records on rank 0; every method is a no-op on other ranks."""

    def __init__(self, out: Path, enabled: bool, total_steps: int, start_step: int, run_config: dict[str, Any],
                 tensorboard: bool = False, wandb: bool = False, progress: bool = True, log_every: int = 1,
                 stage: str = "train", line: Callable[[dict[str, Any], int], str] = format_step):
        self.enabled, self.total, self.log_every, self.line = enabled, total_steps, log_every, line
        self._file = self._tb = self._wandb = self._bar = None
        if not enabled:
            return
        self._file = (Path(out) / "metrics.jsonl").open("a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(out) / "tensorboard"))
        if wandb:
            import wandb as _wandb

            self._wandb = _wandb.init(project=os.environ.get("WANDB_PROJECT", "looplm"), dir=str(out),
                                      config=run_config, name=f"{stage}-{Path(out).name}", resume="allow")
        if progress and sys.stdout.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc=stage, dynamic_ncols=True, leave=False)

    def _write(self, rec: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}
        self._file.write(json.dumps(clean) + "\n")  # NaN/inf are written as null (strict JSON)
        self._file.flush()
        scalars = {k: v for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and k not in ("step", "time") and math.isfinite(v)}
        if self._tb is not None:
            prefix = "" if rec["type"] == "eval" else f"{rec['type']}/"
            for k, v in scalars.items():
                self._tb.add_scalar(prefix + k, v, rec["step"])
        if self._wandb is not None:
            self._wandb.log(scalars, step=rec["step"])

    def print(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def train(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        rec = {"type": "train", **rec, "time": time.time()}
        self._write(rec)
        if self._bar is not None:
            self._bar.update(1)
            depth = {"n": rec["depth"]} if "depth" in rec else {}
            self._bar.set_postfix(loss=f"{rec['loss']:.4f}", **depth, refresh=False)
        if rec["step"] % self.log_every == 0 or rec.get("skipped") or rec["step"] == self.total:
            self.print(self.line(rec, self.total))

    def eval(self, step: int, metrics: dict[str, float], text: str) -> None:
        """An evaluation's flat `metrics` (one record) and its printed `text`."""
        if not self.enabled:
            return
        self._write({"type": "eval", "step": step, **metrics, "time": time.time()})
        self.print(f"eval @ step {step}\n{text}")

    def event(self, step: int, message: str) -> None:
        if not self.enabled:
            return
        self._write({"type": "event", "step": step, "message": message, "time": time.time()})
        self.print(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def lm_eval_metrics(results: dict[str, dict[int, dict[str, float]]]) -> tuple[dict[str, float], str]:
    """`results[domain][depth] = {"loss", "bpb", ...}` as flat metrics `val/<domain>/loss@<n>`,
    `val/<domain>/bpb@<n>` and one printed line per domain."""
    metrics: dict[str, float] = {}
    lines = []
    for domain, by_depth in results.items():
        for n, r in by_depth.items():
            metrics[f"val/{domain}/loss@{n}"] = r["loss"]
            metrics[f"val/{domain}/bpb@{n}"] = r["bpb"]
        lines.append(f"  {domain:>8}: " + "  ".join(f"n={n}: loss {r['loss']:.4f} bpb {r['bpb']:.3f}"
                                                  for n, r in by_depth.items()))
    return metrics, "\n".join(lines)
