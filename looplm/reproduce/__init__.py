"""`looplm reproduce`: the research report's whole pipeline in one command, with a report card.

    looplm reproduce --preset tiny --out runs/tiny            # ~30 min on a 2-core CPU, generated data
    looplm reproduce --preset report-200m --device cuda ...   # the report's scale, one GPU

Phases (see `phases.py`): tokenizer, data, pretrain, sft, sft-noreplay, grpo-outcome,
grpo-outcome-noreplay, grpo-process, grpo-outcome-cmp, calibrate-halt, train-spec, audit, ablation,
eval, eval-depth (test-time depth on larger graphs), report. Re-running skips finished phases (`reproduce.json` holds input hashes); `--from` and
`--until` pick a range; a failed phase stops the run and names its log.

Data: every source is explicit. The defaults (`--text generated --chat generated`) make the run
self-contained and say so in every manifest and in the report; `--text local:PATH|hub` and
`--chat PATH|hub` use real WikiText / Alpaca instead and fail loudly if they cannot be read.
"""

from __future__ import annotations

import argparse
import sys

from looplm.config import ConfigError


def add_parser(subparsers) -> argparse.ArgumentParser:
    from looplm.reproduce.config import PRESETS, ReproduceConfig

    d = ReproduceConfig()
    p = subparsers.add_parser("reproduce", help="run the whole report pipeline and write a report card",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=d.preset, choices=PRESETS,
                   help="pipeline scale (default: tiny; smoke = every phase at toy size, for tests)")
    p.add_argument("--out", default=None, help="run directory (default: runs/PRESET)")
    p.add_argument("--from", dest="start", default=None, metavar="PHASE", help="first phase to run")
    p.add_argument("--until", dest="stop", default=None, metavar="PHASE", help="last phase to run")
    p.add_argument("--replay", type=float, default=d.replay,
                   help="share F of CLRS-Text DFS (pre-training format) mixed into SFT and GRPO (default: 0.1)")
    p.add_argument("--no-ablation", dest="ablation", action="store_false", help="skip the core-KV ablation")
    p.add_argument("--text", default=d.text, help="English pre-training text: generated | local:PATH | hub")
    p.add_argument("--chat", default=d.chat, help="SFT chat rows: generated | PATH (Alpaca JSON) | hub")
    p.add_argument("--gsm8k", default=None, help="also evaluate GSM8K from this JSONL/directory or 'hub'")
    p.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"))
    p.add_argument("--allow-cpu", action="store_true", help="let report-200m run on a CPU (days)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--force", action="store_true", help="re-run phases even when up to date")
    p.set_defaults(func=main)
    return p


def check_device(cfg) -> None:
    import torch

    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise ConfigError("--device cuda: no CUDA device is available")
    if cfg.preset == "report-200m" and not cuda and not cfg.allow_cpu:
        raise ConfigError("--preset report-200m needs a GPU (--device cuda): on a CPU it would take days. "
                          "Pass --allow-cpu to run it anyway, or use --preset tiny")


def run(cfg) -> int:
    from pathlib import Path

    from looplm.reproduce.phases import phases
    from looplm.reproduce.runner import Context, PhaseFailed, run_phases

    cfg.validate()
    check_device(cfg)
    ctx = Context(cfg=cfg, budget=cfg.budget, out=Path(cfg.out))
    try:
        run_phases(ctx, phases(cfg), cfg.start, cfg.stop, cfg.force)
    except PhaseFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report = ctx.path("report.md")
    if report.is_file():
        print(f"report card: {report} (and report.html)")
    return 0


def main(args) -> int:
    from looplm.reproduce.config import ReproduceConfig

    cfg = ReproduceConfig(preset=args.preset, out=args.out or f"runs/{args.preset}", start=args.start,
                          stop=args.stop, replay=args.replay, ablation=args.ablation, text=args.text,
                          chat=args.chat, gsm8k=args.gsm8k, device=args.device, allow_cpu=args.allow_cpu,
                          seed=args.seed, force=args.force, threads=args.threads)
    return run(cfg)
