"""`looplm grpo`: GRPO (DeepSeekMath / TRL objective) with the outcome or the programmatic process
reward: its config, its command line and its stage of the shared training loop
(`looplm/train/loop.py`, which does the optimizer, schedule, resume, non-finite guard, signals,
evaluation/checkpoint cadence and logs).

Every step (`GRPOStage.batch`, then `iterations` updates of `GRPOStage.backward`):

    rows     <- `prompts_per_step` prompts drawn by a generator keyed by (seed, step); rank r takes its share
    rollout  <- the KV-cached batched generator, this rank's prompts x G (G consecutive copies),
                sampled at `temperature`, stopped at EOS or `max_new_tokens` (`grpo_rollouts.py`)
    rewards  <- `looplm.rewards` (maths) or the task's scorer (DFS tasks), on the decoded text
    (optional) dynamic sampling: groups whose rewards are all equal are replaced by fresh prompts
    A        <- group_advantages(rewards of every rank, G, scale), this rank's part
    for each of `iterations` updates:
        logp     = log_softmax(policy(seq) / T) at completion tokens   (EOS inside the mask, nothing after)
        old_logp = logp.detach() (one iteration) or the pre-update policy's log-probs
        ref_logp = the frozen reference (the --init weights) under no_grad
        loss     = grpo_loss(logp, old_logp, ref_logp, A, mask, beta, loss_type, eps_low, eps_high),
                   normalised by the global number of completions (dapo: of completion tokens)
        AdamW step (clipped gradients, all-reduced over ranks by DDP)

Ranks: under `torchrun` every rank generates and scores its own prompts; advantages, reward
statistics and counts are global (the ranks' rollouts are gathered), gradients are all-reduced, so W
ranks train as one process on the same global batch. `--device cuda` (or `auto`) runs rollouts and
updates on the GPU; `--bf16` autocasts the forwards. Rollouts and the loss use the same number of
recurrence steps. Resume is exact on CPU: prompts and sampling seeds are pure functions of (seed,
step, rank), and the checkpoint carries the optimizer state. The speculative and halt heads are
frozen (they play no part in the policy's log-probs). `--config RUN/run_config.json` replays a run.

Simplification: the rollout batch of a rank (its prompts x G sequences) goes through one forward
pass per update; there is no micro-batching. No FSDP (ranks decode different lengths).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

from looplm.train.args import need, need_choice, need_float, need_int, need_str, opt_field
from looplm.train.loop_config import RESUME_FREE as LOOP_RESUME_FREE
from looplm.train.loop_config import RunConfig, add_stage_parser, stage_main

REWARDS = ("outcome", "process")
EVAL_ONLY = frozenset({"eval_prompts", "eval_n", "pass_k"})


@dataclass
class GRPOConfig(RunConfig):
    init: str = opt_field("", "checkpoint (or run directory) to start from; also the frozen reference", metavar="CKPT")
    prompts: str = opt_field("", "{prompt, answer, task} rows (e.g. from `looplm data rl`; or TRL {prompt, completion, "
                                 "task}): a JSONL/parquet/... file, a directory or hub:NAME", metavar="SOURCE")
    task: str = opt_field("", "or: draw prompts from this generated task's train split (arith, word_problems, "
                              "dfs_verbal, clrs_dfs)", metavar="NAME")
    n_prompts: int = opt_field(2000, "number of prompts generated with --task")
    eval_prompts: str = opt_field("", "held-out rows for pass@k (default with --task: the task's eval split)",
                                  metavar="SOURCE")
    eval_n: int = opt_field(32, "held-out prompts evaluated (0 = no evaluation)")
    pass_k: int = opt_field(4, "k of the sampled pass@k")
    reward: str = opt_field("outcome", "outcome (1/0 on the final answer) or process (programmatic step reward)")
    reward_mode: str = opt_field("strict", "process reward mode: strict (hack-resistant) or report (the report's "
                                           "arithmetic)")
    group_size: int = opt_field(4, "completions per prompt G (>= 2)")
    prompts_per_step: int = opt_field(2, "prompts per step, over all ranks (divisible by the world size)")
    max_new_tokens: int = opt_field(128, "completion length limit")
    beta: float = opt_field(0.04, "KL coefficient (k3 estimator against the frozen reference); 0 = no reference")
    loss_type: str = opt_field("grpo", "grpo, dr_grpo or dapo aggregation")
    scale: str = opt_field("group", "advantage scaling: group (std of the group), batch, none (mean-centring only)")
    eps_low: float = opt_field(0.2, "PPO clip epsilon below 1")
    eps_high: float = opt_field(0.2, "PPO clip epsilon above 1 (DAPO's clip-higher when > eps_low)")
    iterations: int = opt_field(1, "policy updates per rollout batch (mu)")
    temperature: float = opt_field(1.0, "sampling temperature, also applied inside every log-prob")
    top_k: int = opt_field(0, "top-k for rollouts (0 = off)")
    top_p: float = opt_field(1.0, "top-p for rollouts (1 = off)")
    mask_truncated: bool = opt_field(False, "give no loss to completions that hit max_new_tokens without EOS")
    dynamic_sampling: bool = opt_field(False, "replace groups whose rewards are all equal with fresh prompts (DAPO)")
    max_resample: int = opt_field(4, "extra prompt draws per step for dynamic sampling")
    recurrence: int = opt_field(0, "recurrence steps for rollouts and loss (0 = the model's R)")
    compile_rollouts: bool = opt_field(False, "decode rollouts with the torch.compile'd step "
                                              "(looplm/compiled_decode.py): same tokens, about 1.7x faster at batch 8 "
                                              "after a one-time compile; needs a C++ compiler")
    # the defaults that differ from pre-training
    steps: int = opt_field(250, "optimizer steps")
    lr: float = opt_field(1e-6, "learning rate (AdamW)")
    min_lr_ratio: float = opt_field(1.0, "final learning rate as a fraction of --lr (1 = constant after warmup)")
    warmup: int = opt_field(0, "linear warm-up steps")
    weight_decay: float = opt_field(0.0, "AdamW weight decay on matrices (vectors get none)")
    beta2: float = opt_field(0.999, "AdamW beta2")
    eval_every: int = opt_field(25, "evaluate pass@1 / pass@k every N steps (and at the end; 0 = only at the end)")
    save_every: int = opt_field(50, "checkpoint every N steps (and at the end; 0 = only at the end)")
    keep: int = opt_field(2, "step checkpoints kept")
    seed: int = opt_field(0, "seed of prompt draws and sampling")

    def validate(self) -> None:
        from looplm.grpo import LOSS_TYPES, SCALES  # the GRPO maths' own lists (imports torch)

        super().validate()
        need_str(self, "init")
        need(self, "prompts", bool(self.prompts) != bool(self.task),
             "give exactly one of --prompts FILE or --task NAME")
        need_choice(self, "reward", REWARDS)
        need_choice(self, "reward_mode", ("strict", "report"))
        need_int(self, "group_size", 2)
        need_choice(self, "loss_type", LOSS_TYPES)
        need_choice(self, "scale", SCALES)
        for name in ("prompts_per_step", "max_new_tokens", "iterations", "n_prompts", "pass_k"):
            need_int(self, name, 1)
        for name in ("recurrence", "max_resample", "eval_n", "top_k"):
            need_int(self, name, 0)
        need_float(self, "lr", 0.0, 1.0, lo_open=True)
        need_float(self, "beta", 0.0)
        need(self, "eps_low", isinstance(self.eps_low, (int, float)) and 0 <= self.eps_low < 1, "must be in [0, 1)")
        need_float(self, "eps_high", 0.0)
        need_float(self, "temperature", 0.0, lo_open=True)
        need_float(self, "top_p", 0.0, 1.0, lo_open=True)


def resume_free(cfg: GRPOConfig) -> frozenset[str]:
    """Fields a --resume may change: the loop's, the held-out evaluation's, and `steps` while the
    schedule is flat (min_lr_ratio 1); not `init`, which is the frozen reference."""
    return (LOOP_RESUME_FREE - {"init"}) | EVAL_ONLY | ({"steps"} if cfg.min_lr_ratio == 1.0 else set())


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return add_stage_parser(subparsers, "grpo", GRPOConfig, ("init", "out"), main,
                            help="GRPO with an outcome or process reward (from an SFT checkpoint)",
                            description="GRPO (DeepSeekMath/TRL objective) with the outcome or the programmatic "
                                        "process reward; see looplm/train/grpo.py for the step.")


def main(args: argparse.Namespace | GRPOConfig) -> int:
    """CLI entry (also callable with a GRPOConfig): returns the exit code."""
    return stage_main(GRPOConfig, args, train, "grpo")


def train(cfg: GRPOConfig) -> dict[str, Any]:
    """Run (or resume) GRPO; returns the loop's summary ({"exit_code", "step", "loss", ..., "last"})."""
    from looplm.train.loop import run

    return run(GRPOStage(cfg))


