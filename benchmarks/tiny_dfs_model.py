"""Train (once) the tiny model the speed benchmarks run on: `tiny` preset, verbal DFS traces, CPU.

    python benchmarks/tiny_dfs_model.py --out runs/bench/tiny-dfs [--minutes 25]

`ensure_model(dir, minutes)` returns `dir` if it already holds a checkpoint, else trains one: the
default tokenizer (vocab 2048), `get_preset("tiny", max_seq_len=256)`, batches of 16 chat-formatted
`dfs_verbal` examples (train split), loss on response tokens only, AdamW (lr 3e-3, warm-up,
cosine decay, clip 1), recurrence steps per batch n ~ U{2..10} with backprop through the last 4
(the spread of depths is what lets intermediate states predict well, i.e. what AdaExit exploits),
for a fixed wall-clock budget. The checkpoint's meta records the steps trained, the final loss and
the exact-answer accuracy of greedy decoding on 32 eval-split prompts, and a `check_loss` on a fixed
batch that `has_checkpoint` recomputes: a checkpoint whose model code changed meaning since (same
tensor names, different function) is retrained rather than benchmarked.

Simplification: a stand-in for `looplm sft` (built by the training helper), kept here so the
benchmarks can run on their own; one thread, no data loader, no resumption.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from looplm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from looplm.config import get_preset  # noqa: E402
from looplm.generate import GenerationConfig, generate  # noqa: E402
from looplm.model import RecursiveCausalLM  # noqa: E402
from looplm.tasks import get_task  # noqa: E402
from looplm.tokenizer import train_default_tokenizer  # noqa: E402

DEFAULT_DIR = ROOT / "runs" / "bench" / "tiny-dfs"
DEFAULT_MINUTES = 25.0  # on the shared 2-core box: ~1000 steps, 25% exact DFS answers
BATCH, LR, WARMUP, BPTT, MIN_N, MAX_N = 16, 3e-3, 30, 4, 2, 10


def check_loss(model, tok) -> float:
    """Response loss on one fixed batch at 8 steps: recorded at save time, recomputed at load time, so a
    change of the model code that alters what the weights compute is detected."""
    ids, tgt = next(batches(tok, seed=999))
    with torch.no_grad():
        return F.cross_entropy(model(ids, 8).logits.flatten(0, 1), tgt.flatten(), ignore_index=-100).item()


def has_checkpoint(path: Path) -> bool:
    """Whether `path` holds a checkpoint the current model code loads and computes as at save time
    (prints why not)."""
    if not Path(path).is_dir():
        return False
    try:
        model, tok, meta = load_checkpoint(path)
    except CheckpointError as e:
        print(f"{path}: unusable checkpoint ({e})", file=sys.stderr)
        return False
    if "check_loss" not in meta:
        return True  # not written by this script (e.g. a calibrated copy): trust it
    now = check_loss(model, tok)
    if abs(now - meta["check_loss"]) > 1e-3 * max(1.0, meta["check_loss"]):
        print(f"{path}: the model code changed since saving (check loss {meta['check_loss']:.4f} -> {now:.4f})",
              file=sys.stderr)
        return False
    return True


def ensure_model(path: str | Path = DEFAULT_DIR, minutes: float = DEFAULT_MINUTES, seed: int = 0) -> Path:
    """`path` if it holds a loadable checkpoint, else train one for `minutes` of wall clock and save it
    there (replacing an unloadable one, e.g. saved before a model change)."""
    path = Path(path)
    if has_checkpoint(path):
        return path
    print(f"training the tiny DFS benchmark model for {minutes:g} min -> {path}", file=sys.stderr)
    train(path, minutes, seed)
    return path


def batches(tok, seed: int):
    """Endless batches (ids [B, L], targets [B, L] with -100 off the response) of dfs_verbal examples."""
    stream = get_task("dfs_verbal").iter_examples(seed, split="train")
    while True:
        rows = [tok.encode_chat(ex.prompt, ex.answer) for ex, _ in zip(stream, range(BATCH))]
        L = max(len(ids) for ids, _ in rows)
        ids = torch.full((BATCH, L), tok.pad_id, dtype=torch.long)
        tgt = torch.full((BATCH, L), -100, dtype=torch.long)
        for i, (x, m) in enumerate(rows):
            ids[i, :len(x)] = torch.tensor(x)
            y = torch.tensor(x[1:] + [-100])
            keep = torch.tensor(m[1:] + [0], dtype=torch.bool)
            tgt[i, :len(x)] = torch.where(keep, y, torch.full_like(y, -100))
        yield ids, tgt


def train(path: Path, minutes: float, seed: int) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok = train_default_tokenizer(vocab_size=2048, seed=0)
    model = RecursiveCausalLM(get_preset("tiny", vocab_size=2048, max_seq_len=256))
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01, betas=(0.9, 0.95))
    budget, t0, step, ema = minutes * 60.0, time.perf_counter(), 0, None
    for ids, tgt in batches(tok, seed):
        frac = (time.perf_counter() - t0) / budget
        if frac >= 1.0:
            break
        lr = LR * min(1.0, (step + 1) / WARMUP) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        n = rng.randint(MIN_N, MAX_N)
        logits = model(ids, n, grad_steps=BPTT).logits
        loss = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        step += 1
        if step % 25 == 0:
            print(f"step {step} n={n} loss {ema:.3f} lr {lr:.2e} {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    model.eval()
    acc = dfs_accuracy(model, tok, 32)
    print(f"done: {step} steps, loss {ema:.3f}, eval exact answers {acc:.2%}", file=sys.stderr)
    save_checkpoint(path, model, tok, meta={"stage": "bench-tiny-dfs", "train_steps": step, "train_minutes": minutes,
                                           "final_loss_ema": ema, "dfs_eval_exact": acc, "batch": BATCH,
                                           "steps_range": [MIN_N, MAX_N], "bptt": BPTT,
                                           "check_loss": check_loss(model, tok)})


def dfs_accuracy(model, tok, n: int) -> float:
    task = get_task("dfs_verbal")
    exs = task.generate(n, seed=12345, split="eval")
    prompts = [tok.encode(tok.chat_prompt(e.prompt)) for e in exs]
    out = generate(model, prompts, GenerationConfig(max_new_tokens=96, stop_tokens=(tok.eos_id,), pad_id=tok.pad_id))
    return sum(task.score(tok.decode(t, skip_special=True), e)["score"] for t, e in zip(out.tokens, exs)) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_DIR), help=f"checkpoint directory (default: {DEFAULT_DIR})")
    ap.add_argument("--minutes", type=float, default=DEFAULT_MINUTES,
                    help="training wall-clock budget (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(ensure_model(args.out, args.minutes, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
