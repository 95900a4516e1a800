"""Benchmark: `looplm eval` throughput in verbal-DFS problems/s for `tiny` at batch 32 (target >= 50/s).

    python benchmarks/bench_eval.py [--ckpt DIR | --random-init] [--n 128] [--batch-size 32] [--threads 1]
                                    [--rounds 2] [--adaptive] [--no-results]

Writes the record `benchmarks/results/bench_eval-fixed.json` (`bench_eval-adaexit.json` with
`--adaptive`; `--no-results` to skip).

`--adaptive` decodes with the checkpoint's calibrated AdaExit (`looplm eval --adaptive`; e.g. `--ckpt
runs/bench/tiny-dfs-halt`, written by `bench_adaexit.py`). The headline figure is the median of the
timed rounds of run_eval's loop (a warm-up round first).

Model: `--ckpt`, else `runs/bench/tiny-dfs` (the `tiny` preset trained on verbal DFS traces by
`benchmarks/tiny_dfs_model.py`) when it exists, else a random-init `tiny` model with the default
tokenizer. A random model rarely emits `<|eos|>`, so it is given `max_new_tokens` = the median
reference trace length of the items (tokens incl. EOS), i.e. the typical completion length of the
task; a trained model gets eval's default budget and stops at EOS. The section says which was used.

Measured in the same run, interleaved (`common.interleaved`):
- `run_eval` on `--n` held-out dfs-verbal items at the model's depth R: problems/s of its loop
  (tokenise + generate + score, the figure judged against the target) and end to end (plus loading
  the checkpoint and generating the items), and the loop's split into tokenisation, generation and
  scoring;
- baseline: bare `looplm.generate.generate` on the same token prompts, batches and budgets: the
  ceiling for the eval pipeline (the difference is eval's own overhead);
- a decode-step split: ms per single-token forward at batch B (left-padded cache, as in eval) with 1
  step and with R steps, giving the cost of one core step and of everything outside the core
  (prelude, coda, LM head);
- a profile of one `generate` call on a middle batch: the prefill's share of its wall time, and op
  time by kind (attention, with the masked SDPA math fallback that left padding triggers; matmuls;
  everything else).

Simplification: one model, one task, greedy only; wall-clock on a shared CPU (load average noted).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from benchmarks.common import figure, interleaved, markdown_table, set_threads, write_record  # noqa: E402
from looplm.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from looplm.evaluate.items import answer_budget, format_prompt, load_items  # noqa: E402
from looplm.evaluate.run import EvalConfig, calibrated_exit, run_eval  # noqa: E402
from looplm.generate import GenerationConfig, generate  # noqa: E402

TARGET = 50.0
TRAINED = ROOT / "runs" / "bench" / "tiny-dfs"


def pick_model(ckpt: str | None, tmp: Path, random_init: bool) -> tuple[Path, str]:
    from tiny_dfs_model import has_checkpoint

    if ckpt:
        return Path(ckpt), f"checkpoint {ckpt}"
    if has_checkpoint(TRAINED) and not random_init:
        return TRAINED, f"`tiny` trained on verbal DFS traces ({TRAINED.relative_to(ROOT)})"
    from looplm.config import get_preset
    from looplm.model import RecursiveCausalLM
    from looplm.tokenizer import train_default_tokenizer

    torch.manual_seed(0)
    path = save_checkpoint(tmp / "random-tiny", RecursiveCausalLM(get_preset("tiny", max_seq_len=256)),
                           train_default_tokenizer(vocab_size=2048, seed=0), meta={"stage": "random-init"})
    why = "--random-init" if random_init else "no trained DFS model found"
    return path, f"random-init `tiny` ({why}), budget = median trace length"


def decode_split(model, prompts: list[list[int]], steps: int, n: int = 12) -> dict[str, float]:
    """Median ms of a one-token forward at batch len(prompts), with 1 and with `steps` core steps."""
    from looplm.generate import _left_pad

    ids, mask, pos = _left_pad(prompts, 0, model.embed.weight.device)
    out = {}
    with torch.no_grad():
        for s in (1, steps):
            cache = model.new_cache(len(prompts), ids.shape[1] + n + 1, s)
            model(ids, s, cache=cache, attention_mask=mask, position_ids=pos, last_only=True)
            x, times = ids[:, -1:], []
            for i in range(n):
                t0 = time.perf_counter()
                model(x, s, cache=cache, position_ids=pos[:, -1:] + 1 + i)
                times.append(time.perf_counter() - t0)
            out[s] = 1e3 * statistics.median(times)
    per_step = (out[steps] - out[1]) / max(1, steps - 1)
    return {"1 step": out[1], f"{steps} steps": out[steps], "per core step": per_step,
            "outside core": out[1] - per_step}


def generation_profile(model, batch: list[list[int]], gcfg: GenerationConfig) -> dict[str, float]:
    """Shares (%) of one `generate` call: the prefill forward, and by op: attention (SDPA; its masked
    math fallback separately), matmuls (mm/bmm/addmm), everything else."""
    from torch.profiler import ProfilerActivity, profile

    from looplm.generate import _left_pad

    ids, mask, pos = _left_pad(batch, gcfg.pad_id, model.embed.weight.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        R = model.config.recurrence
        model(ids, R, cache=model.new_cache(len(batch), ids.shape[1] + 1, R), attention_mask=mask, position_ids=pos,
              last_only=True)
    prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate(model, batch, gcfg)
    total = time.perf_counter() - t0
    ev = prof.key_averages()
    self_total = sum(e.self_cpu_time_total for e in ev)
    incl = {e.key: e.cpu_time_total for e in ev}
    sdpa = incl.get("aten::scaled_dot_product_attention", 0.0)
    math_path = incl.get("aten::_scaled_dot_product_attention_math", 0.0)
    mm = sum(e.self_cpu_time_total for e in ev if e.key in ("aten::mm", "aten::bmm", "aten::addmm"))
    return {"prefill": 100 * prefill / total, "sdpa": 100 * sdpa / self_total,
            "sdpa_math": 100 * math_path / self_total, "matmul": 100 * mm / self_total,
            "other": 100 * (self_total - sdpa - mm) / self_total}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", help="checkpoint to evaluate (default: the trained tiny DFS model, else random init)")
    ap.add_argument("--random-init", action="store_true",
                    help="use a random-init tiny model even if a trained one exists")
    ap.add_argument("--n", type=int, default=128, help="dfs-verbal items (default 128)")
    ap.add_argument("--batch-size", type=int, default=32, help="default 32")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--adaptive", action="store_true",
                    help="decode with the checkpoint's calibrated AdaExit threshold and minimum steps (from "
                         "`looplm calibrate-halt`, in its meta.json) instead of fixed depth R")
    ap.add_argument("--no-results", action="store_true", help="do not write benchmarks/results/bench_eval-*.json")
    args = ap.parse_args()
    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, what = pick_model(args.ckpt, Path(tmp), args.random_init)
        model, tok, _ = load_checkpoint(ckpt)
        halt = calibrated_exit(ckpt) if args.adaptive else {"halt_threshold": None, "min_steps": 1}
        exs = load_items("dfs-verbal", args.n, seed=0).examples
        lengths = sorted(len(tok.encode(e.answer)) + 1 for e in exs)
        trained = "random" not in what
        budget = answer_budget(tok, exs) if trained else int(statistics.median(lengths))
        cfg = EvalConfig(ckpt=str(ckpt), tasks=("dfs-verbal",), n=args.n, batch_size=args.batch_size,
                         max_new_tokens=budget, progress=False, print_table=False, write=False, **halt)
        prompts = sorted((format_prompt(tok, e, "chat")[1] for e in exs), key=len)
        batches = [prompts[i:i + args.batch_size] for i in range(0, len(prompts), args.batch_size)]
        gcfg = GenerationConfig(max_new_tokens=budget, stop_tokens=(tok.eos_id,), pad_id=tok.pad_id, **halt)
        last: dict = {}

        loop_seconds: list[float] = []

        def evaluate():
            last["eval"] = run_eval(cfg)
            loop_seconds.append(last["eval"]["runs"][0]["time"]["total"])

        def bare():
            last["bare"] = [generate(model, b, gcfg) for b in batches]

        t = interleaved({"eval": evaluate, "generate only": bare}, rounds=args.rounds, warmup=1)
        split = decode_split(model, batches[len(batches) // 2], model.config.recurrence)
        prof = generation_profile(model, batches[len(batches) // 2], gcfg)
    run = last["eval"]["runs"][0]
    m, tm = run["metrics"], run["time"]
    eval_rate, bare_rate = args.n / t["eval"].median, args.n / t["generate only"].median
    loop_rate = args.n / statistics.median(loop_seconds[1:])  # the first call is the warm-up
    new_tok = sum(o.new_tokens for o in last["bare"]) / args.n
    rows = [
        ["model", what],
        ["items, batch, steps R, max_new_tokens", f"{args.n}, {args.batch_size}, {model.config.recurrence}, {budget}"],
        ["depth", "fixed R" if halt["halt_threshold"] is None else
         f"AdaExit (calibrated tau {halt['halt_threshold']}, min steps {halt['min_steps']}); mean core steps "
         f"{m['exit_steps_mean']:.2f}"],
        ["reference trace tokens (median / max)", f"{statistics.median(lengths):.0f} / {max(lengths)}"],
        ["new tokens per problem (mean); share stopped at EOS",
         f"{m['new_tokens_mean']:.1f}; {100 * m['finished_rate']:.0f}%"],
        ["accuracy (exact visit order)", f"{100 * m['score']:.1f}%"],
        ["**eval problems/s** (run_eval's loop: tokenise + generate + score; median of the timed rounds)",
         f"**{loop_rate:.1f}** (rounds: {', '.join(f'{args.n / x:.1f}' for x in loop_seconds[1:])})"],
        ["eval problems/s end to end (incl. checkpoint load, item generation)", f"{eval_rate:.1f}"],
        ["generate-only problems/s (baseline, same batches)", f"{bare_rate:.1f}"],
        ["eval time split: tokenise / generate / score",
         " / ".join(f"{100 * tm[k] / tm['total']:.1f}%" for k in ("tokenize", "generate", "score"))],
        ["eval tokens/s (new tokens)", f"{eval_rate * new_tok:.0f}"],
        [f"decode forward at batch {args.batch_size}: 1 step / R steps (ms)",
         f"{split['1 step']:.1f} / {split[f'{model.config.recurrence} steps']:.1f}"],
        ["-> one core step / outside the core (ms)", f"{split['per core step']:.2f} / {split['outside core']:.2f}"],
        ["one generate call: prefill share of wall time", f"{prof['prefill']:.0f}%"],
        ["one generate call, op time: attention (SDPA) / of it masked math path / matmuls / other",
         f"{prof['sdpa']:.0f}% / {prof['sdpa_math']:.0f}% / {prof['matmul']:.0f}% / {prof['other']:.0f}%"],
        [f"target >= {TARGET:.0f} problems/s (eval loop)", "MET" if loop_rate >= TARGET else "NOT MET"],
    ]
    table = markdown_table(["measurement", "value"], rows)
    print(table)
    if not args.no_results:
        depth = "AdaExit" if halt["halt_threshold"] is not None else "fixed depth R"
        figs = [figure(f"eval problems/s, verbal DFS, batch {args.batch_size}, {depth} (run_eval's loop, median)",
                       round(loop_rate, 1), " problems/s", f">= {TARGET:g}", headline=True),
                figure("eval problems/s end to end (with checkpoint load, item generation)", round(eval_rate, 1),
                       " problems/s"),
                figure("generate-only problems/s (baseline, same batches)", round(bare_rate, 1), " problems/s"),
                figure("accuracy (exact visit order)", round(100 * m["score"], 1), "%"),
                figure("mean core steps per token", None if m["exit_steps_mean"] is None
                       else round(m["exit_steps_mean"], 2))]
        write_record("bench_eval-adaexit" if args.adaptive else "bench_eval-fixed", figs, script=__file__,
                     details=table, title=f"`looplm eval` throughput, verbal DFS, batch {args.batch_size}, {depth}: "
                                          f"{what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
