"""Benchmark: time to generate task samples (target: 10,000 DFS samples in < 10 s per format).

Formats: CLRS-Text DFS with hints, CLRS-Text DFS without hints (both n in {4, 5} by default) and
verbal DFS traces (4-8 nodes); also arithmetic and word problems for reference. Prints one line per
format with samples/s and the mean answer length in characters, and writes the record
`benchmarks/results/bench_tasks.json` (`--no-save` to skip). Run:

    python benchmarks/bench_tasks.py [--n 10000] [--seed 0] [--no-save]

Simplification: single process, wall-clock `time.perf_counter`, one run per format (no warm-up
beyond the first call); the machine is shared, so expect noise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from benchmarks.common import figure, write_record  # noqa: E402
from looplm.tasks import arith, clrs_dfs, dfs_verbal, word_problems  # noqa: E402

TARGET_S = 10.0


def bench(name: str, fn, n: int) -> float:
    t0 = time.perf_counter()
    items = fn(n)
    dt = time.perf_counter() - t0
    assert len(items) == n
    mean_len = sum(len(e.answer) for e in items) / n
    flag = "" if not name.startswith(("clrs", "dfs")) else ("  OK" if dt < TARGET_S else "  SLOW")
    print(f"{name:<28} {n:>7} samples  {dt:7.3f} s  {n / dt:>10,.0f} samples/s  "
          f"answer {mean_len:6.1f} chars{flag}")
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="samples per format (default 10000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/bench_tasks.json")
    args = ap.parse_args()
    n, s = args.n, args.seed
    results = {
        "clrs_dfs (hints, n=4,5)": bench("clrs_dfs (hints, n=4,5)",
                                         lambda k: clrs_dfs.generate(k, s), n),
        "clrs_dfs (no hints, n=4,5)": bench("clrs_dfs (no hints, n=4,5)",
                                            lambda k: clrs_dfs.generate(k, s, hints=False), n),
        "clrs_dfs (hints, n=16)": bench("clrs_dfs (hints, n=16)",
                                        lambda k: clrs_dfs.generate(k, s, node_counts=(16,)), n),
        "dfs_verbal (4-8 nodes)": bench("dfs_verbal (4-8 nodes)", lambda k: dfs_verbal.generate(k, s), n),
    }
    others = {"arith (2-digit + - *)": bench("arith (2-digit + - *)", lambda k: arith.generate(k, s), n),
              "word_problems": bench("word_problems", lambda k: word_problems.generate(k, s), n)}
    slow = [k for k, v in results.items() if v >= TARGET_S]
    print("all DFS formats under target" if not slow else f"over the {TARGET_S:.0f} s target: {slow}")
    if not args.no_save:
        target = f"< {TARGET_S:g}" if n == 10_000 else None  # the target is for 10,000 samples
        figs = [figure(f"seconds to generate {n:,} samples, {k}", round(v, 3), " s", target)
                for k, v in results.items()]
        figs += [figure(f"seconds to generate {n:,} samples, {k}", round(v, 3), " s") for k, v in others.items()]
        write_record("bench_tasks", figs, script=__file__, title="task sample generation speed")
    return 0 if not slow else 1


if __name__ == "__main__":
    raise SystemExit(main())