# ------------------------------------------------------------------------------------------ stage
@dataclass
class GRPOBatch:
    ids: Any  # [N, L] prompt + completion ids of this rank, right-padded
    mask: Any  # [N, L-1] 1 on completion targets
    adv: Any  # [N] advantages
    ref_logp: Any  # [N, L-1] or None (beta = 0)
    old_logp: Any  # [N, L-1] or None (one iteration: logp.detach())
    sequences: int  # completions over all ranks
    tokens: float  # unmasked completion tokens over all ranks
    numbers: dict[str, Any]  # reward statistics, counters, advantage statistics, timings
    last: tuple = ()  # (grpo_loss stats, entropy mean, tokens) of the latest update on this rank


class GRPOStage:
    """Rollouts of the step's prompts, their advantages, the GRPO loss; the model from --init."""

    name = "grpo"
    fsdp = compile = False

    def __init__(self, cfg: GRPOConfig):
        self.cfg, self.updates, self.resume_free = cfg, cfg.iterations, resume_free(cfg)

    def load(self) -> tuple[Any, Any, str]:
        from looplm.checkpoint import load_checkpoint
        from looplm.train.rundir import resolve_init

        ckpt = resolve_init(self.cfg.init)
        model, tok, _ = load_checkpoint(ckpt)
        return model, tok, str(ckpt)

    def setup(self, raw: Any, tok: Any, origin: str, d: Any) -> tuple[dict[str, Any], str]:
        from looplm.checkpoint import load_checkpoint
        from looplm.config import ConfigError
        from looplm.train import grpo_rollouts as GR
        from looplm.train.rundir import resolve_init

        cfg, mcfg = self.cfg, raw.config
        self.tok, self.d, self.steps = tok, d, cfg.recurrence or mcfg.recurrence
        if self.steps > mcfg.max_steps:
            raise ConfigError(f"GRPOConfig.recurrence={self.steps} exceeds the model's max_steps={mcfg.max_steps}")
        if cfg.prompts_per_step % d.world_size:
            raise ConfigError(f"GRPOConfig.prompts_per_step={cfg.prompts_per_step} must be divisible by the world "
                              f"size {d.world_size} (option --prompts-per-step)")
        self.train_rows, self.held = GR.load_prompt_sets(cfg)
        self.ref = None
        if cfg.beta > 0:  # the --init weights (on resume `raw` holds the trained ones)
            start = raw if not cfg.resume else load_checkpoint(resolve_init(cfg.init))[0]
            self.ref = GR.make_reference(start).to(d.device)
        meta = {"data": cfg.prompts or f"task:{cfg.task}", "data_fingerprint": GR.rows_fingerprint(self.train_rows),
                "init": str(cfg.init), "reward": cfg.reward}
        return meta, (f"{len(self.train_rows)} prompts, {cfg.prompts_per_step} x {cfg.group_size} rollouts per step, "
                      f"{len(self.held)} held out")

    def batch(self, model: Any, raw: Any, step: int, d: Any) -> GRPOBatch:
        import torch

        from looplm.grpo import group_advantages
        from looplm.train import common as C
        from looplm.train import grpo_rollouts as GR

        cfg, G = self.cfg, self.cfg.group_size
        t0 = time.perf_counter()
        raw.eval()
        with C.autocast(d.device, cfg.bf16):
            mine, info = GR.collect(raw, self.tok, self.train_rows, cfg, self.steps, step, d.rank, d.world_size)
        t_gen = time.perf_counter() - t0
        ro, info = GR.gather(mine, info, d.world_size)  # every rank's rollouts, in rank order
        numbers = {**GR.reward_metrics(ro, G), **info}
        t_score = time.perf_counter() - t0 - t_gen
        raw.train()
        rewards = torch.tensor([s["reward"] for s in ro.scores], dtype=torch.float32)
        adv = group_advantages(rewards, G, scale=cfg.scale)
        numbers.update({f"adv_{k}": v for k, v in GR.stats(adv.tolist(), "a").items()})
        n = len(mine.scores)
        ids, mask = GR.sequence_batch(mine.prompt_ids, mine.completions, self.tok.pad_id, d.device)
        if cfg.mask_truncated:
            mask = mask * torch.tensor([0.0 if t else 1.0 for t in mine.truncated], device=d.device)[:, None]
        with torch.no_grad(), C.autocast(d.device, cfg.bf16):
            ref_logp = None if self.ref is None else GR.token_logprobs(self.ref, ids, self.steps, cfg.temperature)[0]
            old_logp = None if cfg.iterations == 1 else GR.token_logprobs(raw, ids, self.steps, cfg.temperature)[0]
        tokens = float(C.all_reduce_sum(mask.sum().double(), d))
        numbers.update(time_generate=t_gen, time_score=t_score)
        return GRPOBatch(ids, mask, adv[d.rank * n:(d.rank + 1) * n].to(d.device), ref_logp, old_logp,
                         sequences=len(ro.scores), tokens=tokens, numbers=numbers)

    def backward(self, model: Any, batch: GRPOBatch, update: int, d: Any, poison: bool) -> tuple[Any, float]:
        from looplm.grpo import grpo_loss
        from looplm.train import common as C
        from looplm.train.grpo_rollouts import token_logprobs

        cfg = self.cfg
        with C.autocast(d.device, cfg.bf16):
            logp, entropy = token_logprobs(model, batch.ids, self.steps, cfg.temperature)
        counts = ({"num_items_in_batch": batch.tokens} if cfg.loss_type == "dapo"
                  else {"num_sequences": batch.sequences})  # global: the ranks' losses sum to the batch's
        loss, st = grpo_loss(logp, batch.old_logp if batch.old_logp is not None else logp.detach(), batch.ref_logp,
                             batch.adv, batch.mask, beta=cfg.beta, loss_type=cfg.loss_type, eps_low=cfg.eps_low,
                             eps_high=cfg.eps_high, max_completion_length=cfg.max_new_tokens + 1, **counts)
        if poison:  # test hook (LOOPLM_TEST_NAN_STEPS)
            loss = loss * float("nan")
        (loss * d.world_size if d.world_size > 1 else loss).backward()  # DDP averages over ranks
        m = batch.mask.bool()
        batch.last = (st, float(entropy.detach()[m].mean()) if bool(m.any()) else 0.0, st["tokens"])
        return loss.detach().double(), 1.0

    def record(self, batch: GRPOBatch, seconds: float) -> dict[str, Any]:
        """The step's numbers; the latest update's loss statistics as token-weighted means over ranks."""
        import torch

        from looplm.train import common as C

        st, entropy, tokens = batch.last
        names = ("kl", "clip_low", "clip_high", "clip_region", "ratio_mean")
        sums = torch.tensor([st[k] * tokens for k in names] + [entropy * tokens, tokens], dtype=torch.float64)
        sums = C.all_reduce_sum(sums.to(self.d.device), self.d).tolist()
        total = sums[-1]
        means = {k: (v / total if total > 0 else 0.0) for k, v in zip(names + ("entropy",), sums[:-1])}
        t_gen, t_score = batch.numbers["time_generate"], batch.numbers["time_score"]
        return {**batch.numbers, **means, "time_train": seconds - t_gen - t_score, "time_step": seconds}

    def evaluate(self, model: Any, raw: Any, d: Any) -> tuple[dict[str, float], str] | None:
        """Greedy pass@1 and sampled pass@k on the held-out prompts (each rank takes every W-th)."""
        import torch

        from looplm.train import common as C
        from looplm.train.grpo_rollouts import pass_counts

        if not self.held:
            return None
        cfg = self.cfg
        raw.eval()
        with C.autocast(d.device, cfg.bf16):
            ok1, okk = pass_counts(raw, self.tok, self.held[d.rank::d.world_size], cfg, self.steps)
        raw.train()
        ok1, okk = C.all_reduce_sum(torch.tensor([ok1, okk], dtype=torch.float64, device=d.device), d).tolist()
        n, k = len(self.held), cfg.pass_k
        metrics = {"eval/pass@1": ok1 / n, f"eval/pass@{k}": okk / n, "eval/n": n}
        return metrics, f"  pass@1 {ok1 / n:.3f}  pass@{k} {okk / n:.3f}  ({n} held-out prompts)"

    def format_step(self, rec: dict[str, Any], total: int) -> str:
        return (f"grpo step {rec['step']}/{total} | loss {rec['loss']:+.4f} | reward {rec['reward_mean']:.3f}"
                f"±{rec['reward_std']:.3f} | acc {rec['answer_correct_mean']:.2f} | kl {rec['kl']:.4f} | "
                f"len {rec['completion_len_mean']:.0f} | {rec['time_step']:.2f}s (gen {rec['time_generate']:.2f}s)"
                + (" | SKIPPED (non-finite)" if rec.get("skipped") else ""))
