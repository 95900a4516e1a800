"""`looplm train-spec`: options onto `SpecTrainConfig`, run `train_spec`, print a summary.

`--config FILE` replays a run: the options of its `train_spec.json` (its "config"), those given on
the command line overriding them. Kept free of torch at import time (the CLI lists every command
without loading torch).
"""

from __future__ import annotations

import argparse
from typing import Any

from looplm.calibrate.configs import SpecTrainConfig, add_data_args, add_run_args
from looplm.train.args import add_config_file_option, build_config, replay_values


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    d = SpecTrainConfig(init="-", out="--", data="-")
    p = subparsers.add_parser(
        "train-spec", help="distil the speculative draft heads of a frozen model",
        description="Train only speculative_projs / speculative_biases against the model's own greedy "
                    "continuations (or the data), report per-head loss and acceptance, and check that "
                    "speculative decoding reproduces plain greedy decoding token for token, with its speedup.")
    add_config_file_option(p, required=("init", "out", "data"))
    p.add_argument("--init", metavar="DIR", help="checkpoint to start from, left unchanged (required, here or in "
                                                 "--config FILE)")
    p.add_argument("--out", metavar="DIR", help="new checkpoint + train_spec.json (required, here or in --config FILE)")
    add_data_args(p, required=False)
    p.add_argument("--target", choices=("greedy", "data"), default=d.target,
                   help="distil on the model's own greedy continuations (default) or on the data's responses")
    p.add_argument("--epochs", type=int, default=d.epochs, help="default: %(default)s")
    p.add_argument("--lr", type=float, default=d.lr, help="default: %(default)s")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="default: %(default)s")
    p.add_argument("--train-batch", type=int, default=d.train_batch, help="positions per step (default: %(default)s)")
    p.add_argument("--steps", type=int, help="recurrence depth (default: the model's recurrence)")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="default: %(default)s")
    p.add_argument("--heldout-frac", type=float, default=d.heldout_frac, help="default: %(default)s")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="sequences per forward (default: %(default)s)")
    p.add_argument("--eval-prompts", type=int, default=d.eval_prompts,
                   help="held-out prompts decoded (default: %(default)s)")
    p.add_argument("--bench-repeats", type=int, default=d.bench_repeats,
                   help="interleaved timing repeats (default: %(default)s)")
    p.add_argument("--halt", choices=("auto", "off"), default=d.halt,
                   help="auto: also time adaptive + speculative when the checkpoint has a halt calibration")
    add_run_args(p, d)
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    from looplm.commands import print_json

    cfg = build_config(SpecTrainConfig, replay_values(SpecTrainConfig, dict(
        init=args.init, out=args.out, data=args.data, n=args.n, seed=args.seed, target=args.target,
        epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, train_batch=args.train_batch,
        steps=args.steps, max_new_tokens=args.max_new_tokens, heldout_frac=args.heldout_frac,
        batch_size=args.batch_size, eval_prompts=args.eval_prompts, bench_repeats=args.bench_repeats,
        halt=args.halt, device=args.device, progress=not args.no_progress), args, dest_of={"progress": "no_progress"}))
    from looplm.calibrate.spec import train_spec

    res = train_spec(cfg)
    if args.json:
        print_json(res)
    else:
        print(summary_text(res))
    return 0


def summary_text(res: dict[str, Any]) -> str:
    b, a, dec = res["before"]["heldout"], res["after"]["heldout"], res["decoding"]
    fmt = lambda xs: "[" + ", ".join("-" if x is None else f"{x:.3f}" for x in xs) + "]"  # noqa: E731
    s = dec["speculative"]
    lines = [f"held-out CE per head: before {fmt(b['ce'])} -> after {fmt(a['ce'])}",
             f"held-out top-1 per head (teacher forced): {fmt(a['top1'])}; chained {fmt(a['chain_acceptance'])}",
             f"decoding: head acceptance {fmt(s['head_acceptance'])}, {s['mean_tokens_per_verify']:.2f} tokens per "
             f"verification, {s['tokens_per_forward']:.2f} tokens per forward",
             f"speculative vs greedy (batch 1, interleaved): {dec['speedup']:.2f}x, "
             f"identical output: {dec['identical']}"]
    if "adaptive" in dec:
        ad = dec["adaptive"]
        lines.append(f"adaptive (tau={ad['halt_threshold']}, m={ad['min_steps']}): {ad['speedup_adaptive']:.2f}x; "
                     f"adaptive + speculative: {ad['speedup_adaptive_speculative']:.2f}x, identical to adaptive: "
                     f"{ad['identical_adaptive_speculative_vs_adaptive']}")
    lines.append(f"checkpoint: {res['checkpoint']}  report: {res['report']}")
    return "\n".join(lines)
