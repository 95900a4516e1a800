"""Shared benchmark helpers: machine info, matmul peak, timing, FLOP counting and the result record.

- `machine_info()`: CPU model, cores, load average, torch version and threads (and the GPU, if any),
  for every result;
- `matmul_peak(dtype)`: FLOP/s of a square matmul, measured in the benchmark's own run so MFU is
  relative to what this (shared, noisy) machine delivers right now;
- `time_fn(fn)` (warm-up, then median of repeats) and `interleaved(fns, rounds)` (one sample of each
  function per round, the order rotating every round, so a load spike hits every contestant alike);
- `count_flops(fn)`: `torch.utils.flop_counter.FlopCounterMode` plus a formula for CPU flash attention
  (`aten._scaled_dot_product_flash_attention_for_cpu`, which torch's counter does not know);
- `figure(...)` and `write_record(name, figures, ...)`: the one way a benchmark reports its result,
  `benchmarks/results/NAME.json` (machine, command, commit, time, figures with value, unit, target and
  met), replacing the previous record of that name; it then regenerates `benchmarks/RESULTS.md` and the
  README's figures table (`benchmarks/make_results.py`, which also defines and checks the schema).

Simplification: wall-clock `time.perf_counter`, no CPU pinning or frequency control.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from benchmarks.make_results import RESULTS_DIR, RecordError, figure, validate_record, write_outputs  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


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
    info = {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "load average (1/5/15 min)": " / ".join(f"{x:.2f}" for x in load),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


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


def git_commit(root: Path = ROOT) -> tuple[str | None, bool | None, str | None]:
    """(HEAD commit, whether tracked files have uncommitted changes, why either is unknown)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, None, f"git not usable: {e}"
    if head.returncode != 0 or status.returncode != 0:
        return None, None, f"git failed: {(head.stderr or status.stderr).strip()}"
    return head.stdout.strip(), bool(status.stdout.strip()), None


def write_record(name: str, figures: list[dict], *, script: str, title: str, notes: list[str] = (),
                 caveat: str | None = None, details: str | None = None, command: str | None = None,
                 info: dict[str, str] | None = None, results_dir: Path = RESULTS_DIR,
                 regenerate: bool = True) -> Path:
    """Write `results_dir/NAME.json` (replacing the previous record of that name) and, when `regenerate`,
    rewrite `benchmarks/RESULTS.md` and the README's figures table from all records. `figures` are
    `figure(...)` dicts; `script` is the benchmark's `__file__`; `details` the script's full markdown
    tables (kept in the record, not shown in RESULTS.md). Concurrent writers are serialised by flock."""
    if regenerate and Path(results_dir).resolve() != RESULTS_DIR.resolve():
        raise ValueError(f"write_record(regenerate=True) regenerates the repository's RESULTS.md and README from "
                         f"{RESULTS_DIR}; for {results_dir} pass regenerate=False")
    script_path = Path(script).resolve()
    commit, dirty, why = git_commit()
    rec = {"name": name, "title": title,
           "script": str(script_path.relative_to(ROOT)) if script_path.is_relative_to(ROOT) else str(script_path),
           "command": command or command_line(), "time": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
           "machine": info or machine_info(), "source": "measured", "commit": commit, "dirty": dirty,
           "figures": list(figures), "notes": list(notes) + ([f"commit unknown: {why}"] if why else [])}
    if caveat:
        rec["caveat"] = caveat
    if details:
        rec["details"] = details
    path = Path(results_dir) / f"{name}.json"
    validate_record(rec, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / "looplm-benchmark-records.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(rec, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            os.replace(tmp, path)
            print(f"wrote {path}")
            if regenerate:
                for p in write_outputs(results_dir):
                    print(f"regenerated {p}")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path
