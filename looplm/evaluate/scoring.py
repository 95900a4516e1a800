"""Scoring one eval task on a loaded model: batched greedy generation + task scorer, or chat loss.

`eval_generation(model, tokenizer, examples, task, spec)` formats each prompt (`items.format_prompt`),
sorts the items by prompt length (less left padding), decodes them in batches with
`looplm.generate.generate` (KV cache, greedy, stop at `<|eos|>`; adaptive exit / speculative
decoding when `spec` asks), decodes the new tokens (the final `<|eos|>` removed, other special tokens
kept) and scores each completion with the task's `score`. It returns per-sample records in item
order, the mean of every score key, and a time split into tokenisation, generation and scoring.

`eval_chat(model, tokenizer, examples, steps, batch_size)` is the response loss of Alpaca-format
pairs: each pair is encoded with `tokenizer.encode_chat` (loss mask 1 exactly on the response tokens
and the final `<|eos|>`), right-padded, run through the model at `steps` steps without a cache, and
the cross-entropy of each masked target token is summed. `loss` is the mean over all response tokens
(token-weighted), `ppl = exp(loss)`. A pair longer than the context keeps its first `max_seq_len`
tokens (counted in `truncated`); a pair whose prompt leaves no response token in the context is
left out of the loss and counted in `too_long`.

An item whose prompt alone fills the model context (no room for one new token) is not decoded: its
completion is empty, it scores 0 and is counted in `too_long` (shown in the table).

Simplification: every batch gets one generation budget, `min(max_new_tokens, context left after the
batch's longest prompt)`; items whose own budget was cut this way are counted (`budget_limited`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F

from looplm.evaluate.items import EVAL_TASKS, format_prompt
from looplm.generate import GenerationConfig, generate
from looplm.tasks import get_task
from looplm.tasks.base import Example


@dataclass
class GenSpec:
    """How to decode one task: depth, budget, batch size and the optional speed-ups."""

    steps: int
    max_new_tokens: int
    batch_size: int = 32
    fmt: str = "chat"
    halt_threshold: float | None = None
    min_steps: int = 1
    speculative: bool = False


Progress = Callable[[Iterable, str, int], Iterable]


def no_progress(it: Iterable, desc: str, total: int) -> Iterable:
    return it


def tqdm_progress(it: Iterable, desc: str, total: int) -> Iterable:
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total, leave=False, dynamic_ncols=True)


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i:i + size] for i in range(0, len(order), size)]


def completion_text(tokenizer: Any, tokens: list[int]) -> str:
    """Decoded new tokens with a final `<|eos|>` removed (other special tokens kept visible)."""
    if tokens and tokens[-1] == tokenizer.eos_id:
        tokens = tokens[:-1]
    return tokenizer.decode(tokens, skip_special=False)


def eval_generation(model: Any, tokenizer: Any, examples: list[Example], task: str, spec: GenSpec,
                    progress: Progress = no_progress) -> dict[str, Any]:
    """Records, mean metrics and timings of one generative task at `spec.steps` steps."""
    scorer = get_task(EVAL_TASKS[task]).score
    ctx = model.config.max_seq_len
    reserve = model.config.n_spec_heads + 1 if spec.speculative else 0
    t0 = time.perf_counter()
    prompts = [format_prompt(tokenizer, ex, spec.fmt) for ex in examples]
    t_tok = time.perf_counter() - t0
    fits = [i for i, (_, ids) in enumerate(prompts) if len(ids) + 1 + reserve <= ctx]
    order = sorted(fits, key=lambda i: len(prompts[i][1]))
    outputs: dict[int, tuple[list[int], list[int], list[int], int]] = {}
    t_gen = 0.0
    batches = _batches(order, spec.batch_size)
    for batch in progress(batches, f"{task} @ {spec.steps} steps", len(batches)):
        longest = max(len(prompts[i][1]) for i in batch)
        budget = min(spec.max_new_tokens, ctx - longest - reserve)
        cfg = GenerationConfig(max_new_tokens=budget, steps=spec.steps, stop_tokens=(tokenizer.eos_id,),
                               pad_id=tokenizer.pad_id, halt_threshold=spec.halt_threshold,
                               min_steps=spec.min_steps, speculative=spec.speculative)
        t1 = time.perf_counter()
        out = generate(model, [prompts[i][1] for i in batch], cfg)
        t_gen += time.perf_counter() - t1
        accepts = out.accept_counts or [[] for _ in batch]
        for j, i in enumerate(batch):
            outputs[i] = (out.tokens[j], out.exit_steps[j], accepts[j], budget)
    t2 = time.perf_counter()
    records = [_record(i, ex, prompts[i][0], tokenizer, outputs.get(i), scorer, spec)
               for i, ex in enumerate(examples)]
    t_score = time.perf_counter() - t2
    seconds = t_tok + t_gen + t_score
    return {"metrics": _summarise(records, spec), "records": records,
            "time": {"tokenize": t_tok, "generate": t_gen, "score": t_score, "total": seconds,
                     "items_per_s": len(examples) / seconds if seconds > 0 else None}}


def _record(i: int, ex: Example, prompt: str, tokenizer: Any, output: tuple, scorer: Callable,
            spec: GenSpec) -> dict[str, Any]:
    too_long = output is None  # the prompt alone fills the context: nothing generated, scored as ""
    tokens, exits, accepts, budget = output or ([], [], [], 0)
    text = completion_text(tokenizer, tokens)
    scores = scorer(text, ex)
    rec = {"id": i, "prompt": prompt, "completion": text, "gold": ex.gold, "score": scores["score"],
           "scores": scores, "new_tokens": len(tokens),
           "finished": bool(tokens) and tokens[-1] == tokenizer.eos_id,
           "max_new_tokens": budget, "budget_limited": budget < spec.max_new_tokens, "too_long": too_long,
           "exit_steps": [int(e) for e in exits],
           "mean_exit_step": sum(exits) / len(exits) if exits else None}
    if spec.speculative:
        rec["accept_counts"] = [int(a) for a in accepts]
    return rec


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _summarise(records: list[dict[str, Any]], spec: GenSpec) -> dict[str, Any]:
    keys = list(records[0]["scores"]) if records else ["score"]
    metrics: dict[str, Any] = {k: _mean([r["scores"][k] for r in records]) for k in keys}
    exits = [e for r in records for e in r["exit_steps"]]
    metrics.update(n=len(records), new_tokens_mean=_mean([r["new_tokens"] for r in records]),
                   finished_rate=_mean([float(r["finished"]) for r in records]),
                   budget_limited=sum(r["budget_limited"] and not r["too_long"] for r in records),
                   too_long=sum(r["too_long"] for r in records),
                   exit_steps_mean=_mean(exits), steps=spec.steps, max_new_tokens=spec.max_new_tokens,
                   format=spec.fmt)
    if spec.speculative:
        acc = [a for r in records for a in r["accept_counts"]]
        metrics["tokens_per_verify_pass"] = _mean(acc)
    return metrics


@torch.no_grad()
def eval_chat(model: Any, tokenizer: Any, examples: list[Example], steps: int, batch_size: int = 16,
              progress: Progress = no_progress) -> dict[str, Any]:
    """Response loss / perplexity of prompt-response pairs (see the module docstring)."""
    ctx = model.config.max_seq_len
    device = model.embed.weight.device
    t0 = time.perf_counter()
    encoded = []
    for ex in examples:
        ids, mask = tokenizer.encode_chat(ex.prompt, ex.answer)
        encoded.append((ids[:ctx], mask[:ctx], len(ids) > ctx))
    scorable = [i for i, (_, mask, _) in enumerate(encoded) if sum(mask[1:]) > 0]
    t_tok = time.perf_counter() - t0
    losses: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    was_training = model.training
    model.eval()
    t1 = time.perf_counter()
    batches = _batches(scorable, batch_size)
    try:
        for batch in progress(batches, f"chat @ {steps} steps", len(batches)):
            for i, pair in zip(batch, _batch_loss(model, [encoded[i] for i in batch], steps, tokenizer.pad_id, device)):
                losses[i] = pair
    finally:
        model.train(was_training)
    t_fwd = time.perf_counter() - t1
    records = [{"id": i, "prompt": ex.prompt, "response": ex.answer, "loss": s / k if k else None, "tokens": k,
                "truncated": encoded[i][2], "too_long": k == 0} for i, (ex, (s, k)) in enumerate(zip(examples, losses))]
    total, count = sum(s for s, _ in losses), sum(k for _, k in losses)
    if count == 0:
        raise ValueError(f"chat: every one of the {len(examples)} pairs has a prompt that fills the model "
                         f"context max_seq_len={ctx}; no response token to score")
    loss = total / count
    seconds = t_tok + t_fwd
    metrics = {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": count, "n": len(examples),
               "truncated": sum(r["truncated"] and not r["too_long"] for r in records),
               "too_long": sum(r["too_long"] for r in records), "steps": steps,
               "sample_loss_mean": _mean([r["loss"] for r in records if r["loss"] is not None])}
    return {"metrics": metrics, "records": records,
            "time": {"tokenize": t_tok, "forward": t_fwd, "total": seconds,
                     "items_per_s": len(examples) / seconds if seconds > 0 else None}}


def _batch_loss(model: Any, rows: list[tuple[list[int], list[int], bool]], steps: int, pad_id: int,
                device: Any) -> list[tuple[float, int]]:
    """(summed response loss, response tokens) per row; rows right-padded (causal: pads see nothing
    earlier rows need, and are masked out of the loss)."""
    L = max(len(ids) for ids, _, _ in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.bool)
    for r, (x, m, _) in enumerate(rows):
        ids[r, :len(x)] = torch.tensor(x)
        mask[r, :len(m)] = torch.tensor(m, dtype=torch.bool)
    ids, mask = ids.to(device), mask.to(device)
    logits = model(ids, steps).logits[:, :-1].float()  # [B, L-1, V]: predicts ids[:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # [B, L-1]
    m = mask[:, 1:]
    sums = (nll * m).sum(dim=1)
    return [(float(s), int(k)) for s, k in zip(sums.tolist(), m.sum(dim=1).tolist())]
