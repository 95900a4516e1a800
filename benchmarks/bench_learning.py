"""Benchmark (learning): looplm vs a plain GPT on one task stream, the same tokenizer and the same
wall-clock budget, one after the other in one run, scored on the same held-out graphs.

    python benchmarks/bench_learning.py --task dfs-verbal|clrs-dfs --minutes M [--threads T]
        [--json FILE] [--out DIR] [--models looplm,gpt] [--lr X] [--gpt-lr Y] [--sweep LR,LR,...]
        [--set FIELD=VALUE ...] [--recipe FIELD=VALUE ...] [--eval-items N]

1. Data: an endless stream of training items of the task ("train" split: the tasks' prompt hash),
   `dfs-verbal` in the chat format SFT and `looplm eval` use (`<|user|>\\n{prompt}\\n<|assistant|>\\n`
   + answer + EOS), `clrs-dfs` as the raw pre-training document (EOS, question, answer, EOS), CLRS-Text
   byte-exact. Both models read the very same batches (the stream is keyed by the seed and the update
   number) through the project's default tokenizer. The loss is on the answer tokens only (trace,
   answer and the closing EOS): the random graph description cannot be predicted.
2. Training: AdamW, linear warm-up then cosine decay that ends when the budget does; looplm with the
   recipe of `looplm.train.recipe.Recipe` (depth per update, backprop window, progressive loss), the
   plain GPT (`benchmarks/plain_gpt.py`) matched to looplm's forward FLOPs per token at R steps (same
   width and heads; layers and MLP width solved for), so equal wall-clock is close to equal compute.
   `--sweep` first trains each model for `--sweep-minutes` at every listed learning rate and keeps the
   one with the lowest held-out loss (the same sweep for both: no strawman baseline).
3. Evaluation: held-out graphs ("eval" split, never trained on) of the trained sizes and of larger
   ones (verbal DFS 9-10 nodes; CLRS-DFS n = 6-7), greedy decoding with the KV cache, exact answer by
   graph size; looplm at depths R/2, R, 2R and 4R, and its held-out loss at each depth (on a second set
   of eval-split items, also the sweep's criterion, so the learning rate is not chosen on the scored items).

The JSON (`--json`) holds per model `exact` (trained sizes, at R for looplm), `by_size`, `updates`,
`answer_tokens`, `minutes`, `lr`; for looplm also `by_depth` ({depth: {"trained": .., "larger": ..}}) and
`val_loss_by_depth`. `--out DIR` saves the trained looplm as a checkpoint (`looplm eval --ckpt DIR`).

Simplifications: one seed per run; the budget counts the training loop only (not evaluation); the
plain GPT's decoding groups prompts of equal length (it has no padding support).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import command_line, machine_info  # noqa: E402
from benchmarks.plain_gpt import PlainGPT, greedy_decode, matched_config  # noqa: E402
from looplm.train import common as C  # noqa: E402
from looplm.train.recipe import Recipe, depth_for_update, recipe_loss  # noqa: E402

IGNORE = -100
TASKS = {
    "dfs-verbal": {"task": "dfs_verbal", "format": "chat", "trained": {"min_nodes": 4, "max_nodes": 8},
                   "larger": {"min_nodes": 9, "max_nodes": 10}},
    "clrs-dfs": {"task": "clrs_dfs", "format": "raw", "trained": {"node_counts": (4, 5)},
                 "larger": {"node_counts": (6, 7)}},
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=sorted(TASKS), default="dfs-verbal")
    ap.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget per model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="looplm,gpt", help="which models to train, in order")
    ap.add_argument("--lr", type=float, default=None, help="looplm learning rate (default: the recipe's)")
    ap.add_argument("--gpt-lr", type=float, default=None, help="plain GPT learning rate (default: the recipe's)")
    ap.add_argument("--sweep", default="", help="comma-separated learning rates tried for each model first")
    ap.add_argument("--sweep-minutes", type=float, default=1.5)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--warmup", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                    help="ModelConfig overrides of the tiny preset (repeatable)")
    ap.add_argument("--recipe", dest="recipe", action="append", default=[], metavar="FIELD=VALUE",
                    help="Recipe overrides (repeatable; see looplm.train.recipe.Recipe)")
    ap.add_argument("--gpt-layers", type=int, default=None, help="override the FLOP-matched layer count")
    ap.add_argument("--eval-items", type=int, default=200, help="held-out items per size group")
    ap.add_argument("--eval-batch", type=int, default=50)
    ap.add_argument("--depths", default="", help="looplm eval depths (default R/2,R,2R,4R)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for training (both models)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--out", help="save the trained looplm checkpoint here")
    ap.add_argument("--record", action="store_true",
                    help="write benchmarks/results/bench_learning-TASK.json (both models) and regenerate RESULTS.md")
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------------------ data
class Stream:
    """Encoded (prompt ids, answer ids) items of a task split; batches keyed by (seed, update)."""

    def __init__(self, tok, task: str, split: str, opts: dict, seed: int):
        from looplm.tasks import get_task

        spec = TASKS[task]
        self.tok, self.fmt = tok, spec["format"]
        self.task = get_task(spec["task"])
        self.opts, self.split, self.seed = opts, split, seed

    def encode(self, ex) -> tuple[list[int], list[int]]:
        tok = self.tok
        if self.fmt == "chat":
            return tok.encode(tok.chat_prompt(ex.prompt)), tok.encode(ex.answer) + [tok.eos_id]
        q = ex.prompt if ex.prompt.endswith("\n") else ex.prompt + "\n"  # looplm.data.sources.join_qa
        return [tok.eos_id] + tok.encode(q), tok.encode(ex.answer) + [tok.eos_id]

    def examples(self, n: int, seed: int) -> list:
        return self.task.generate(n, seed=seed, split=self.split, **self.opts)

    def batch(self, update: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        exs = self.examples(size, seed=self.seed * 1_000_003 + update)
        return make_batch([self.encode(e) for e in exs], self.tok.pad_id)


def make_batch(items: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded inputs [B, L] and targets [B, L] (IGNORE on prompt and padding)."""
    L = max(len(p) + len(r) for p, r in items) - 1
    ids = torch.full((len(items), L), pad_id, dtype=torch.long)
    tgt = torch.full((len(items), L), IGNORE, dtype=torch.long)
    for i, (p, r) in enumerate(items):
        seq = p + r
        ids[i, :len(seq) - 1] = torch.tensor(seq[:-1])
        tgt[i, len(p) - 1:len(seq) - 1] = torch.tensor(r)
    return ids, tgt


