"""GRPO's data: prompt sets, rewards, rollouts, the log-probabilities the loss needs, reward
statistics and held-out pass@k. The stage that trains on them is `looplm/train/grpo.py`.

- Prompts: `{prompt, answer, task}` rows from a source (`looplm.data.rowsets`) or a generated task;
  a held-out set must not share a prompt with the training set.
- Rewards: the task's scorer for DFS tasks, else `looplm.rewards` on the decoded completion (the
  outcome reward, or the programmatic process reward with its parts).
- Rollouts: the KV-cached batched generator, every prompt of this rank x G (G consecutive copies),
  sampled at `temperature`, stopped at EOS or `max_new_tokens`; with dynamic sampling, groups whose
  rewards are all equal are replaced by fresh prompts (`max_resample` draws).
- Seeds: the step's prompts are drawn by a generator keyed by (seed, step); rank r of W takes the
  r-th W-th of them; its sampling seed and its resampled prompts are keyed by (seed, step, attempt,
  r), rank 0's keys being those of a single process. So prompts and samples are pure functions of
  (seed, step, rank) and resume is exact.
- Ranks: `gather` collects every rank's rollouts (in rank order) for the advantages and statistics.

Prompts are formatted as the model saw such prompts in training (`prompt_ids`, the rule of `looplm
eval`): the chat template, or EOS + question for tasks trained in pre-training format only.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from looplm.config import ConfigError
from looplm.generate import GenerationConfig, generate
from looplm.grpo import zero_std_groups
from looplm.rewards import outcome_reward, process_breakdown

if TYPE_CHECKING:
    from looplm.train.grpo import GRPOConfig

NUMERIC_TASKS = ("arith", "word_problems", "gsm8k", "orca_math")
SCORED_TASKS = ("dfs_verbal", "clrs_dfs")
RAW_TASKS = ("clrs_dfs",)  # trained in the pre-training format only: EOS + question, no chat template


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
        held = [] if cfg.eval_prompts or not cfg.eval_n else _rows_from_task(cfg.task, cfg.eval_n, cfg.seed + 1, "eval")
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
            raise ConfigError(f"task {r['task']!r} has no reward; GRPO supports "
                              f"{', '.join(NUMERIC_TASKS + SCORED_TASKS)}")
    return train, held


def rows_fingerprint(rows: list[dict]) -> str:
    """sha256 of the prompt rows (equal iff the training prompts are)."""
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


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


def _key(rank: int) -> list[int]:
    return [rank] if rank else []  # rank 0 keeps the single-process keys


def _draw(rows: list[dict], n: int, seed: int, step: int, attempt: int, rank: int = 0) -> list[dict]:
    rng = np.random.default_rng([seed, step, attempt, *_key(rank)])
    return [rows[i] for i in rng.choice(len(rows), size=n, replace=len(rows) < n)]


def _seed(seed: int, step: int, attempt: int, rank: int = 0) -> int:
    return int(np.random.default_rng([seed, step, attempt, 7, *_key(rank)]).integers(2**62))


def collect(model, tok, train_rows, cfg: GRPOConfig, steps: int, step: int, rank: int = 0, world: int = 1
            ) -> tuple[Rollout, dict]:
    """This rank's rollouts of one step (its share of the step's prompts); with dynamic sampling,
    zero-variance groups are replaced by fresh prompts (drawn for this rank)."""
    G, P = cfg.group_size, cfg.prompts_per_step
    mine = _draw(train_rows, P, cfg.seed, step, 0)[rank * P // world:(rank + 1) * P // world]
    ro = rollout(model, tok, mine, cfg, steps, _seed(cfg.seed, step, 0, rank))
    info = {"resampled_groups": 0, "zero_std_kept": 0}
    if not cfg.dynamic_sampling:
        return ro, info
    for attempt in range(1, cfg.max_resample + 1):
        r = torch.tensor([s["reward"] for s in ro.scores])
        flat = zero_std_groups(r, G)
        if not bool(flat.any()):
            break
        fresh = rollout(model, tok, _draw(train_rows, int(flat.sum()), cfg.seed, step, attempt, rank), cfg, steps,
                        _seed(cfg.seed, step, attempt, rank))
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


def gather(ro: Rollout, info: dict[str, int], world: int) -> tuple[Rollout, dict[str, int]]:
    """Every rank's rollouts, concatenated in rank order, and the summed counters (collective)."""
    if world == 1:
        return ro, info
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, (ro, info))
    merged = Rollout(*([x for r, _ in parts for x in getattr(r, f.name)] for f in dataclasses.fields(Rollout)))
    return merged, {k: sum(i[k] for _, i in parts) for k in info}


# ---------------------------------------------------------------------------------------- numbers
def stats(x: list[float], name: str) -> dict[str, float]:
    a = np.asarray(x, dtype=np.float64)
    return {f"{name}_mean": float(a.mean()), f"{name}_std": float(a.std()), f"{name}_min": float(a.min()),
            f"{name}_max": float(a.max())}


def reward_metrics(ro: Rollout, G: int) -> dict[str, float]:
    rewards = [s["reward"] for s in ro.scores]
    m = {**stats(rewards, "reward"),
         "answer_correct_mean": float(np.mean([s["answer_correct"] for s in ro.scores])),
         "zero_std_share": float(zero_std_groups(torch.tensor(rewards), G).float().mean()),
         **stats([len(c) for c in ro.completions], "completion_len"),
         "truncated_share": float(np.mean(ro.truncated))}
    if "process" in ro.scores[0]:  # hacking diagnostics
        eqs = sum(s["equations"] for s in ro.scores) or 1
        for k in ("correct", "incorrect", "trivial", "duplicate", "ungrounded"):
            m[f"steps_{k}_share"] = sum(s[k] for s in ro.scores) / eqs
        m.update(stats([s["process"] for s in ro.scores], "process"))
        wrong = [s["process"] for s in ro.scores if not s["answer_correct"]]
        m["process_credit_wrong_answers"] = float(np.mean(wrong)) if wrong else 0.0
    return m


@torch.no_grad()
def pass_counts(model, tok, rows: list[dict], cfg: GRPOConfig, steps: int) -> tuple[float, float]:
    """(prompts solved by the greedy completion, prompts solved by one of `pass_k` samples at the
    training temperature) among `rows`."""
    if not rows:
        return 0.0, 0.0
    prompts = [prompt_ids(tok, r) for r in rows]
    greedy = generate(model, prompts, GenerationConfig(max_new_tokens=cfg.max_new_tokens, steps=steps,
                                                       stop_tokens=(tok.eos_id,), pad_id=tok.pad_id))
    ok1 = [score_completion(tok.decode(t), r, "outcome", "strict")["answer_correct"]
           for t, r in zip(greedy.tokens, rows)]
    k = cfg.pass_k
    sampled = generate(model, [p for p in prompts for _ in range(k)], GenerationConfig(
        max_new_tokens=cfg.max_new_tokens, steps=steps, temperature=cfg.temperature, top_k=cfg.top_k,
        top_p=cfg.top_p, stop_tokens=(tok.eos_id,), seed=cfg.seed + 12345, pad_id=tok.pad_id))
    okk = [max(score_completion(tok.decode(sampled.tokens[i * k + j]), r, "outcome", "strict")["answer_correct"]
               for j in range(k)) for i, r in enumerate(rows)]
    return float(sum(ok1)), float(sum(okk))


def make_reference(model):
    """The frozen reference: a copy of the starting policy, never updated."""
    return copy.deepcopy(model).eval().requires_grad_(False)
