"""Benchmark: speculative decoding (and adaptive + speculative) on the tiny verbal-DFS model.

    python benchmarks/bench_speculative.py [--init runs/bench/tiny-dfs-halt] [--out runs/bench/tiny-dfs-spec]

Starts from the AdaExit-calibrated checkpoint written by `bench_adaexit.py` (runs that benchmark's
calibration first if it is missing, training the tiny model too if needed), then runs
`looplm.calibrate.train_spec` on `--n` fresh `dfs_verbal` prompts (seed 2): the frozen model's own
greedy continuations, only the speculative heads trained. On held-out prompts it decodes at batch 1
with plain greedy, speculative, adaptive (the calibrated τ) and adaptive + speculative decoding,
interleaved in one run (alternating order, so load from other processes hits all alike), checks
that speculative output equals plain greedy output token for token (and adaptive + speculative equals
adaptive), and reports tokens/s ratios. Targets: >= 2.5x tokens/s at batch 1 with identical output.
Writes the record `benchmarks/results/bench_speculative.json` (`--no-results` to skip).

Simplification: one seed; absolute tokens/s are noisy on the shared CPU, the ratios are the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

import bench_adaexit  # noqa: E402
from benchmarks.common import figure, markdown_table, write_record  # noqa: E402
from looplm.calibrate import SpecTrainConfig, train_spec  # noqa: E402
from looplm.calibrate.spec_cmd import summary_text  # noqa: E402
from tiny_dfs_model import DEFAULT_DIR, DEFAULT_MINUTES, has_checkpoint  # noqa: E402

SPEC_DIR = ROOT / "runs" / "bench" / "tiny-dfs-spec"
TARGET_SPEEDUP = 2.5


def run(init: Path, out: Path, n: int, epochs: int, lr: float, eval_prompts: int, repeats: int,
        progress: bool = True) -> dict:
    if not has_checkpoint(init):
        bench_adaexit.run(DEFAULT_DIR, init, 200, 3, DEFAULT_MINUTES, progress)
    cfg = SpecTrainConfig(init=str(init), out=str(out), data="dfs_verbal", n=n, seed=2, epochs=epochs, lr=lr,
                          max_new_tokens=96, eval_prompts=eval_prompts, bench_repeats=repeats, progress=progress)
    return train_spec(cfg)


def rel(path: str) -> str:
    """A path relative to the repository root when it lies inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def checks(res: dict) -> list[tuple[str, str, str, bool]]:
    d = res["decoding"]
    out = [("speculative vs greedy tokens/s, batch 1", f"{d['speedup']:.2f}x", f">= {TARGET_SPEEDUP}x",
            d["speedup"] >= TARGET_SPEEDUP),
           ("speculative output == greedy output", str(d["identical"]), "True", d["identical"])]
    if "adaptive" in d:
        same = d["adaptive"]["identical_adaptive_speculative_vs_adaptive"]
        out.append(("adaptive+speculative output == adaptive output", str(same), "True", same))
    return out


def figures(res: dict) -> list[dict]:
    d = res["decoding"]
    figs = [figure("speculative vs greedy tokens/s, batch 1", round(d["speedup"], 2), "x", f">= {TARGET_SPEEDUP}",
                   headline=True),
            figure("speculative output == greedy output", bool(d["identical"]), target="== true", headline=True),
            figure("tokens per verification pass", round(d["speculative"]["mean_tokens_per_verify"], 2))]
    if "adaptive" in d:
        ad = d["adaptive"]
        figs += [figure("adaptive + speculative output == adaptive output",
                        bool(ad["identical_adaptive_speculative_vs_adaptive"]), target="== true"),
                 figure("adaptive + speculative vs greedy tokens/s, batch 1",
                        round(ad["speedup_adaptive_speculative"], 2), "x", headline=True),
                 figure("adaptive alone vs greedy tokens/s, batch 1", round(ad["speedup_adaptive"], 2), "x")]
    return figs


def report(res: dict) -> str:
    d, b, a = res["decoding"], res["before"]["heldout"], res["after"]["heldout"]
    s = d["speculative"]
    K = len(a["ce"])
    heads = [[k + 1, f"{b['ce'][k]:.3f}", f"{a['ce'][k]:.3f}", f"{a['top1'][k]:.3f}", f"{a['chain_acceptance'][k]:.3f}",
              "-" if s["head_acceptance"][k] is None else f"{s['head_acceptance'][k]:.3f}"] for k in range(K)]
    tps = d["tokens_per_s"]
    speed = [[k, f"{v:.1f}", f"{v / tps['greedy']:.2f}x"] for k, v in tps.items()]
    parts = [
        f"Init `{rel(res['init'])}`; heads distilled on the frozen model's own greedy continuations of "
        f"{res['train_prompts']} `dfs_verbal` prompts (seed 2; {res['train_positions']} positions, "
        f"{res['config']['epochs']} epochs); {d['prompts']} held-out prompts decoded at batch 1.",
        markdown_table(["figure", "value", "target", "result"], [[*c[:3], "PASS" if c[3] else "FAIL"]
                                                                  for c in checks(res)]),
        "Per head (held-out, teacher forced: CE before/after, top-1, chained = heads 1..k all right; decoding: "
        "accepted / examined):\n\n" + markdown_table(
            ["head k (token i+1+k)", "CE before", "CE after", "top-1", "chained", "accept in decoding"], heads),
        f"Speculative decoding: {s['mean_tokens_per_verify']:.2f} tokens per verification pass "
        f"({s['tokens_per_forward']:.2f} per forward incl. prefill).",
        f"Tokens/s at batch 1 (max 96 new tokens; all modes interleaved in one run, {d['repeats']} repeats; "
        "absolute numbers noisy on the shared CPU, ratios are the figures):\n\n"
        + markdown_table(["mode", "tok/s", "vs greedy"], speed)]
    if "adaptive" in d:
        ad = d["adaptive"]
        parts.append(f"Adaptive (τ = {ad['halt_threshold']}, min_steps = {ad['min_steps']}) alone: "
                     f"{ad['speedup_adaptive']:.2f}x; adaptive + speculative: "
                     f"{ad['speedup_adaptive_speculative']:.2f}x "
                     f"({ad['speculative']['mean_tokens_per_verify']:.2f} tokens per verification). Adaptive vs "
                     f"full-depth greedy on these prompts: {ad['adaptive_vs_full']['exact_match_frac']:.1%} identical, "
                     f"prefix agreement {ad['adaptive_vs_full']['prefix_agreement']:.2%}.")
    return "\n\n".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--init", default=str(bench_adaexit.HALT_DIR), help="AdaExit-calibrated checkpoint")
    ap.add_argument("--out", default=str(SPEC_DIR), help="checkpoint with trained heads + train_spec.json")
    ap.add_argument("--n", type=int, default=600, help="dfs_verbal prompts (20%% held out)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--eval-prompts", type=int, default=16, help="held-out prompts decoded and timed")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats")
    ap.add_argument("--no-results", action="store_true",
                    help="do not write benchmarks/results/bench_speculative.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    res = run(Path(args.init), Path(args.out), args.n, args.epochs, args.lr, args.eval_prompts, args.repeats)
    print(summary_text(res))
    body = report(res)
    print(body)
    if not args.no_results:
        write_record("bench_speculative", figures(res), script=__file__, details=body,
                     title="speculative decoding (and adaptive + speculative) on the tiny verbal-DFS model")
    return 0 if all(c[3] for c in checks(res)) else 1


if __name__ == "__main__":
    sys.exit(main())