# ------------------------------------------------------------------------------------------ training
def train(kind: str, model, stream: Stream, recipe: Recipe, lr: float, minutes: float, bf16: bool,
          log_prefix: str) -> dict:
    """Train `model` for `minutes` of wall clock on `stream`; returns what it did."""
    opt = C.build_optimizer(model, lr, recipe.weight_decay, (0.9, 0.95), torch.device("cpu"))
    params = [p for p in model.parameters() if p.requires_grad]
    budget, t0 = 60 * minutes, time.perf_counter()
    update, tokens, losses = 0, 0, []
    model.train()
    while (elapsed := time.perf_counter() - t0) < budget:
        frac = elapsed / budget
        for g in opt.param_groups:
            g["lr"] = C.lr_at(update, lr, recipe.warmup, 1 << 62, 0.1, frac)  # the cosine follows the budget
        ids, tgt = stream.batch(update, recipe.batch_size)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if kind == "looplm":
                n, k = depth_for_update(recipe, model.config, stream.seed, update, frac)
                loss = recipe_loss(model, ids, tgt, n, k, recipe)
            else:
                logits = model(ids)
                loss = F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(), ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, recipe.clip)
        opt.step()
        losses.append(loss.item())
        tokens += int((tgt != IGNORE).sum())
        update += 1
        if update % 50 == 0:
            print(f"{log_prefix} update {update} {elapsed / 60:.1f} min loss {sum(losses[-50:]) / 50:.4f} "
                  f"lr {opt.param_groups[0]['lr']:.2e}", flush=True)
    model.eval()
    return {"updates": update, "answer_tokens": tokens, "minutes": (time.perf_counter() - t0) / 60,
            "final_train_loss": sum(losses[-50:]) / max(1, len(losses[-50:])), "lr": lr}


