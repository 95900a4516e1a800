"""Run configs of the speed calibrations, with validation that names the bad field (no torch import).

`HaltCalibConfig` drives `looplm.calibrate.halt.calibrate_halt`, `SpecTrainConfig` drives
`looplm.calibrate.spec.train_spec`; `validate()` raises `ConfigError` ("Cls.field=value is invalid:
allowed ..."). The meta keys a calibrated checkpoint carries are `META_THRESHOLD` (`halt_threshold`),
`META_MIN_STEPS` (`halt_min_steps`) and `META_STEPS` (`halt_steps`, the full depth τ was chosen at).

Simplification: plain dataclasses; the CLI modules map their options onto these one to one (the
options both commands share come from `add_data_args` and `add_run_args`).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from looplm.config import ConfigError

META_THRESHOLD, META_MIN_STEPS, META_STEPS = "halt_threshold", "halt_min_steps", "halt_steps"
DEFAULT_TAUS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 1.0)
# quantiles of the fitted head's halt probability at step m added as thresholds (per min_steps m)
DEFAULT_TAU_QUANTILES = (0.01, 0.02, 0.03, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)


def check_field(cls_name: str, name: str, value: Any, ok: bool, allowed: str) -> None:
    """Raise ConfigError naming `cls_name.name` when `ok` is false."""
    if not ok:
        raise ConfigError(f"{cls_name}.{name}={value!r} is invalid: {allowed}")


def to_json(cfg: Any) -> dict[str, Any]:
    """asdict with tuples as lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


@dataclass
class HaltCalibConfig:
    init: str  # checkpoint to calibrate
    data: str  # SFT JSONL, RL prompt JSONL or generated task name
    out: str | None = None  # new checkpoint + report
    report_dir: str | None = None  # report only (when no checkpoint is wanted)
    n: int | None = None  # examples (required with a task name; a prefix of a file otherwise)
    seed: int = 0
    steps: int | None = None  # full depth; None = the model's recurrence
    sequences: str = "greedy"  # "greedy" | "data"
    max_new_tokens: int = 64
    heldout_frac: float = 0.25
    kl_delta: float = 0.1
    target_agreement: float = 0.99
    min_steps_grid: tuple[int, ...] | None = None  # None = 1 .. min(3, steps)
    taus: tuple[float, ...] = DEFAULT_TAUS
    tau_quantiles: tuple[float, ...] = DEFAULT_TAU_QUANTILES  # () = the fixed taus only
    fit_positions: str = "decode"  # "decode" (positions predicting the continuation) | "all" (prompt too)
    epochs: int = 300  # a logistic fit: 30 epochs of 3 minibatches left it at the base rate
    lr: float = 0.01
    train_batch: int = 4096  # label rows per BCE step
    batch_size: int = 8  # sequences per forward / generation batch
    bench_batches: tuple[int, ...] = (1, 8)
    bench_prompts: int = 8
    bench_repeats: int = 2  # 0 = no timing
    device: str = "cpu"
    progress: bool = True

    def validate(self) -> None:
        c = "HaltCalibConfig"
        check_field(c, "init", self.init, isinstance(self.init, str) and bool(self.init), "a checkpoint directory")
        check_field(c, "data", self.data, isinstance(self.data, str) and bool(self.data), "a JSONL path or task name")
        check_field(c, "out", self.out, self.out is not None or self.report_dir is not None,
                    "give out (new checkpoint + report) or report_dir (report only)")
        check_field(c, "out", self.out, self.out is None or Path(self.out).resolve() != Path(self.init).resolve(),
                    "must differ from init")
        check_field(c, "n", self.n, self.n is None or (isinstance(self.n, int) and self.n >= 2), "None or >= 2")
        check_field(c, "steps", self.steps, self.steps is None or (isinstance(self.steps, int) and self.steps >= 1),
                    "None or an integer >= 1")
        check_field(c, "sequences", self.sequences, self.sequences in ("greedy", "data"), "'greedy' or 'data'")
        for name in ("max_new_tokens", "epochs", "train_batch", "batch_size", "bench_prompts"):
            v = getattr(self, name)
            check_field(c, name, v, isinstance(v, int) and v >= 1, "an integer >= 1")
        check_field(c, "bench_repeats", self.bench_repeats, isinstance(self.bench_repeats, int)
                    and self.bench_repeats >= 0, "an integer >= 0")
        check_field(c, "heldout_frac", self.heldout_frac, 0 < self.heldout_frac < 1, "in (0, 1)")
        check_field(c, "kl_delta", self.kl_delta, self.kl_delta > 0, "> 0")
        check_field(c, "target_agreement", self.target_agreement, 0 < self.target_agreement <= 1, "in (0, 1]")
        check_field(c, "lr", self.lr, self.lr > 0, "> 0")
        check_field(c, "min_steps_grid", self.min_steps_grid, self.min_steps_grid is None or (
            len(self.min_steps_grid) > 0 and all(isinstance(m, int) and m >= 1 for m in self.min_steps_grid)),
            "a non-empty list of integers >= 1 (or unset: 1 .. min(3, steps))")
        check_field(c, "taus", self.taus, len(self.taus) > 0 and all(0 < t <= 1 for t in self.taus),
                    "a non-empty list of thresholds in (0, 1]")
        check_field(c, "bench_batches", self.bench_batches, all(isinstance(b, int) and b >= 1
                                                                 for b in self.bench_batches), "integers >= 1")
        check_field(c, "tau_quantiles", self.tau_quantiles, all(isinstance(q, (int, float)) and 0 < q < 1
                                                                 for q in self.tau_quantiles),
                    "a list of quantiles in (0, 1) (empty: none)")
        check_field(c, "fit_positions", self.fit_positions, self.fit_positions in ("decode", "all"),
                    "'decode' or 'all'")


