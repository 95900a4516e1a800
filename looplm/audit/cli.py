"""`looplm audit`: options map one to one onto `AuditConfig` (see `looplm.audit` for the checks)."""

from __future__ import annotations

import argparse

from looplm.audit.run import AuditConfig, run_audit


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    d = AuditConfig(ckpt="-")
    p = subparsers.add_parser("audit", help="the three pathology checks (update shock, elastic depth, gradients)",
                              description="Update shock, elastic depth and gradient starvation of a checkpoint, with "
                                          "numbers, thresholds and verdicts (see docs/audit.md).")
    p.add_argument("--ckpt", required=True, metavar="DIR", help="checkpoint directory (read only)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: CKPT-audit next to the checkpoint)")
    p.add_argument("--data", default=d.data, help="held-out text: 'generated' (default: eval-split task documents), "
                                                  "a pre-training data directory (its val files) or a text file")
    p.add_argument("--n-seqs", type=int, default=d.n_seqs, help=f"windows of held-out text (default: {d.n_seqs})")
    p.add_argument("--seq-len", type=int, help="tokens per window (default: min(128, max_seq_len - 1))")
    p.add_argument("--depth-multiples", default="1,2,3,4", help="elastic depth: k*R steps (default: 1,2,3,4)")
    p.add_argument("--elastic-tasks", default=",".join(d.elastic_tasks),
                   help="generated tasks scored at each depth, comma-separated, or 'none' (default: dfs-verbal)")
    p.add_argument("--elastic-n", type=int, default=d.elastic_n, help=f"items per task (default: {d.elastic_n})")
    p.add_argument("--max-new-tokens", type=int, help="generation budget (default: longest reference answer + slack)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default: {d.batch_size}")
    p.add_argument("--shock-steps", type=int, help="update shock judged on steps t < J (default: max(R, 4))")
    p.add_argument("--spike-factor", type=float, default=d.spike_factor, help=f"default: {d.spike_factor}")
    p.add_argument("--shock-max-std", type=float, default=d.shock_max_std, help=f"default: {d.shock_max_std}")
    p.add_argument("--min-agreement", type=float, default=d.elastic_min_agreement,
                   help=f"elastic depth: min greedy agreement with the R-step run (default: {d.elastic_min_agreement})")
    p.add_argument("--max-acc-drop", type=float, default=d.elastic_max_acc_drop,
                   help=f"elastic depth: max accuracy drop below the R-step value (default: {d.elastic_max_acc_drop})")
    p.add_argument("--grad-depth", type=int, help="steps of the gradient check (default: 2R)")
    p.add_argument("--bptt-steps", type=int, default=d.bptt_steps,
                   help=f"truncated run's graph steps (default: {d.bptt_steps})")
    p.add_argument("--starve-min-ratio", type=float, default=d.starve_min_ratio,
                   help=f"starved: gradient below this x the largest step's (default: {d.starve_min_ratio})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    try:
        mult = tuple(int(k) for k in args.depth_multiples.split(","))
    except ValueError:
        raise ValueError(f"--depth-multiples {args.depth_multiples!r}: expected integers like 1,2,3,4") from None
    tasks = () if args.elastic_tasks.strip() in ("", "none") else tuple(args.elastic_tasks.split(","))
    run_audit(AuditConfig(
        ckpt=args.ckpt, out=args.out, data=args.data, n_seqs=args.n_seqs, seq_len=args.seq_len, seed=args.seed,
        depth_multiples=mult, elastic_tasks=tasks, elastic_n=args.elastic_n, elastic_max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, shock_steps=args.shock_steps, spike_factor=args.spike_factor,
        shock_max_std=args.shock_max_std, elastic_min_agreement=args.min_agreement,
        elastic_max_acc_drop=args.max_acc_drop, grad_depth=args.grad_depth, bptt_steps=args.bptt_steps,
        starve_min_ratio=args.starve_min_ratio, device=args.device, progress=not args.no_progress,
        plots=not args.no_plots))
    return 0
