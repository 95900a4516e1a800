"""Benchmark: FLOP rate of looplm's pre-training update next to a plain GPT of the same FLOPs per token.

One looplm update is exactly what `looplm pretrain` runs per step (`looplm.train.common.accumulate` +
`finish_update`: forward n recurrence steps with gradients through the last k, float32 cross-entropy,
backward, gradient clipping, the non-finite check, fused AdamW). Two depth modes:
- `fixed`: n = k = the preset's recurrence (full backprop), so looplm's training FLOPs per token equal
  the plain GPT's exactly (`benchmarks/plain_gpt.matched_config`: same width and heads, forward FLOPs
  matched at that depth and seq_len);
- `sampled`: the Huginn depth sampler of `looplm pretrain` (n varies per update, k = min(n, bptt)),
  FLOPs per update from `train_flops_per_token(n, k)`; compared by FLOP rate.
The plain GPT runs the same update (same loss, clipping, optimizer groups). The matmul peak, looplm
and the plain GPT are timed round by round in rotating order (`common.interleaved`), so load spikes
on the shared machine hit all alike. Target: `tiny`, fp32 eager, looplm FLOP rate >= 0.8x the plain
GPT's. Writes the record `benchmarks/results/bench_train_flops-PRESET[-bf16].json` (`--no-save` to skip).

    python benchmarks/bench_train_flops.py [--preset tiny] [--batch 8] [--seq-len 256] [--rounds 6]
        [--threads 1] [--bf16] [--no-save]

Simplification: random tokens (speed does not depend on the data); one micro-batch per update.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install

import torch  # noqa: E402

from benchmarks.common import (figure, interleaved, machine_info, markdown_table, matmul_fn,  # noqa: E402
                               set_threads, write_record)
from benchmarks.plain_gpt import PlainGPT, matched_config  # noqa: E402
from looplm.config import PRESETS, get_preset  # noqa: E402
from looplm.model import RecursiveCausalLM  # noqa: E402
from looplm.train import common as C  # noqa: E402

TARGET = 0.8


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny", choices=list(PRESETS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--bptt", type=int, default=8, help="bptt_steps of the sampled mode")
    ap.add_argument("--rounds", type=int, default=6, help="timed rounds per mode")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (and a bf16 matmul peak)")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/bench_train_flops-*.json")
    return ap.parse_args(argv)


def plain_update(model, opt, params, x, y, bf16: bool):
    """The plain GPT's version of one looplm update (same loss, clipping, finite check, AdamW)."""
    with C.autocast(x.device, bf16):
        ls = C.loss_sum(model(x), y)
    (ls / y.numel()).backward()
    gnorm = float(C.grad_norm(model, params, 1.0))
    if C.is_finite(ls.item(), gnorm):
        opt.step()
    opt.zero_grad(set_to_none=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    cfg = get_preset(args.preset)
    R, T, B = cfg.recurrence, args.seq_len, args.batch
    torch.manual_seed(0)
    loop = RecursiveCausalLM(cfg)
    C.freeze_untrained(loop)
    pcfg = matched_config(cfg, R, T)
    plain = PlainGPT(pcfg)
    d, cpu = C.Dist(), torch.device("cpu")
    opt_l = C.build_optimizer(loop, 1e-4, 0.1, (0.9, 0.95), cpu)
    opt_p = C.build_optimizer(plain, 1e-4, 0.1, (0.9, 0.95), cpu)
    params_l = [p for p in loop.parameters() if p.requires_grad]
    params_p = list(plain.parameters())
    ids = torch.randint(0, cfg.vocab_size, (B, T + 1))
    x, y = ids[:, :-1], ids[:, 1:]
    mm, mm_flops = matmul_fn(torch.bfloat16 if args.bf16 else torch.float32, 1024)
    fpt_plain = plain.flops_per_token(T, training=True)
    info = machine_info()
    print(f"machine: {info}\nlooplm {args.preset} (R={R}) vs plain GPT {pcfg.n_layers} layers, mlp {pcfg.mlp_hidden}; "
          f"batch {B} x {T}, {args.threads} thread(s), {'bf16' if args.bf16 else 'fp32'}")
    rows, ratios, mfu = [], {}, {}
    for mode in ("fixed", "sampled"):
        counter = {"i": 0, "flops": []}

        def loop_update():
            i = counter["i"]
            counter["i"] += 1
            n = R if mode == "fixed" else C.sample_depth(0, i, float(R), 0.5, cfg.max_steps, 0.0)
            k = n if mode == "fixed" else min(n, args.bptt)
            counter["flops"].append(C.train_flops_per_token(cfg, n, k, T) * B * T)
            local = C.accumulate(loop, [(x, y)], n, k, B * T, d, args.bf16)
            C.finish_update(loop, opt_l, params_l, local, B * T, [], 1.0, d)

        t = interleaved({"matmul": lambda: [mm() for _ in range(3)], "looplm": loop_update,
                         "plain": lambda: plain_update(plain, opt_p, params_p, x, y, args.bf16)},
                        rounds=args.rounds, warmup=args.warmup)
        peak = 3 * mm_flops / t["matmul"].median
        timed_flops = counter["flops"][args.warmup:]  # the warm-up rounds are not timed
        rate_l = sum(timed_flops) / sum(t["looplm"].times)
        rate_p = fpt_plain * B * T * len(t["plain"].times) / sum(t["plain"].times)
        ratios[mode] = rate_l / rate_p
        mfu[mode] = (100 * rate_l / peak, 100 * rate_p / peak)
        mean_fpt = sum(timed_flops) / len(timed_flops) / (B * T)
        for name, rate, fpt, tm in (("looplm", rate_l, mean_fpt, t["looplm"]),
                                    ("plain", rate_p, fpt_plain, t["plain"])):
            rows.append([mode, name, f"{fpt / 1e6:.1f}M", f"{sum(tm.times) / len(tm.times):.2f}",
                         f"{B * T * len(tm.times) / sum(tm.times):.0f}", f"{rate / 1e9:.2f}",
                         f"{100 * rate / peak:.1f}%"])
        print(f"{mode}: looplm {rate_l / 1e9:.2f} GFLOP/s, plain {rate_p / 1e9:.2f} GFLOP/s, "
              f"peak {peak / 1e9:.1f} GFLOP/s -> ratio {ratios[mode]:.2f}x", flush=True)
    headers = ["depth", "model", "train FLOPs/token (mean)", "s/update (mean)", "tokens/s", "GFLOP/s", "MFU"]
    judged = args.preset == "tiny" and not args.bf16
    lines = [markdown_table(headers, rows), "",
             f"plain GPT: {pcfg.n_layers} layers, d={pcfg.d_model}, swiglu {pcfg.mlp_hidden}, "
             f"same training FLOPs/token "
             f"as looplm at n = k = {R}; sampled: Huginn n (r̄ = {R}, σ = 0.5), k = min(n, {args.bptt})"]
    for mode, r in ratios.items():
        lines.append(f"looplm / plain GPT FLOP rate ({mode} depth): **{r:.2f}x**"
                     + (f" (target >= {TARGET}x: {'met' if r >= TARGET else 'NOT met'})" if judged else ""))
    print("\n".join(lines))
    if not args.no_save:
        figs = [figure(f"`{args.preset}` pre-training FLOP rate, looplm / plain GPT, {mode} depth", round(r, 2), "x",
                       f">= {TARGET}" if judged else None, headline=judged) for mode, r in ratios.items()]
        figs += [figure(f"{name} MFU, {mode} depth", round(v, 1), "%")
                 for mode, pair in mfu.items() for name, v in zip(("looplm", "plain GPT"), pair)]
        write_record(f"bench_train_flops-{args.preset}" + ("-bf16" if args.bf16 else ""), figs, script=__file__,
                     info=info, details="\n".join(lines),
                     title=f"FLOP rate of the pre-training update vs a plain GPT, `{args.preset}`, "
                           f"{'bf16' if args.bf16 else 'fp32'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
