"""`looplm eval`: evaluate one checkpoint (`--ckpt`), or build the alignment-tax table over several
(`--compare SRC...` / `--run-dir DIR`). Options map one to one onto `EvalConfig` / `CompareConfig`.
"""

from __future__ import annotations

import argparse
from typing import Any

from looplm.evaluate.items import ANSWER_SLACK, DEFAULT_TASKS, EVAL_TASKS

EPILOG = f"""Tasks: {', '.join(EVAL_TASKS)}. Items are held out: generated tasks use the tasks' eval split,
gsm8k the GSM8K test split, chat the Alpaca rows whose prompt hashes into the eval split. Prompts use
the chat template (as SFT), except clrs-dfs, which uses the raw pre-training format (see
looplm/evaluate/items.py; --format overrides). Writes DIR/eval.json (per-sample records) and, for a
sweep, DIR/accuracy_vs_steps.png; --compare/--run-dir write alignment_tax.md/.png/.json."""


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected comma-separated integers, e.g. 4,8,16") from None
    if not values:
        raise ValueError(f"{option} {text!r}: expected at least one integer")
    return values


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval", help="evaluate a checkpoint on the tasks; alignment-tax table over phases",
        description="Batched KV-cached greedy evaluation of a checkpoint on held-out task items, or the "
                    "alignment-tax table (tasks x phases) over several checkpoints / eval results.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--ckpt", metavar="DIR", help="checkpoint directory to evaluate (read only)")
    what.add_argument("--compare", nargs="+", metavar="SRC",
                      help="checkpoint directories and/or eval.json results: one column each")
    what.add_argument("--run-dir", metavar="DIR", help="compare every phase checkpoint directly under DIR")
    p.add_argument("--labels", nargs="+", metavar="NAME", help="column names for --compare (default: dir names)")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), metavar="LIST",
                   help=f"comma-separated eval tasks (default: {','.join(DEFAULT_TASKS)})")
    p.add_argument("--n", type=int, default=100, metavar="N", help="items per task (default: 100)")
    depth = p.add_mutually_exclusive_group()
    depth.add_argument("--steps", type=int, metavar="S", help="recurrence steps (default: the model's R)")
    depth.add_argument("--steps-sweep", metavar="LIST", help="evaluate at each depth, e.g. 4,8,16,24,32")
    halt = p.add_mutually_exclusive_group()
    halt.add_argument("--halt-threshold", type=float, metavar="X", help="AdaExit threshold in (0, 1] (default: off)")
    halt.add_argument("--adaptive", action="store_true",
                      help="AdaExit with the checkpoint's calibrated threshold and minimum steps (from `looplm "
                           "calibrate-halt`); an error if it has none")
    p.add_argument("--min-steps", type=int, default=1, metavar="M", help="AdaExit: no exit before M steps (default: 1)")
    p.add_argument("--speculative", action="store_true", help="lossless speculative decoding (one prompt at a time)")
    p.add_argument("--batch-size", type=int, default=32, metavar="B", help="prompts decoded together (default: 32)")
    p.add_argument("--max-new-tokens", type=int, metavar="N",
                   help=f"generation budget (default: per task, longest reference answer + {ANSWER_SLACK})")
    p.add_argument("--format", default="auto", choices=("auto", "chat", "raw"),
                   help="prompt format (default: auto = chat template, raw pre-training text for clrs-dfs)")
    p.add_argument("--gsm8k", metavar="PATH|hub", help="GSM8K test data: JSONL file, directory with test.jsonl, or hub")
    p.add_argument("--alpaca", metavar="PATH|hub", help="Alpaca-format pairs for the chat task, or hub")
    p.add_argument("--exclude", action="append", default=[], metavar="FILE",
                   help="JSONL with a 'prompt' field (e.g. the SFT set): any eval item found there is an error")
    p.add_argument("--out", metavar="DIR", help="output directory (default: CKPT-eval next to the checkpoint; "
                                                "for --compare ./alignment-tax, for --run-dir DIR/alignment-tax)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the generated items (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--no-reuse", action="store_true",
                   help="re-evaluate checkpoints even if a matching eval.json exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-plots", action="store_true", help="do not write PNG plots")
    p.set_defaults(func=main)
    return p


def eval_config(args: argparse.Namespace, ckpt: str, out: str | None) -> Any:
    from looplm.evaluate.run import EvalConfig

    tasks = tuple(t for t in args.tasks.split(",") if t.strip())
    sweep = _int_list(args.steps_sweep, "--steps-sweep") if args.steps_sweep else None
    return EvalConfig(ckpt=ckpt, tasks=tasks, n=args.n, steps=args.steps, steps_sweep=sweep,
                      halt_threshold=args.halt_threshold, min_steps=args.min_steps, adaptive=args.adaptive,
                      speculative=args.speculative,
                      batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, format=args.format,
                      gsm8k=args.gsm8k, alpaca=args.alpaca, exclude=tuple(args.exclude), out=out, seed=args.seed,
                      device=args.device, progress=not args.no_progress, plots=not args.no_plots)


def main(args: argparse.Namespace) -> int:
    if args.ckpt:
        if args.labels:
            raise ValueError("--labels goes with --compare")
        from looplm.evaluate.run import run_eval

        run_eval(eval_config(args, args.ckpt, args.out))
        return 0
    from looplm.evaluate.compare import CompareConfig, run_compare

    template = eval_config(args, "-", None)
    template.validate()  # bad options fail before any checkpoint is touched
    run_compare(CompareConfig(sources=tuple(args.compare or ()), labels=tuple(args.labels) if args.labels else None,
                              run_dir=args.run_dir, out=args.out, template=template, reuse=not args.no_reuse,
                              plots=not args.no_plots))
    return 0
