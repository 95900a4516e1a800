"""Benchmark: tokens/s of looplm's pre-training update with `--bf16 --compile` against fp32 eager.

The update is the one `looplm pretrain` runs (`looplm.train.common.accumulate` + `finish_update`) at
fixed depth n = k = the preset's recurrence. Variants: fp32 eager (the baseline), bf16 autocast eager,
fp32 compiled, bf16 + compiled (`common.compile_blocks`: prelude/coda blocks and the core's norms and
modulated linears, compiled in place; inductor caches under ~/.cache/looplm/compile). Each variant is a
fresh model with the same seed. Compilation happens in the untimed warm-up updates; the timed updates
of all variants are interleaved round by round (`common.interleaved`). Target: `small`, bf16 + compile
>= 1.3x the tokens/s of fp32 eager. Writes the record `benchmarks/results/bench_train_bf16_compile-PRESET.json`
(`--no-save` to skip).

    python benchmarks/bench_train_bf16_compile.py [--preset small] [--batch 4] [--seq-len 128]
        [--rounds 4] [--warmup 2] [--threads 1] [--variants fp32,bf16,compile,bf16+compile] [--no-save]

Simplification: random tokens; one micro-batch per update; CPU only (on a GPU, run the same script
with --device cuda).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install

import torch  # noqa: E402

from benchmarks.common import figure, interleaved, machine_info, markdown_table, set_threads, write_record  # noqa: E402
from looplm.config import PRESETS, get_preset  # noqa: E402
from looplm.model import RecursiveCausalLM  # noqa: E402
from looplm.train import common as C  # noqa: E402

TARGET = 1.3
VARIANTS = ("fp32", "bf16", "compile", "bf16+compile")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small", choices=list(PRESETS))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2, help="untimed updates per variant (compilation happens here)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (2 only on an otherwise idle 2-core machine)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}")
    ap.add_argument("--no-save", action="store_true",
                    help="do not write benchmarks/results/bench_train_bf16_compile-PRESET.json")
    return ap.parse_args(argv)


def make_update(cfg, variant: str, ids: torch.Tensor, device: torch.device):
    torch.manual_seed(0)
    model = RecursiveCausalLM(cfg).to(device)
    C.freeze_untrained(model)
    if "compile" in variant:
        C.compile_blocks(model, C.default_compile_cache())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = C.build_optimizer(model, 1e-4, 0.1, (0.9, 0.95), device)
    d, n, bf16 = C.Dist(device=device), cfg.recurrence, "bf16" in variant
    x, y = ids[:, :-1].to(device), ids[:, 1:].to(device)

    def update():
        local = C.accumulate(model, [(x, y)], n, n, y.numel(), d, bf16)
        C.finish_update(model, opt, params, local, y.numel(), [], 1.0, d)
        C.sync(device)

    return update


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or "fp32" not in variants:
        raise SystemExit(f"--variants must include fp32 and name only {', '.join(VARIANTS)} (got {args.variants})")
    cfg = get_preset(args.preset)
    device = torch.device(args.device)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len + 1), generator=torch.Generator().manual_seed(0))
    info = machine_info()
    print(f"machine: {info}\n{args.preset}: batch {args.batch} x {args.seq_len}, depth {cfg.recurrence}, "
          f"{args.threads} thread(s), {args.device}; warming up (compiling) ...", flush=True)
    fns = {v: make_update(cfg, v, ids, device) for v in variants}
    t = interleaved(fns, rounds=args.rounds, warmup=args.warmup)
    tokens = args.batch * args.seq_len
    base = t["fp32"].median
    rows = [[v, f"{t[v].median:.2f} ({t[v].min:.2f})", f"{tokens / t[v].median:.0f}", f"{base / t[v].median:.2f}x"]
            for v in variants]
    lines = [markdown_table(["variant", "s/update median (min)", "tokens/s", "speed-up vs fp32 eager"], rows)]
    judged = args.preset == "small"
    figs = [figure(f"`{args.preset}` {v} / fp32 eager tokens/s ({args.device})", round(base / t[v].median, 2), "x",
                   f">= {TARGET}" if judged and v == "bf16+compile" else None, headline=v == "bf16+compile")
            for v in variants if v != "fp32"]
    if "bf16+compile" in variants:
        r = base / t["bf16+compile"].median
        lines += ["", f"bf16 + compile / fp32 eager tokens/s: **{r:.2f}x**"
                  + (f" (target >= {TARGET}x: {'met' if r >= TARGET else 'NOT met'})" if judged else "")]
    print("\n".join(lines))
    if not args.no_save and figs:
        write_record(f"bench_train_bf16_compile-{args.preset}" + ("" if args.device == "cpu" else f"-{args.device}"),
                     figs, script=__file__, info=info, details="\n".join(lines),
                     title=f"pre-training update with bf16 autocast and torch.compile vs fp32 eager, `{args.preset}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
