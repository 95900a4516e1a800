"""End to end on CPU: short SFT, then seeded GRPO (`looplm.train.grpo.train`) raises held-out greedy pass@1.

Setup (all seeded, one torch thread, three seeds, ~1.5 minutes on a 2-core box):
- task: `arith` with 1-digit operands and `+` only (the 100 problems a + b, a, b in 0..9), split by a
  seeded shuffle into 70 training and 30 held-out problems; GRPO never sees the held-out ones (the
  trainer itself refuses overlapping prompt files);
- model: a ~0.2M-parameter RecursiveCausalLM (d=64, 1 prelude / 2 core / 1 coda blocks, R=2);
- SFT (`looplm.train.sft.train`, 300 updates, loss on response tokens via `encode_chat` masks) on every
  training problem *twice*: once with the correct final line `#### c` and once with an off-by-one
  final line `#### c+1`. The SFT model therefore writes the equation `a + b = c` and then hesitates
  between `c` and `c+1`: it is partly right (greedy pass@1 about 0.2) in a way an outcome reward can
  fix. With clean labels the errors are arithmetic facts, which GRPO at this scale learns far too
  slowly for a test (measured: 150 GRPO steps moved the sampled reward from 0.42 to 0.43);
- GRPO: 40 steps of 8 prompts x 8 completions at temperature 1, beta 0.04, outcome reward, lr 5e-5
  (50x the report's 1e-6: at 1e-6 a 0.2M-parameter model does not move in 40 steps; at >= 1e-4
  Adam's first steps wreck this small model).

The property: greedy pass@1, averaged over three seeds, rises on the held-out problems (by >= 0.1) and
on the training problems (by >= 0.2). A single seed is not enough: one trajectory is chaotic, and a
change that only moves gradients by float rounding (~1e-6 relative; the forward was bit-identical)
turned seed 0 from held-out 0.37 -> 0.60 into 0.30 -> 0.27, while seeds 1-4 measured +0.23, +0.44,
0.00 and +0.33. A GRPO whose update had the wrong sign, ignored the advantages or never reached the
weights would leave the mean where it was or lower it. Also checked, per seed: the trainer's own
end-of-run held-out eval (on its in-memory policy, the one that samples the rollouts) equals the same
eval of the saved final checkpoint.
"""

from __future__ import annotations

import json
import random
import time

import pytest
import torch

import looplm.train.grpo as G
import looplm.train.grpo_rollouts as GR
from looplm.checkpoint import load_checkpoint, save_checkpoint
from looplm.config import ModelConfig
from looplm.model import RecursiveCausalLM
from looplm.tasks.arith import format_sample
from looplm.train.sft import SFTConfig
from looplm.train.sft import train as sft_train

pytestmark = pytest.mark.slow

R = 2  # recurrence steps for SFT, rollouts, loss and evaluation
SEEDS = (0, 1, 2)  # one trajectory is chaotic (1e-6 gradient rounding changes its outcome): judge the mean


def small_config(vocab_size: int):
    """Explicit (not the `tiny` preset, which moves with the research): the layout this test was tuned on."""
    return ModelConfig(vocab_size=vocab_size, max_seq_len=64, d_model=64, n_heads=2, head_dim=32, n_kv_heads=1,
                       mlp_hidden=128, n_prelude=1, n_core=2, n_coda=1, core_mlp_hidden=128, kv_latent_dim=16,
                       rope_dim=8, core_kv="anchored", mod_rank=2, step_emb_dim=16, recurrence=R, max_steps=8,
                       n_spec_heads=0)


def problems() -> tuple[list[dict], list[dict]]:
    """(train, held-out) rows {prompt, answer (full response), gold} of 1-digit additions."""
    pairs = [(a, b) for a in range(10) for b in range(10)]
    random.Random(0).shuffle(pairs)
    rows = [dict(zip(("prompt", "answer", "gold"), format_sample(a, "+", b))) for a, b in pairs]
    return rows[30:], rows[:30]


