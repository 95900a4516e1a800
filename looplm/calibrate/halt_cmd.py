"""`looplm calibrate-halt`: options onto `HaltCalibConfig`, run `calibrate_halt`, print a summary.

`--config FILE` replays a calibration: the options of its `calibration.json` (its "config"), those
given on the command line overriding them. Kept free of torch at import time (the CLI lists every
command without loading torch).
"""

from __future__ import annotations

import argparse
from typing import Any

from looplm.calibrate.configs import HaltCalibConfig, add_data_args, add_run_args
from looplm.train.args import add_config_file_option, build_config, replay_values

RENAMED = {"min_steps_grid": "min_steps", "progress": "no_progress"}  # config field -> option dest


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x.strip())


def _floats(s: str) -> tuple[float, ...]:
    return tuple(float(x) for x in s.split(",") if x.strip())


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    d = HaltCalibConfig(init="-", data="-", report_dir="-")
    p = subparsers.add_parser(
        "calibrate-halt", help="fit the AdaExit halt head on a frozen model and choose its threshold",
        description="Label each position/step by the model's own convergence, fit the halt head (BCE, rest "
                    "frozen), choose (min_steps, tau) on held-out prompts for a target greedy agreement with "
                    "full depth, measure the speedup, and write calibration.json + calibration.png (and, "
                    "with --out, a checkpoint whose meta holds halt_threshold / halt_min_steps / halt_steps).")
    add_config_file_option(p, required=("init", "data"))
    p.add_argument("--init", metavar="DIR", help="checkpoint to calibrate (required, here or in --config FILE)")
    add_data_args(p, required=False)
    p.add_argument("--out", metavar="DIR", help="write the calibrated checkpoint and the report here")
    p.add_argument("--report-dir", metavar="DIR", help="write only the report here (no checkpoint)")
    p.add_argument("--target-agreement", type=float, default=d.target_agreement, help="default: %(default)s")
    p.add_argument("--kl-delta", type=float, default=d.kl_delta, help="label KL bound δ (default: %(default)s)")
    p.add_argument("--steps", type=int, help="full depth (default: the model's recurrence)")
    p.add_argument("--min-steps", type=_ints, default=d.min_steps_grid, metavar="M,M,...",
                   help="min_steps values to sweep (default: 1 .. min(3, steps))")
    p.add_argument("--taus", type=_floats, default=d.taus, metavar="T,T,...", help="thresholds to sweep (1 is added)")
    p.add_argument("--tau-quantiles", type=_floats, default=d.tau_quantiles, metavar="Q,Q,...",
                   help="also sweep these quantiles of the fitted head's halt probability at step min_steps "
                        "(default: %(default)s; '' for none)")
    p.add_argument("--fit-positions", choices=("decode", "all"), default=d.fit_positions,
                   help="fit the halt head on the positions predicting the continuation (default) or on all")
    p.add_argument("--sequences", choices=("greedy", "data"), default=d.sequences,
                   help="label sequences: the model's greedy continuations (default) or the data's responses")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="default: %(default)s")
    p.add_argument("--heldout-frac", type=float, default=d.heldout_frac, help="default: %(default)s")
    p.add_argument("--epochs", type=int, default=d.epochs, help="BCE epochs (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="default: %(default)s")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="sequences per forward (default: %(default)s)")
    p.add_argument("--bench-batches", type=_ints, default=d.bench_batches, metavar="B,B,...",
                   help="batch sizes to time (default: 1,8)")
    p.add_argument("--bench-prompts", type=int, default=d.bench_prompts, help="default: %(default)s")
    p.add_argument("--bench-repeats", type=int, default=d.bench_repeats, help="0 skips timing (default: %(default)s)")
    add_run_args(p, d)
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    from looplm.commands import print_json

    cfg = build_config(HaltCalibConfig, replay_values(HaltCalibConfig, dict(
        init=args.init, data=args.data, out=args.out, report_dir=args.report_dir, n=args.n, seed=args.seed,
        steps=args.steps, sequences=args.sequences, max_new_tokens=args.max_new_tokens,
        heldout_frac=args.heldout_frac, kl_delta=args.kl_delta, target_agreement=args.target_agreement,
        min_steps_grid=args.min_steps, taus=args.taus, tau_quantiles=args.tau_quantiles,
        fit_positions=args.fit_positions, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        bench_batches=args.bench_batches, bench_prompts=args.bench_prompts, bench_repeats=args.bench_repeats,
        device=args.device, progress=not args.no_progress), args, dest_of=RENAMED))
    from looplm.calibrate.halt import calibrate_halt

    res = calibrate_halt(cfg)
    if args.json:
        print_json(res)
    else:
        print(summary(res))
    return 0


def summary(res: dict[str, Any]) -> str:
    c, g = res["chosen"], res["generation"]
    lines = [f"chosen tau={c['tau']} min_steps={c['min_steps']} (of {res['steps']} steps)",
             f"held-out agreement (adaptive forward vs full depth): {c['agreement']:.2%}",
             f"mean exit: {c['mean_exit_steps']:.2f} steps = {c['mean_exit_block_passes']:.2f} block passes; "
             f"core FLOPs saved {c['core_flops_saved']:.1%} (decode), {c['core_flops_saved_all']:.1%} (all tokens); "
             f"total FLOPs saved {c['total_flops_saved']:.1%}",
             f"adaptive generation vs full: {g['exact_match_frac']:.1%} identical outputs, prefix agreement "
             f"{g['prefix_agreement']:.2%}, core FLOPs saved {g['core_flops_saved']:.1%}"]
    for k, v in res["speed"].items():
        if k.startswith("batch_"):
            lines.append(f"{k}: full {v['full_tokens_per_s']:.1f} tok/s, adaptive {v['adaptive_tokens_per_s']:.1f} "
                         f"tok/s, speedup {v['speedup']:.2f}x (interleaved)")
    lines.append(f"report: {res['report']}  plot: {res['plot']}" + (f"  checkpoint: {res['checkpoint']}"
                                                                    if res["checkpoint"] else ""))
    return "\n".join(lines)
