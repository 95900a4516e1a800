"""Shared benchmark helpers: machine info, matmul peak, timing, FLOP counting and RESULTS.md sections.

- `machine_info()`: CPU model, cores, load average, torch version and threads, for every result;
- `matmul_peak(dtype)`: FLOP/s of a square matmul, measured in the benchmark's own run so MFU is
  relative to what this (shared, noisy) machine delivers right now;
- `time_fn(fn)` (warm-up, then median of repeats) and `interleaved(fns, rounds)` (one sample of each
  function per round, the order rotating every round, so a load spike hits every contestant alike);
- `count_flops(fn)`: `torch.utils.flop_counter.FlopCounterMode` plus a formula for CPU flash attention
  (`aten._scaled_dot_product_flash_attention_for_cpu`, which torch's counter does not know);
- `append_section(...)`: appends one dated section (machine, command, table) to `benchmarks/RESULTS.md`
  under a file lock; it never rewrites what is already there.

Simplification: wall-clock `time.perf_counter`, no CPU pinning or frequency control.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

ROOT = Path(__file__).resolve().parents[1]
RESULTS_PATH = ROOT / "benchmarks" / "RESULTS.md"
RESULTS_HEADER = """# looplm benchmark results

Each section is one run of one script in `benchmarks/` (machine, command, date, table), appended by
`benchmarks/common.py:append_section`. Older sections are kept; the newest run of a benchmark is the
last section with its name. Timings on a shared CPU are noisy: each section notes the load average.
"""


# ---------------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def set_threads(n: int) -> None:
    if n < 1:
        raise ValueError(f"--threads={n} must be >= 1")
    torch.set_num_threads(n)


def machine_info() -> dict[str, str]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "load average (1/5/15 min)": " / ".join(f"{x:.2f}" for x in load),
    }


def format_machine(info: dict[str, str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in info.items())


def command_line() -> str:
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return " ".join(["python", shlex.quote(str(script))] + [shlex.quote(a) for a in sys.argv[1:]])


# ---------------------------------------------------------------------------------------------- timing
@dataclass
class Timing:
    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)


def time_fn(fn: Callable[[], object], warmup: int = 1, repeats: int = 5) -> Timing:
    """Seconds per call of fn: `warmup` untimed calls, then `repeats` timed ones."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(times)


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, Timing]:
    """Time every fn once per round, rotating the order each round (fair on a noisy, shared machine).
    The first `warmup` rounds are not recorded."""
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be >= 1")
    names = list(fns)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            fns[name]()
            dt = time.perf_counter() - t0
            if r >= warmup:
                out[name].append(dt)
    return {n: Timing(t) for n, t in out.items()}


def matmul_fn(dtype: torch.dtype = torch.float32, n: int = 1024) -> tuple[Callable[[], object], int]:
    """A closure running one n×n @ n×n matmul, and its FLOPs (2n³)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    return (lambda: torch.mm(a, b)), 2 * n**3


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 1024, repeats: int = 5, warmup: int = 2) -> float:
    """Median FLOP/s of an n×n matmul in `dtype` with the current thread count."""
    fn, flops = matmul_fn(dtype, n)
    return flops / time_fn(fn, warmup, repeats).median


# ---------------------------------------------------------------------------------------------- FLOPs
def _cpu_flash(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_flash_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward,
}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs torch's counter sees while fn runs (matmuls, and SDPA over the full T×L score matrix even
    when causal, as the kernels compute it)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as fc:
        fn()
    return fc.get_total_flops()


# ---------------------------------------------------------------------------------------------- results
def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    def cell(x: object) -> str:
        return f"{x:.4g}" if isinstance(x, float) else str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def append_section(title: str, body: str, info: dict[str, str] | None = None, command: str | None = None,
                   path: Path = RESULTS_PATH) -> Path:
    """Append `## title (date)` with machine, command and body to RESULTS.md (created with a header if
    missing). Existing content is never modified; concurrent writers are serialised by flock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    text = [f"\n## {title} ({stamp})\n",
            f"- machine: {format_machine(info or machine_info())}",
            f"- command: `{command or command_line()}`\n", body.rstrip() + "\n"]
    with open(path, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0)
            if not f.read(1):
                f.write(RESULTS_HEADER)
            f.write("\n".join(text))
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    return path
