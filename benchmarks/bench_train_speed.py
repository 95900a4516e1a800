"""Benchmark: training throughput and MFU of RecursiveCausalLM next to a plain GPT of equal FLOPs/token.

One training iteration = forward at a fixed number of recurrence steps (full backprop through every
step), cross-entropy on random tokens, backward, AdamW step. The plain GPT (`plain_gpt.matched_config`)
has the same width and heads and the same forward FLOPs per token at this --steps and --seq-len. The
matmul peak (an n×n matmul in the same dtype) is measured in the same run, and the three measurements
are interleaved round by round (`common.interleaved`), so load spikes on a shared machine hit all alike.

FLOPs per token come from the formulas (`model.flops_per_token(steps, seq_len, training=True)`: matmul
FLOPs, causal-average attention context, training = 3x forward). The table also shows what
`torch.utils.flop_counter.FlopCounterMode` counts for one forward+backward (it counts attention over
the full T×T score matrix, so it is compared with the formula at full context). Target: on `small`,
fp32 eager, 2 threads, looplm's FLOP rate >= 0.8x the plain GPT's. Writes the record
`benchmarks/results/bench_train_speed-PRESET[-bf16].json` (`--no-save` to skip).

    python benchmarks/bench_train_speed.py [--preset small] [--steps R] [--seq-len 128] [--batch 4]
        [--iters 3] [--threads 2] [--bf16] [--no-save]

Simplifications: random tokens (speed does not depend on data); fixed depth (no sampled depth or
truncated backprop, whose FLOPs the formula would not describe); no gradient clipping or LR schedule.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import (count_flops, figure, interleaved, machine_info, markdown_table, matmul_fn,  # noqa: E402
                               matmul_peak, set_threads, write_record)
from benchmarks.plain_gpt import PlainGPT, matched_config  # noqa: E402
from looplm.config import PRESETS, get_preset  # noqa: E402
from looplm.model import RecursiveCausalLM  # noqa: E402

TARGET_RATIO = 0.8  # small, fp32 eager, 2 threads


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small", choices=list(PRESETS))
    ap.add_argument("--steps", type=int, default=None, help="recurrence steps (default: the preset's recurrence)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--iters", type=int, default=3, help="timed rounds (each: matmul, looplm, plain)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast (and a bf16 matmul peak)")
    ap.add_argument("--mlp", default="swiglu", choices=["swiglu", "gelu"], help="plain GPT MLP")
    ap.add_argument("--matmul-n", type=int, default=1024, help="size of the square peak matmul")
    ap.add_argument("--no-count-flops", action="store_true", help="skip the FlopCounterMode check")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/bench_train_speed-*.json")
    return ap.parse_args(argv)


def train_iter_fn(model, forward, ids, autocast):
    """A closure doing one full training iteration (forward, loss, backward, AdamW step)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    targets = ids.roll(-1, dims=1)

    def run():
        with autocast():
            logits = forward(ids)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return run


