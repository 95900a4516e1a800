"""Benchmark: `looplm pretrain` throughput with 2 DDP ranks on CPU (gloo, 1 thread each) against one
process with 1 thread, at the same global batch.

Both runs are real `looplm pretrain` commands (`python -m looplm pretrain ...` and
`python -m torch.distributed.run --standalone --nproc_per_node=2 -m looplm pretrain ...`) on a small
generated data directory (CLRS DFS + arithmetic/word problems), `tiny` preset, fixed depth
(`--no-sample-depth`, so every update costs the same). tokens/s is the median of each run's
per-update `tokens_per_s` in metrics.jsonl (global tokens / update wall time on rank 0), after
`--skip` warm-up updates. Runs alternate single, DDP, single, DDP, ... (`--repeats` pairs) and the
medians over all their updates are compared. Target: 2 ranks >= 1.1x the single process. Writes the
record `benchmarks/results/bench_train_ddp-tiny.json` (`--no-save` to skip).

    python benchmarks/bench_train_ddp.py [--steps 12] [--batch-size 8] [--seq-len 256] [--depth 4]
        [--repeats 2] [--no-save]

Simplification: process start-up and the first updates are excluded (they are the same fixed cost
whatever the run length); 2 ranks share the machine's 2 cores with whatever else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install

from benchmarks.common import figure, machine_info, markdown_table, write_record  # noqa: E402

TARGET = 1.1


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--skip", type=int, default=2, help="warm-up updates left out of the median")
    ap.add_argument("--batch-size", type=int, default=8, help="global sequences per update")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--depth", type=int, default=4, help="fixed recurrence depth")
    ap.add_argument("--repeats", type=int, default=2, help="(single, DDP) pairs")
    ap.add_argument("--work", help="working directory (default: a temporary one)")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/bench_train_ddp-tiny.json")
    return ap.parse_args(argv)


def build_data(work: Path) -> Path:
    from looplm.data.mixture import MixConfig, build_pretrain_mix
    from looplm.tokenizer import train_default_tokenizer

    train_default_tokenizer(vocab_size=512, seed=0, n_texts=400).save(work / "tokenizer")
    out = work / "data"
    build_pretrain_mix(MixConfig(tokenizer=work / "tokenizer", out=out, tokens=200_000,
                                 mix={"clrs": 0.5, "math": 0.5}, val_tokens=20_000, overwrite=True))
    return out


def run(args, data: Path, out: Path, ranks: int) -> list[float]:
    argv = ["-m", "looplm", "pretrain", "--data", str(data), "--out", str(out), "--preset", "tiny",
            "--set", "vocab_size=512", "--steps", str(args.steps), "--batch-size", str(args.batch_size),
            "--seq-len", str(args.seq_len), "--no-sample-depth", "--fixed-depth", str(args.depth),
            "--bptt-steps", str(args.depth), "--eval-every", "0", "--eval-batches", "1", "--eval-depths",
            str(args.depth), "--save-every", str(10 * args.steps), "--threads", "1", "--peak-flops", "1e11",
            "--no-progress", "--log-every", str(args.steps)]
    launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                   f"--nproc_per_node={ranks}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(launcher + argv, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{ranks}-rank run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["tokens_per_s"] for r in recs if r["type"] == "train"][args.skip:]


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_ddp_"))
    work.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    data = build_data(work)
    rates: dict[int, list[float]] = {1: [], 2: []}
    for rep in range(args.repeats):
        for ranks in (1, 2):
            got = run(args, data, work / f"run{ranks}_{rep}", ranks)
            rates[ranks] += got
            print(f"repeat {rep}, {ranks} rank(s): median {statistics.median(got):.0f} tokens/s", flush=True)
    med = {r: statistics.median(v) for r, v in rates.items()}
    ratio = med[2] / med[1]
    rows = [[f"{r} process(es) x 1 thread", len(v), f"{med[r]:.0f}", f"{min(v):.0f} - {max(v):.0f}"]
            for r, v in rates.items()]
    lines = [markdown_table(["run", "updates timed", "tokens/s median", "range"], rows), "",
             f"tiny, fixed depth {args.depth}, global batch {args.batch_size} x {args.seq_len}, "
             f"{args.steps} updates per run "
             f"(first {args.skip} skipped), {args.repeats} alternating pairs",
             f"2-rank DDP / single process tokens/s: **{ratio:.2f}x** (target >= {TARGET}x: "
             f"{'met' if ratio >= TARGET else 'NOT met'})"]
    print("\n".join(lines))
    if not args.no_save:
        figs = [figure("`tiny` pre-training tokens/s, 2-rank DDP (gloo, 1 thread each) / 1 process", round(ratio, 2),
                       "x", f">= {TARGET}", headline=True),
                *[figure(f"tokens/s, {r} process(es) x 1 thread (median)", round(med[r]), " tokens/s") for r in med]]
        write_record("bench_train_ddp-tiny", figs, script=__file__, info=info, details="\n".join(lines),
                     title="`looplm pretrain` throughput: 2 DDP ranks on CPU vs one process, same global batch")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
