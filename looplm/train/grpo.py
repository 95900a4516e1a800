"""GRPO (DeepSeekMath / TRL objective) with the outcome or the programmatic process reward.

One explicit loop; every step:

    rows     <- `prompts_per_step` prompts drawn by a generator keyed by (seed, step)
    rollout  <- the KV-cached batched generator, all prompts x G at once (G consecutive copies),
                sampled at `temperature`, stopped at EOS or `max_new_tokens`
    rewards  <- `looplm.rewards` (maths) or the task's scorer (DFS tasks), on the decoded text
    (optional) dynamic sampling: groups whose rewards are all equal are replaced by fresh prompts
    A        <- group_advantages(rewards, G, scale)
    for each of `iterations` updates:
        logp     = log_softmax(policy(seq) / T) at completion tokens   (EOS inside the mask, nothing after)
        old_logp = logp.detach() (one iteration) or the pre-update policy's log-probs
        ref_logp = the frozen reference (the --init weights) under no_grad
        loss     = grpo_loss(logp, old_logp, ref_logp, A, mask, beta, loss_type, eps_low, eps_high)
        AdamW step (clipped gradients)

Rollouts and the loss use the same number of recurrence steps. Resume is exact on CPU: prompts and
sampling seeds are pure functions of (seed, step), and the checkpoint carries the optimizer state.
The speculative and halt heads are frozen (they play no part in the policy's log-probs).

Simplification: the whole rollout batch (prompts x G sequences) goes through one forward pass per
update; there is no micro-batching.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from looplm.checkpoint import load_checkpoint, load_train_state
from looplm.config import ConfigError
from looplm.generate import GenerationConfig, generate
from looplm.grpo import group_advantages, grpo_loss, zero_std_groups
from looplm.rewards import outcome_reward, process_breakdown
from looplm.train.grpo_config import NUMERIC_TASKS, SCORED_TASKS, GRPOConfig
from looplm.train.common import build_optimizer, freeze_untrained, lr_at, set_lr
from looplm.train.rundir import (StopSignals, check_fresh_out, newest_resumable, resolve_init, save_final, save_step,
                                 write_run_config)

# ---------------------------------------------------------------------------------------- prompts
def _rows_from_task(task: str, n: int, seed: int, split: str) -> list[dict]:
    from looplm.tasks import get_task

    exs = get_task(task).generate(n, seed=seed, split=split)
    return [{"prompt": e.prompt, "answer": e.gold, "task": e.task} for e in exs]


def load_prompt_sets(cfg: GRPOConfig) -> tuple[list[dict], list[dict]]:
    """Training and held-out prompt rows, each {prompt, answer, task}."""
    from looplm.data.jsonl import check_overlap
    from looplm.data.rowsets import read_rl_rows

    if cfg.task:
        train = _rows_from_task(cfg.task, cfg.n_prompts, cfg.seed, "train")
        held = _rows_from_task(cfg.task, cfg.eval_n, cfg.seed + 1, "eval") if cfg.eval_n and not cfg.eval_prompts else []
    else:
        train = read_rl_rows(cfg.prompts)
        held = []
    if cfg.eval_prompts:
        held = read_rl_rows(cfg.eval_prompts)[: cfg.eval_n]
    if held:
        dup = check_overlap(train, held, key="prompt")
        if dup:
            raise ConfigError(f"{len(dup)} training prompts also appear in the held-out prompts "
                              f"(first: {train[dup[0]]['prompt'][:80]!r}); GRPO evaluation must be held out")
    for r in train + held:
        task = r["task"].replace("-", "_")
        if cfg.reward == "process" and task not in NUMERIC_TASKS:
            raise ConfigError(f"GRPOConfig.reward='process' needs numeric answers; task {r['task']!r} is not one of "
                              f"{', '.join(NUMERIC_TASKS)}")
        if task not in NUMERIC_TASKS + SCORED_TASKS:
            raise ConfigError(f"task {r['task']!r} has no reward; GRPO supports {', '.join(NUMERIC_TASKS + SCORED_TASKS)}")
    return train, held


# ---------------------------------------------------------------------------------------- rewards
def score_completion(text: str, row: dict, reward: str, mode: str) -> dict[str, float]:
    """The reward of one completion and its parts: reward, answer_correct (+ process counts)."""
    task = row["task"].replace("-", "_")
    if task in SCORED_TASKS:
        from looplm.tasks import get_task
        from looplm.tasks.base import Example

        ex = Example(prompt=row["prompt"], answer="", gold=row["answer"], task=task)
        ok = float(get_task(task).score(text, ex)["score"])
        return {"reward": ok, "answer_correct": ok}
    if reward == "outcome":
        r = outcome_reward(text, row["answer"])
        return {"reward": r, "answer_correct": r}
    b = process_breakdown(text, row["answer"], question=row["prompt"], mode=mode)
    return {"reward": b.total, "answer_correct": float(b.answer_correct), "process": b.process,
            "equations": b.equations, "correct": b.correct, "incorrect": b.incorrect, "trivial": b.trivial,
            "duplicate": b.duplicate, "ungrounded": b.ungrounded}


# ---------------------------------------------------------------------------------------- rollouts
@dataclass
class Rollout:
    rows: list[dict]  # one per prompt
    prompt_ids: list[list[int]]  # one per completion (G consecutive copies)
    completions: list[list[int]]
    truncated: list[bool]  # no EOS within max_new_tokens
    texts: list[str]
    scores: list[dict[str, float]]


RAW_TASKS = ("clrs_dfs",)  # trained in the pre-training format only: EOS + question, no chat template


def prompt_ids(tok, row: dict) -> list[int]:
    """A prompt's ids as the model saw such prompts in training (same rule as `looplm eval`)."""
    if row["task"].replace("-", "_") in RAW_TASKS:
        text = row["prompt"] if row["prompt"].endswith("\n") else row["prompt"] + "\n"
        return [tok.eos_id] + tok.encode(text)
    return tok.encode(tok.chat_prompt(row["prompt"]))