# ------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def val_loss(kind: str, model, batches, depth: int | None = None) -> float:
    tot, cnt = 0.0, 0
    for ids, tgt in batches:
        logits = model(ids, depth).logits if kind == "looplm" else model(ids)
        tot += F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(), ignore_index=IGNORE,
                               reduction="sum").item()
        cnt += int((tgt != IGNORE).sum())
    return tot / cnt


@torch.no_grad()
def decode(kind: str, model, stream: Stream, examples: list, depth: int | None, batch: int) -> list[str]:
    from looplm.generate import GenerationConfig, generate

    tok = stream.tok
    prompts = [stream.encode(e)[0] for e in examples]
    max_new = max(len(stream.encode(e)[1]) for e in examples) + 8
    outs: list[list[int] | None] = [None] * len(examples)
    if kind == "looplm":
        for i in range(0, len(prompts), batch):
            res = generate(model, prompts[i:i + batch], GenerationConfig(
                max_new_tokens=max_new, steps=depth, stop_tokens=(tok.eos_id,), pad_id=tok.pad_id))
            outs[i:i + batch] = res.tokens
    else:  # equal-length groups (plain_gpt.greedy_decode has no padding)
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(len(p), []).append(i)
        for idx in groups.values():
            for j in range(0, len(idx), batch):
                rows = idx[j:j + batch]
                new = greedy_decode(model, torch.tensor([prompts[r] for r in rows]), max_new)
                for r, seq in zip(rows, new.tolist()):
                    outs[r] = seq[:seq.index(tok.eos_id)] if tok.eos_id in seq else seq
    return [tok.decode(o, skip_special=True) for o in outs]


def score_groups(kind, model, stream_by_group: dict, items: dict, depth, batch) -> dict:
    """{group: {"exact": .., "by_size": {n: ..}, "items": N}} for each size group."""
    out = {}
    for g, exs in items.items():
        st = stream_by_group[g]
        texts = decode(kind, model, st, exs, depth, batch)
        by: dict[int, list[float]] = {}
        for e, t in zip(exs, texts):
            by.setdefault(e.meta["n"], []).append(st.task.score(t, e)["score"])
        flat = [s for v in by.values() for s in v]
        out[g] = {"exact": sum(flat) / len(flat), "items": len(flat),
                  "by_size": {str(n): sum(v) / len(v) for n, v in sorted(by.items())}}
    return out