def counted_train_flops(forward, ids) -> float:
    """FlopCounterMode FLOPs per token of one forward + backward (no optimiser)."""
    def run():
        loss = F.cross_entropy(forward(ids).flatten(0, 1), ids.flatten())
        loss.backward()

    return count_flops(run) / ids.numel()


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    cfg = get_preset(args.preset)
    steps = args.steps or cfg.recurrence
    if not 1 <= steps <= cfg.max_steps:
        raise SystemExit(f"--steps={steps} must be in [1, max_steps={cfg.max_steps}]")
    if not 2 <= args.seq_len <= cfg.max_seq_len:
        raise SystemExit(f"--seq-len={args.seq_len} must be in [2, max_seq_len={cfg.max_seq_len}]")
    torch.manual_seed(0)
    loop = RecursiveCausalLM(cfg)
    pcfg = matched_config(cfg, steps, args.seq_len, mlp=args.mlp)
    plain = PlainGPT(pcfg)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len))
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext
    loop_fwd = lambda x: loop(x, steps).logits  # noqa: E731
    mm, mm_flops = matmul_fn(dtype, args.matmul_n)
    reps = 3

    def peak():
        for _ in range(reps):
            mm()

    info = machine_info()
    print(f"machine: {info}")
    print(f"looplm {args.preset}: steps={steps}; plain GPT: {pcfg.n_layers} layers, mlp {pcfg.mlp} {pcfg.mlp_hidden}, "
          f"d={pcfg.d_model}; batch {args.batch} x seq {args.seq_len}, {'bf16 autocast' if args.bf16 else 'fp32'}, "
          f"{args.threads} threads, {args.iters} rounds + {args.warmup} warm-up")
    t = interleaved({"matmul": peak, "looplm": train_iter_fn(loop, loop_fwd, ids, autocast),
                     "plain": train_iter_fn(plain, plain, ids, autocast)}, rounds=args.iters, warmup=args.warmup)
    peak_flops = reps * mm_flops / t["matmul"].median
    other = torch.float32 if args.bf16 else torch.bfloat16  # the other dtype's peak, for reference
    other_peak = matmul_peak(other, args.matmul_n, repeats=3)
    tokens = ids.numel()
    specs = [("looplm", loop_fwd, loop.flops_per_token(steps, args.seq_len, training=True),
              loop.flops_per_token(steps, 2 * args.seq_len - 1, training=True),  # ctx (L+1)/2 = seq_len
              loop.param_counts(steps)["physical"], f"{args.preset}, {steps} steps"),
             ("plain", plain, plain.flops_per_token(args.seq_len, training=True),
              plain.flops_per_token(2 * args.seq_len - 1, training=True),
              sum(p.numel() for p in plain.parameters()), f"{pcfg.n_layers} layers, {pcfg.mlp} {pcfg.mlp_hidden}")]
    rows, rate, best = [], {}, {}
    for name, fwd, fpt, full, params, desc in specs:
        counted = "-" if args.no_count_flops else f"{counted_train_flops(fwd, ids[:1]) / full:.3f}"
        tok_s = tokens / t[name].median
        rate[name], best[name] = tok_s * fpt, tokens * fpt / t[name].min
        rows.append([name, desc, f"{params / 1e6:.2f}M", f"{fpt / 1e6:.1f}M", counted,
                     f"{t[name].median:.2f} ({t[name].min:.2f})", f"{tok_s:.0f}", f"{rate[name] / 1e9:.2f}",
                     f"{100 * rate[name] / peak_flops:.1f}%"])
    headers = ["model", "config", "params", "train FLOPs/token", "counter / formula(full ctx)",
               "s/iter median (min)", "tokens/s", "GFLOP/s", "MFU"]
    ratio, ratio_min = rate["looplm"] / rate["plain"], best["looplm"] / best["plain"]
    table = markdown_table(headers, rows)
    judged = args.preset == "small" and not args.bf16 and args.threads == 2
    lines = [table, "",
             f"matmul peak ({'bf16' if args.bf16 else 'fp32'}, {args.matmul_n}^3, {args.threads} threads): "
             f"{peak_flops / 1e9:.1f} GFLOP/s (median of {args.iters} rounds; "
             f"{'fp32' if args.bf16 else 'bf16'} peak measured once after them: {other_peak / 1e9:.1f} GFLOP/s)",
             f"looplm / plain GPT FLOP rate: **{ratio:.2f}x**"
             + (f" (target >= {TARGET_RATIO}x: {'met' if ratio >= TARGET_RATIO else 'NOT met'})" if judged else "")
             + f"; from the fastest iteration of each: {ratio_min:.2f}x"]
    print("\n".join(lines))
    if not args.no_save:
        mode = "bf16 autocast" if args.bf16 else "fp32 eager"
        figs = [figure(f"`{args.preset}` training FLOP rate, looplm / plain GPT of equal FLOPs/token ({mode}, "
                       f"{args.threads} threads)", round(ratio, 2), "x", f">= {TARGET_RATIO}" if judged else None,
                       headline=judged),
                figure("the same from the fastest iteration of each", round(ratio_min, 2), "x"),
                figure("looplm MFU (of the matmul peak measured in the run)",
                       round(100 * rate["looplm"] / peak_flops, 1), "%"),
                figure("plain GPT MFU", round(100 * rate["plain"] / peak_flops, 1), "%"),
                figure("looplm training tokens/s", round(tokens / t["looplm"].median), " tokens/s")]
        write_record(f"bench_train_speed-{args.preset}" + ("-bf16" if args.bf16 else ""), figs, script=__file__,
                     info=info, details="\n".join(lines),
                     title=f"training throughput and MFU vs a plain GPT of equal FLOPs/token, `{args.preset}`, "
                           f"{steps} steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