@dataclass
class SpecTrainConfig:
    init: str  # checkpoint whose speculative heads are trained
    out: str  # new checkpoint + train_spec.json
    data: str  # SFT JSONL, RL prompt JSONL or generated task name
    n: int | None = None  # examples (required with a task name; a prefix of a file otherwise)
    seed: int = 0
    target: str = "greedy"  # "greedy" (the model's own continuations) | "data" (reference responses)
    epochs: int = 2
    lr: float = 3e-3
    weight_decay: float = 0.0
    train_batch: int = 256  # positions per optimiser step
    steps: int | None = None  # recurrence depth; None = the model's recurrence
    max_new_tokens: int = 64
    heldout_frac: float = 0.2
    batch_size: int = 8  # sequences per forward / generation batch
    eval_prompts: int = 16  # held-out prompts decoded for identity, acceptance and timing
    bench_repeats: int = 2  # interleaved timing repeats (>= 1: the decoding check uses the last)
    halt: str = "auto"  # "auto": also time adaptive (+ speculative) if the init meta has a halt calibration
    device: str = "cpu"
    progress: bool = True

    def validate(self) -> None:
        c = "SpecTrainConfig"
        for name in ("init", "out", "data"):
            v = getattr(self, name)
            check_field(c, name, v, isinstance(v, str) and bool(v), "a non-empty path or name")
        check_field(c, "out", self.out, Path(self.out).resolve() != Path(self.init).resolve(), "must differ from init")
        check_field(c, "n", self.n, self.n is None or (isinstance(self.n, int) and self.n >= 2), "None or >= 2")
        check_field(c, "target", self.target, self.target in ("greedy", "data"), "'greedy' or 'data'")
        check_field(c, "halt", self.halt, self.halt in ("auto", "off"), "'auto' or 'off'")
        check_field(c, "steps", self.steps, self.steps is None or (isinstance(self.steps, int) and self.steps >= 1),
                    "None or an integer >= 1")
        for name in ("epochs", "train_batch", "max_new_tokens", "batch_size", "eval_prompts", "bench_repeats"):
            v = getattr(self, name)
            check_field(c, name, v, isinstance(v, int) and v >= 1, "an integer >= 1")
        check_field(c, "lr", self.lr, self.lr > 0, "> 0")
        check_field(c, "weight_decay", self.weight_decay, self.weight_decay >= 0, ">= 0")
        check_field(c, "heldout_frac", self.heldout_frac, 0 < self.heldout_frac < 1, "in (0, 1)")


def add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """--data and --n: where the calibration prompts come from (`required=False` where --config may give it)."""
    p.add_argument("--data", required=required, help="SFT JSONL (prompt, response), RL prompt JSONL (prompt, answer) "
                                                     "or a generated task name (with --n)")
    p.add_argument("--n", type=int, help="examples to generate (task name) or to read (file prefix)")


def add_run_args(p: argparse.ArgumentParser, defaults: Any) -> None:
    """--seed, --device, --no-progress and --json, with the config's defaults."""
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--device", default=defaults.device)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--json", action="store_true", help="print the full results as JSON")