# ------------------------------------------------------------------------------------------ models
def looplm_model(args, vocab: int):
    from looplm.commands import parse_overrides
    from looplm.config import get_preset
    from looplm.model import RecursiveCausalLM

    cfg = get_preset("tiny", **{"vocab_size": -(-vocab // 64) * 64, **parse_overrides(args.overrides)})
    torch.manual_seed(args.seed)
    return RecursiveCausalLM(cfg)


def gpt_model(args, cfg, seq_len: int):
    import dataclasses

    gcfg = matched_config(cfg, cfg.recurrence, seq_len)
    if args.gpt_layers:
        gcfg = dataclasses.replace(gcfg, n_layers=args.gpt_layers)
    torch.manual_seed(args.seed)
    return PlainGPT(gcfg)


def run_model(kind: str, args, recipe: Recipe, tok, train_stream, val, lr: float, minutes: float, seq_len: int):
    model = looplm_model(args, tok.vocab_size)
    if kind == "looplm":
        from looplm.train.common import freeze_untrained
        freeze_untrained(model)
    else:
        model = gpt_model(args, model.config, seq_len)
    info = train(kind, model, train_stream, recipe, lr, minutes, args.bf16, f"[{kind} lr={lr:g}]")
    return model, info


def main(argv=None) -> int:
    from looplm.tokenizer import train_default_tokenizer

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = Recipe.from_overrides(args.recipe, batch_size=args.batch_size, warmup=args.warmup)
    spec = TASKS[args.task]
    tok = train_default_tokenizer()
    train_stream = Stream(tok, args.task, "train", spec["trained"], args.seed)
    eval_streams = {g: Stream(tok, args.task, "eval", spec[g], args.seed) for g in ("trained", "larger")}
    items = {g: st.examples(args.eval_items, seed=10_000 + args.seed) for g, st in eval_streams.items()}
    # held-out loss (the sweep's criterion and val_loss_by_depth) on other eval-split items than those scored
    val_items = eval_streams["trained"].examples(min(args.eval_items, 200), seed=20_000 + args.seed)
    val = [make_batch([eval_streams["trained"].encode(e) for e in val_items[i:i + 50]], tok.pad_id)
           for i in range(0, len(val_items), 50)]
    seq_len = int(sum((ids.shape[1] for ids, _ in val)) / len(val))
    cfg = looplm_model(args, tok.vocab_size).config
    R = cfg.recurrence
    depths = [int(x) for x in args.depths.split(",")] if args.depths else [max(1, R // 2), R, 2 * R, 4 * R]
    results: dict = {"task": args.task, "minutes": args.minutes, "threads": args.threads, "seed": args.seed,
                     "recipe": recipe.to_dict(), "model_overrides": args.overrides, "machine": machine_info(),
                     "command": command_line(), "eval_items_per_group": args.eval_items, "models": {}}
    sweep = [float(x) for x in args.sweep.split(",") if x]
    for kind in args.models.split(","):
        lr = (args.lr or recipe.lr) if kind == "looplm" else (args.gpt_lr or recipe.gpt_lr)
        if sweep:
            trial = {}
            for cand in sweep:
                m, _ = run_model(kind, args, recipe, tok, train_stream, val, cand, args.sweep_minutes, seq_len)
                trial[cand] = val_loss(kind, m, val, R if kind == "looplm" else None)
                print(f"[sweep {kind}] lr {cand:g}: held-out loss {trial[cand]:.4f}", flush=True)
            lr = min(trial, key=trial.get)
            results.setdefault("sweep", {})[kind] = {str(k): v for k, v in trial.items()}
        model, info = run_model(kind, args, recipe, tok, train_stream, val, lr, args.minutes, seq_len)
        t0 = time.perf_counter()
        rec = dict(info)
        if kind == "looplm":
            rec["val_loss_by_depth"] = {str(d): val_loss(kind, model, val, d) for d in depths}
            rec["by_depth"] = {}
            for d in depths:
                sc = score_groups(kind, model, eval_streams, items, d, args.eval_batch)
                rec["by_depth"][str(d)] = {g: v["exact"] for g, v in sc.items()}
                rec["by_depth_size"] = rec.get("by_depth_size", {}) | {str(d): {g: v["by_size"] for g, v in sc.items()}}
                print(f"[looplm] depth {d}: exact trained {sc['trained']['exact']:.3f} larger "
                      f"{sc['larger']['exact']:.3f}", flush=True)
            rec["exact"] = rec["by_depth"][str(R)]["trained"]
            rec["by_size"] = rec["by_depth_size"][str(R)]["trained"] | rec["by_depth_size"][str(R)]["larger"]
            rec["params"] = model.param_counts()
            if args.out:
                save_looplm(model, tok, args, recipe, info)
        else:
            rec["val_loss"] = val_loss(kind, model, val)
            sc = score_groups(kind, model, eval_streams, items, None, args.eval_batch)
            rec["exact"] = sc["trained"]["exact"]
            rec["exact_larger"] = sc["larger"]["exact"]
            rec["by_size"] = sc["trained"]["by_size"] | sc["larger"]["by_size"]
            rec["layers"] = model.config.n_layers
            rec["params"] = sum(p.numel() for p in model.parameters())
        rec["eval_seconds"] = time.perf_counter() - t0
        results["models"][kind] = rec
        print(json.dumps({kind: {k: v for k, v in rec.items() if k != "by_depth_size"}}, indent=1), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.record and {"looplm", "gpt"} <= set(results["models"]):
        from benchmarks.common import write_record
        from benchmarks.make_results import learning_figures

        write_record(f"bench_learning-{args.task}", learning_figures(results), script=__file__,
                     info=results["machine"], command=results["command"],
                     title=f"learning {args.task}: looplm vs a FLOP-matched plain GPT, {args.minutes:g} minutes each")
    return 0


def save_looplm(model, tok, args, recipe: Recipe, info: dict) -> None:
    from looplm.checkpoint import save_checkpoint

    save_checkpoint(args.out, model, tok, meta={"bench_learning": {"task": args.task, "recipe": recipe.to_dict(),
                                                                   **info}})


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
