"""Benchmark (learning): pre-train `tiny` on generated CLRS-Text DFS (n = 4-5) under a wall-clock
budget, then greedy-decode held-out graphs and score exact match of the final `pi`.

1. Data: a BPE tokenizer trained on generated CLRS-Text DFS text (~285 tokens: the text has few
   merges), then `looplm data pretrain-mix`'s builder with `--mix clrs=1.0` (train documents from the
   tasks' "train" split, validation from the "eval" split).
2. Training: `looplm pretrain` (in this process, `looplm.train.pretrain.train`) on the `tiny` preset
   with the vocabulary shrunk to the tokenizer (`--set vocab_size=...`) and the overrides below, with
   `--max-minutes` = the budget: the cosine schedule follows elapsed / budget and training ends at the
   budget. A short probe times a few updates so that `--steps` (2x the estimate) is not the limit.
3. Evaluation: `--eval-graphs` CLRS DFS prompts from the "eval" split (never in training: the split is
   a hash of the prompt), greedy `looplm.generate` (KV cache, stop at EOS) at `--eval-depth`
   recurrence steps, scored by `looplm.tasks.clrs_dfs.score` (exact final `pi`; whole-trace exact too).
Prints the learning curve (train loss, validation loss/bpb) and the result, and writes the record
`benchmarks/results/bench_train_clrs-MINUTESmin.json` (`--no-save` to skip). Target: >= 80% exact
final `pi` after at most 20 minutes of training.

    python benchmarks/bench_train_clrs.py [--minutes 20] [--threads 1] [--lr 3e-3] [--batch-size 8]
        [--seq-len 256] [--mean-steps 2] [--bptt-steps 3] [--eval-depth 3] [--set FIELD=VALUE ...]
        [--work DIR] [--no-save]

Defaults are the best of the 3-minute trials on the shared 2-core CPU (the tiny layout of then kept); a
lighter outer stack (`--set n_prelude=2 --set n_coda=2`) trained faster still (`benchmarks/LOG.md`,
2026-11-25).

Simplification: one seed; the budget counts the training loop's wall clock (its periodic validation
included), not data building, the probe or the final decoding.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install

import torch  # noqa: E402

from benchmarks.common import figure, machine_info, markdown_table, set_threads, write_record  # noqa: E402

TARGET = 0.8


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="training wall-clock budget")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (2 only on an otherwise idle 2-core machine: "
                                                          "oversubscribed OpenMP threads are many times slower)")
    ap.add_argument("--nodes", default="4,5", help="graph sizes (train and eval)")
    ap.add_argument("--tokens", type=int, default=3_000_000, help="train tokens to generate (windows are "
                                                                  "sampled with replacement)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--mean-steps", type=float, default=2.0, help="r̄ of the depth sampler (E[n] = r̄ + 1)")
    ap.add_argument("--bptt-steps", type=int, default=3)
    ap.add_argument("--eval-depth", type=int, default=3, help="recurrence steps when decoding")
    ap.add_argument("--eval-graphs", type=int, default=300)
    ap.add_argument("--eval-batch", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=100, help="validation loss every N updates")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                    help="extra ModelConfig overrides of the tiny preset (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", help="working directory (default: a temporary one)")
    ap.add_argument("--eval-only", action="store_true", help="skip training: score the finished run in --work "
                                                              "(same options as the run that trained it)")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/bench_train_clrs-*.json")
    return ap.parse_args(argv)


def build_data(work: Path, nodes: tuple[int, ...], tokens: int, seed: int) -> tuple[Path, int]:
    from looplm.data.mixture import MixConfig, build_pretrain_mix
    from looplm.tasks import get_task
    from looplm.tokenizer import Tokenizer

    texts = [e.prompt + e.answer for e in get_task("clrs_dfs").generate(2000, seed=seed + 10_000,
                                                                         node_counts=nodes, split="train")]
    tok = Tokenizer.train(texts, vocab_size=512)
    tok.save(work / "tokenizer")
    data = work / "data"
    build_pretrain_mix(MixConfig(tokenizer=work / "tokenizer", out=data, tokens=tokens, mix={"clrs": 1.0},
                                 val_tokens=20_000, clrs_nodes=nodes, seed=seed, overwrite=True))
    return data, tok.vocab_size


def probe_update_seconds(model_sets: list[str], args, n: int) -> float:
    """Seconds per training update at depth n (median of 3 after one warm-up), random tokens."""
    from looplm.commands import parse_overrides
    from looplm.config import get_preset
    from looplm.model import RecursiveCausalLM
    from looplm.train import common as C

    cfg = get_preset("tiny", **parse_overrides(model_sets))
    with torch.random.fork_rng(devices=[]):
        model = RecursiveCausalLM(cfg)
    C.freeze_untrained(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = C.build_optimizer(model, 1e-4, 0.1, (0.9, 0.95), torch.device("cpu"))
    ids = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len + 1))
    d, k, times = C.Dist(), min(n, args.bptt_steps), []
    for _ in range(4):
        t0 = time.perf_counter()
        local = C.accumulate(model, [(ids[:, :-1], ids[:, 1:])], n, k, ids[:, 1:].numel(), d, False)
        C.finish_update(model, opt, params, local, ids[:, 1:].numel(), [], 1.0, d)
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[1]


def evaluate(ckpt: Path, nodes: tuple[int, ...], n_graphs: int, depth: int, batch: int, seed: int) -> dict:
    from looplm.checkpoint import load_checkpoint
    from looplm.generate import GenerationConfig, generate
    from looplm.tasks import get_task

    task = get_task("clrs_dfs")
    model, tok, _ = load_checkpoint(ckpt)
    examples = task.generate(n_graphs, seed=seed + 20_000, node_counts=nodes, split="eval")
    max_new = max(len(tok.encode(e.answer)) for e in examples) + 4
    scores: dict[int, list[dict]] = {}
    t0 = time.perf_counter()
    for i in range(0, len(examples), batch):
        chunk = examples[i:i + batch]
        out = generate(model, [tok.encode(e.prompt) for e in chunk],
                       GenerationConfig(max_new_tokens=max_new, steps=depth, stop_tokens=(tok.eos_id,),
                                        pad_id=tok.pad_id))
        for e, new in zip(chunk, out.tokens):
            scores.setdefault(e.meta["n"], []).append(task.score(tok.decode(new, skip_special=True), e))
    flat = [s for v in scores.values() for s in v]
    mean = lambda xs, key: sum(x[key] for x in xs) / len(xs)  # noqa: E731
    return {"exact_pi": mean(flat, "score"), "trace_exact": mean(flat, "trace_exact"),
            "pi_element_acc": mean(flat, "pi_element_acc"),
            "by_nodes": {n: mean(v, "score") for n, v in scores.items()},
            "graphs": len(flat), "depth": depth, "seconds": time.perf_counter() - t0}


def curve(out: Path, points: int = 10) -> list[list[object]]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["type"] == "train" and r["loss"] is not None]
    evals = {r["step"]: r for r in recs if r["type"] == "eval"}
    rows = []
    every = max(1, len(train) // points)
    for i in range(0, len(train), every):
        window = train[max(0, i - every + 1): i + 1]
        r = train[i]
        ev = evals.get(r["step"], {})
        val = next((v for k, v in ev.items() if k.startswith("val/clrs/loss@")), None)
        rows.append([r["step"], f"{(r['time'] - train[0]['time']) / 60:.1f}",
                     f"{sum(w['loss'] for w in window) / len(window):.3f}", "-" if val is None else f"{val:.3f}"])
    for step, ev in sorted(evals.items()):  # evaluations not on a printed row
        if step not in [row[0] for row in rows]:
            t = next(r for r in train if r["step"] == step)
            val = next(v for k, v in ev.items() if k.startswith("val/clrs/loss@"))
            rows.append([step, f"{(t['time'] - train[0]['time']) / 60:.1f}", "-", f"{val:.3f}"])
    return sorted(rows, key=lambda r: r[0])


def train_run(args, nodes: tuple[int, ...], work: Path, out: Path) -> tuple[list[str], dict, float]:
    """Build the data, probe the update time and train under the budget: (model overrides, summary, minutes)."""
    from looplm.train.pretrain import PretrainConfig, train

    t0 = time.perf_counter()
    data, vocab = build_data(work, nodes, args.tokens, args.seed)
    model_sets = [f"vocab_size={-(-vocab // 64) * 64}", *args.overrides]
    print(f"data: {data} ({args.tokens} train tokens, tokenizer {vocab} tokens) in {time.perf_counter() - t0:.0f}s",
          flush=True)
    per_update = probe_update_seconds(model_sets, args, max(1, round(args.mean_steps + 1)))
    steps = max(args.warmup + 10, int(2 * 60 * args.minutes / per_update))
    print(f"probe: {per_update:.2f} s/update at depth {round(args.mean_steps + 1)} -> --steps {steps} (the time "
          f"budget ends training first)", flush=True)
    cfg = PretrainConfig(data=str(data), out=str(out), preset="tiny", model_overrides=model_sets, steps=steps,
                         batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, warmup=args.warmup,
                         mean_steps=args.mean_steps, bptt_steps=args.bptt_steps, eval_every=args.eval_every,
                         eval_batches=1, eval_depths=(args.eval_depth,), save_every=max(steps, 1), keep=1,
                         seed=args.seed, threads=args.threads, max_minutes=args.minutes, log_every=25, progress=False)
    t_train = time.perf_counter()
    summary = train(cfg)
    if summary["exit_code"] != 0:
        raise SystemExit(f"training stopped with exit code {summary['exit_code']}")
    return model_sets, summary, (time.perf_counter() - t_train) / 60


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    nodes = tuple(int(x) for x in args.nodes.split(","))
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_clrs_"))
    work.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    out = work / "run"
    if args.eval_only:
        if not (out / "final").is_dir():
            raise SystemExit(f"--eval-only: no finished run at {out / 'final'} (train first, with the same --work)")
        run_cfg = json.loads((out / "run_config.json").read_text())
        model_sets, train_threads = run_cfg.get("model_overrides", []), run_cfg.get("threads")
        summary, train_min = None, None
    else:
        model_sets, summary, train_min = train_run(args, nodes, work, out)
        train_threads = args.threads
    res = evaluate(out / "final", nodes, args.eval_graphs, args.eval_depth, args.eval_batch, args.seed)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if r["type"] == "train"]
    if train_min is None:  # --eval-only: the loop's wall clock from its metrics
        train_min = (train_recs[-1]["time"] - train_recs[0]["time"]) / 60
        summary = {"step": train_recs[-1]["step"]}
    tok_s = sum(r["tokens_per_s"] for r in train_recs) / len(train_recs)
    by_nodes = ", ".join(f"n={n}: {100 * v:.0f}%" for n, v in sorted(res["by_nodes"].items()))
    lines = [markdown_table(["update", "minutes", "train loss (window mean)", "val loss"], curve(out)), "",
             f"config: tiny + {' '.join('--set ' + s for s in model_sets)}; batch {args.batch_size} x {args.seq_len}, "
             f"lr {args.lr} (warmup {args.warmup}, cosine), depth r̄ = {args.mean_steps} (σ 0.5), "
             f"bptt {args.bptt_steps}, "
             f"{train_threads} training thread(s)" + (" (scored with --eval-only)" if args.eval_only else ""),
             f"trained {summary['step']} updates ({train_recs[-1]['tokens']:,} tokens) in {train_min:.1f} min "
             f"(budget {args.minutes} min), mean {tok_s:.0f} tokens/s",
             f"held-out graphs: {res['graphs']} ({by_nodes}), greedy at depth {res['depth']}: exact final pi "
             f"**{100 * res['exact_pi']:.1f}%**, whole trace {100 * res['trace_exact']:.1f}%, "
             f"pi elements {100 * res['pi_element_acc']:.1f}% (eval {res['seconds']:.0f}s)"
             + (f" (target >= {TARGET:.0%} in <= 20 min: {'met' if res['exact_pi'] >= TARGET else 'NOT met'})"
                if args.minutes <= 20 else "")]
    print("\n".join(lines))
    if not args.no_save:
        vals = [r for r in recs if r["type"] == "eval"]
        val = next((v for k, v in vals[-1].items() if k.startswith("val/clrs/loss@")), None) if vals else None
        figs = [figure(f"`tiny` CLRS-DFS exact final pi after {args.minutes:g} min of pre-training, n = {args.nodes}",
                       round(100 * res["exact_pi"], 1), "%", f">= {100 * TARGET:g}" if args.minutes <= 20 else None,
                       headline=True),
                figure("whole trace exact", round(100 * res["trace_exact"], 1), "%"),
                figure("pi elements right", round(100 * res["pi_element_acc"], 1), "%"),
                figure("last validation loss", None if val is None else round(val, 4), " nats/token"),
                figure("updates in the budget", summary["step"]),
                figure("training tokens/s (mean)", round(tok_s), " tokens/s")]
        write_record(f"bench_train_clrs-{args.minutes:g}min", figs, script=__file__, info=info,
                     details="\n".join(lines), title=f"learning CLRS-Text DFS in a {args.minutes:g}-minute "
                                                    f"pre-training budget, `tiny`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