def write_jsonl(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def sft_rows(train: list[dict]) -> list[dict]:
    """Every problem twice: the correct response and one whose final answer is off by one."""
    out = []
    for r in train:
        wrong = r["answer"].split("####")[0] + f"#### {int(r['gold']) + 1}"
        out += [{"prompt": r["prompt"], "response": r["answer"], "domain": "arith"},
                {"prompt": r["prompt"], "response": wrong, "domain": "arith"}]
    return out


def rl_rows(rows: list[dict]) -> list[dict]:
    return [{"prompt": r["prompt"], "answer": r["gold"], "task": "arith"} for r in rows]


def greedy_pass1(ckpt, rows: list[dict], cfg: G.GRPOConfig) -> float:
    model, tok, _ = load_checkpoint(ckpt)
    return GR.pass_counts(model, tok, rows, cfg, R)[0] / len(rows)


def run_seed(seed: int, tmp_path, tok) -> dict:
    """SFT then GRPO with every seed set to `seed`: pass@1 before/after, held-out and training, and checks."""
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    init = save_checkpoint(tmp_path / "init", RecursiveCausalLM(small_config(320)), tok)
    train, held = problems()
    sft_out = tmp_path / "sft"
    sft_train(SFTConfig(data=write_jsonl(tmp_path / "sft.jsonl", sft_rows(train)), init=str(init), out=str(sft_out),
                        steps=300, batch_size=16, seq_len=48, lr=3e-3, warmup=20, eval_every=0, save_every=10**6,
                        keep=1, threads=1, peak_flops=1e10, progress=False, log_every=10**6, seed=seed))
    cfg = G.GRPOConfig(init=str(sft_out / "final"), out=str(tmp_path / "grpo"),
                       prompts=write_jsonl(tmp_path / "train.jsonl", rl_rows(train)),
                       eval_prompts=write_jsonl(tmp_path / "held.jsonl", rl_rows(held)), eval_n=len(held),
                       eval_every=40, pass_k=2, group_size=8, prompts_per_step=8, max_new_tokens=16, lr=5e-5,
                       beta=0.04, temperature=1.0, steps=40, save_every=0, threads=1, seed=seed, log_every=10)
    r = {"held": greedy_pass1(cfg.init, rl_rows(held), cfg), "train": greedy_pass1(cfg.init, rl_rows(train), cfg)}
    last = G.train(cfg)["last"]
    r["held_after"] = greedy_pass1(tmp_path / "grpo" / "final", rl_rows(held), cfg)
    r["train_after"] = greedy_pass1(tmp_path / "grpo" / "final", rl_rows(train), cfg)
    recs = [x for x in map(json.loads, (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines())
            if x["type"] == "train"]
    r.update(steps=len(recs), kl=last["kl"], in_memory_eval=last["eval/pass@1"], seconds=time.perf_counter() - t_start)
    r["summary"] = (f"seed {seed}: held-out pass@1 {r['held']:.2f} -> {r['held_after']:.2f}; training-prompt pass@1 "
                    f"{r['train']:.2f} -> {r['train_after']:.2f}; final kl {r['kl']:.4f}; {r['seconds']:.0f}s")
    print(r["summary"])
    assert r["steps"] == cfg.steps
    assert 0 < r["kl"] < 1.0, f"the policy should move a little from the reference, not run away: {r['summary']}"
    assert r["in_memory_eval"] == pytest.approx(r["held_after"]), (
        f"the trainer's held-out eval of its in-memory policy ({r['in_memory_eval']:.3f}) differs from the same eval "
        f"of the saved final checkpoint ({r['held_after']:.3f}): the in-memory model decodes with stale state (e.g. a "
        f"no-grad cache that in-place optimizer updates did not invalidate), so rollouts sample a different policy")
    return r


def test_grpo_raises_held_out_pass_at_1_after_short_sft(tmp_path, train_tokenizer):
    tok, _ = train_tokenizer
    runs = [run_seed(seed, tmp_path / f"seed{seed}", tok) for seed in SEEDS]
    summary = "; ".join(r["summary"] for r in runs)
    mean = lambda key: sum(r[key] for r in runs) / len(runs)  # noqa: E731
    assert all(0.05 <= r["held"] <= 0.7 and 0.05 <= r["train"] <= 0.7 for r in runs), \
        f"SFT start is not partly right: {summary}"
    assert mean("held_after") >= mean("held") + 0.1, summary
    assert mean("train_after") >= mean("train") + 0.2, summary