def rollout(model, tok, rows: list[dict], cfg: GRPOConfig, steps: int, seed: int) -> Rollout:
    G = cfg.group_size
    prompt_ids_ = [prompt_ids(tok, r) for r in rows for _ in range(G)]  # [P*G], G consecutive copies
    gen = generate(model, prompt_ids_, GenerationConfig(
        max_new_tokens=cfg.max_new_tokens, steps=steps, temperature=cfg.temperature, top_k=cfg.top_k,
        top_p=cfg.top_p, stop_tokens=(tok.eos_id,), seed=seed, pad_id=tok.pad_id, compile=cfg.compile_rollouts))
    texts = [tok.decode([t for t in c if t != tok.eos_id], skip_special=False) for c in gen.tokens]
    scores = [score_completion(texts[i], rows[i // G], cfg.reward, cfg.reward_mode) for i in range(len(texts))]
    return Rollout(rows, prompt_ids_, gen.tokens, [not f for f in gen.finished], texts, scores)


def sequence_batch(prompt_ids: list[list[int]], completions: list[list[int]], pad_id: int, device=None):
    """Right-padded prompt+completion ids [N, L] and a mask [N, L-1] over the *target* positions that
    are completion tokens (EOS included); right padding needs no attention mask under causality."""
    L = max(len(p) + len(c) for p, c in zip(prompt_ids, completions))
    ids = torch.full((len(prompt_ids), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompt_ids), L - 1)
    for i, (p, c) in enumerate(zip(prompt_ids, completions)):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
        mask[i, len(p) - 1: len(p) - 1 + len(c)] = 1.0  # logits at j predict token j + 1
    return ids.to(device), mask.to(device)


def token_logprobs(model, ids: torch.Tensor, steps: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(token_{j+1} | ..) / entropy at every position j, with the sampling temperature applied."""
    logits = model(ids[:, :-1], steps).logits.float() / temperature  # [N, L-1, V]
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, ids[:, 1:, None]).squeeze(-1)  # [N, L-1]
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


# ---------------------------------------------------------------------------------------- the loop
def _log(out: Path, rec: dict[str, Any]) -> None:
    with (out / "metrics.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                            for k, v in rec.items()}) + "\n")


def _draw(rows: list[dict], n: int, seed: int, step: int, attempt: int) -> list[dict]:
    rng = np.random.default_rng([seed, step, attempt])
    return [rows[i] for i in rng.choice(len(rows), size=n, replace=len(rows) < n)]


def _seed(seed: int, step: int, attempt: int) -> int:
    return int(np.random.default_rng([seed, step, attempt, 7]).integers(2**62))


def collect(model, tok, train_rows, cfg: GRPOConfig, steps: int, step: int) -> tuple[Rollout, dict]:
    """Rollouts for one step; with dynamic sampling, zero-variance groups are replaced by fresh prompts."""
    G, P = cfg.group_size, cfg.prompts_per_step
    ro = rollout(model, tok, _draw(train_rows, P, cfg.seed, step, 0), cfg, steps, _seed(cfg.seed, step, 0))
    info = {"resampled_groups": 0, "zero_std_kept": 0}
    if not cfg.dynamic_sampling:
        return ro, info
    for attempt in range(1, cfg.max_resample + 1):
        r = torch.tensor([s["reward"] for s in ro.scores])
        flat = zero_std_groups(r, G)
        if not bool(flat.any()):
            break
        fresh = rollout(model, tok, _draw(train_rows, int(flat.sum()), cfg.seed, step, attempt), cfg, steps,
                        _seed(cfg.seed, step, attempt))
        info["resampled_groups"] += int(flat.sum())
        ro = _replace_groups(ro, fresh, [i for i, f in enumerate(flat.tolist()) if f], G)
    info["zero_std_kept"] = int(zero_std_groups(torch.tensor([s["reward"] for s in ro.scores]), G).sum())
    return ro, info


def _replace_groups(ro: Rollout, fresh: Rollout, groups: list[int], G: int) -> Rollout:
    rows, fields = list(ro.rows), {k: list(getattr(ro, k)) for k in ("prompt_ids", "completions", "truncated",
                                                                        "texts", "scores")}
    for j, g in enumerate(groups):
        rows[g] = fresh.rows[j]
        for k, v in fields.items():
            v[g * G:(g + 1) * G] = getattr(fresh, k)[j * G:(j + 1) * G]
    return Rollout(rows, **fields)


def _stats(x: list[float], name: str) -> dict[str, float]:
    a = np.asarray(x, dtype=np.float64)
    return {f"{name}_mean": float(a.mean()), f"{name}_std": float(a.std()), f"{name}_min": float(a.min()),
            f"{name}_max": float(a.max())}


def reward_metrics(ro: Rollout, G: int) -> dict[str, float]:
    rewards = [s["reward"] for s in ro.scores]
    m = {**_stats(rewards, "reward"),
         "answer_correct_mean": float(np.mean([s["answer_correct"] for s in ro.scores])),
         "zero_std_share": float(zero_std_groups(torch.tensor(rewards), G).float().mean()),
         **_stats([len(c) for c in ro.completions], "completion_len"),
         "truncated_share": float(np.mean(ro.truncated))}
    if "process" in ro.scores[0]:  # hacking diagnostics
        eqs = sum(s["equations"] for s in ro.scores) or 1
        for k in ("correct", "incorrect", "trivial", "duplicate", "ungrounded"):
            m[f"steps_{k}_share"] = sum(s[k] for s in ro.scores) / eqs
        m.update(_stats([s["process"] for s in ro.scores], "process"))
        wrong = [s["process"] for s in ro.scores if not s["answer_correct"]]
        m["process_credit_wrong_answers"] = float(np.mean(wrong)) if wrong else 0.0
    return m


@torch.no_grad()
def evaluate_pass(model, tok, rows: list[dict], cfg: GRPOConfig, steps: int) -> dict[str, float]:
    """Greedy pass@1 and sampled pass@k (k samples at the training temperature) on held-out prompts."""
    prompts = [prompt_ids(tok, r) for r in rows]
    greedy = generate(model, prompts, GenerationConfig(max_new_tokens=cfg.max_new_tokens, steps=steps,
                                                       stop_tokens=(tok.eos_id,), pad_id=tok.pad_id))
    ok1 = [score_completion(tok.decode(t), r, "outcome", "strict")["answer_correct"] for t, r in zip(greedy.tokens, rows)]
    k = cfg.pass_k
    sampled = generate(model, [p for p in prompts for _ in range(k)], GenerationConfig(
        max_new_tokens=cfg.max_new_tokens, steps=steps, temperature=cfg.temperature, top_k=cfg.top_k,
        top_p=cfg.top_p, stop_tokens=(tok.eos_id,), seed=cfg.seed + 12345, pad_id=tok.pad_id))
    okk = [max(score_completion(tok.decode(sampled.tokens[i * k + j]), r, "outcome", "strict")["answer_correct"]
               for j in range(k)) for i, r in enumerate(rows)]
    return {"pass@1": float(np.mean(ok1)), f"pass@{k}": float(np.mean(okk)), "n": len(rows)}


def make_reference(policy):
    """The frozen reference: a copy of the starting policy, never updated."""
    return copy.deepcopy(policy).eval().requires_grad_(False)


def train(cfg: GRPOConfig) -> dict[str, Any]:
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    policy, tok, meta = load_checkpoint(resolve_init(cfg.init))
    steps = cfg.recurrence or policy.config.recurrence
    if steps > policy.config.max_steps:
        raise ConfigError(f"GRPOConfig.recurrence={steps} exceeds the model's max_steps={policy.config.max_steps}")
    train_rows, held = load_prompt_sets(cfg)
    ref = make_reference(policy) if cfg.beta > 0 else None
    freeze_untrained(policy)
    opt = build_optimizer(policy, cfg.lr, cfg.weight_decay, (0.9, 0.999), torch.device("cpu"))
    start = 0
    if cfg.resume:
        ck = newest_resumable(out)
        state = load_train_state(ck)
        saved_cfg = state["config"]
        diffs = [k for k in saved_cfg if k not in ("steps", "resume", "threads", "eval_every", "save_every", "keep",
                                                    "log_every") and saved_cfg[k] != asdict(cfg).get(k)]
        if diffs:
            raise ConfigError(f"--resume: the run in {out} used different settings: {', '.join(diffs)}")
        resumed, _, _ = load_checkpoint(ck)
        policy.load_state_dict(resumed.state_dict())
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
    else:
        check_fresh_out(out)
    out.mkdir(parents=True, exist_ok=True)
    write_run_config(out, {"stage": "grpo", **asdict(cfg)})
    policy.train()
    last: dict[str, Any] = {}
    with StopSignals() as stop:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            policy.eval()
            ro, info = collect(policy, tok, train_rows, cfg, steps, step)
            t_gen = time.perf_counter() - t0
            metrics = reward_metrics(ro, cfg.group_size)
            t_score = time.perf_counter() - t0 - t_gen
            policy.train()
            rewards = torch.tensor([s["reward"] for s in ro.scores], dtype=torch.float32)
            adv = group_advantages(rewards, cfg.group_size, scale=cfg.scale)
            ids, mask = sequence_batch(ro.prompt_ids, ro.completions, tok.pad_id)
            if cfg.mask_truncated:
                mask = mask * torch.tensor([0.0 if t else 1.0 for t in ro.truncated])[:, None]
            with torch.no_grad():
                ref_logp = token_logprobs(ref, ids, steps, cfg.temperature)[0] if ref is not None else None
                old_logp = token_logprobs(policy, ids, steps, cfg.temperature)[0] if cfg.iterations > 1 else None
            lr = lr_at(step, cfg.lr, cfg.warmup, cfg.steps, 1.0)
            set_lr(opt, lr)
            for _ in range(cfg.iterations):
                logp, entropy = token_logprobs(policy, ids, steps, cfg.temperature)
                loss, st = grpo_loss(logp, old_logp if old_logp is not None else logp.detach(), ref_logp, adv, mask,
                                     beta=cfg.beta, loss_type=cfg.loss_type, eps_low=cfg.eps_low,
                                     eps_high=cfg.eps_high, max_completion_length=cfg.max_new_tokens + 1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad],
                                                       cfg.grad_clip)
                if math.isfinite(loss.item()) and math.isfinite(gnorm.item()):
                    opt.step()
            m = mask.bool()
            rec = {"type": "grpo", "step": step + 1, "loss": loss.item(), "lr": lr, "grad_norm": gnorm.item(),
                   **metrics, **info, **{f"adv_{k}": v for k, v in _stats(adv.tolist(), "a").items()},
                   "kl": st.get("kl", 0.0), "clip_low": st["clip_low"], "clip_high": st["clip_high"],
                   "clip_region": st["clip_region"], "ratio_mean": st["ratio_mean"],
                   "entropy": float(entropy.detach()[m].mean()) if bool(m.any()) else 0.0,
                   "time_generate": t_gen, "time_score": t_score,
                   "time_train": time.perf_counter() - t0 - t_gen - t_score, "time_step": time.perf_counter() - t0}
            if cfg.eval_every and held and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
                policy.eval()
                rec.update({f"eval/{k}": v for k, v in evaluate_pass(policy, tok, held, cfg, steps).items()})
                policy.train()
            _log(out, rec)
            last = rec
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                print(f"grpo step {step + 1}/{cfg.steps} | loss {rec['loss']:+.4f} | reward {rec['reward_mean']:.3f}"
                      f"±{rec['reward_std']:.3f} | acc {rec['answer_correct_mean']:.2f} | kl {rec['kl']:.4f} | "
                      f"len {rec['completion_len_mean']:.0f} | {rec['time_step']:.2f}s "
                      f"(gen {t_gen:.2f}s)", flush=True)
            stopping = stop.signum is not None
            if (cfg.save_every and (step + 1) % cfg.save_every == 0) or stopping or step + 1 == cfg.steps:
                save_step(out, step + 1, policy, tok, {"stage": "grpo", "step": step + 1, "init": str(cfg.init)},
                          {"step": step + 1, "optimizer": opt.state_dict(), "config": asdict(cfg)}, cfg.keep)
            if stopping:
                print(f"stopped at step {step + 1}; resume with --resume", flush=True)
                return last
    save_final(out, policy, tok, {"stage": "grpo", "step": cfg.steps, "reward": cfg.reward, "init": str(cfg.init)})
    return last
