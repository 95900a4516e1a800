"""Benchmark: seconds per GRPO step of looplm's trainer next to TRL's `GRPOTrainer`, in one run.

Equal settings on both sides: 2 prompts x 4 completions per step, exactly 64 new tokens per
completion, lr 1e-6, beta 0.04, one update per rollout batch (`num_iterations=1`), loss `grpo`
(per-sequence token mean), group-scaled advantages, gradient clip 1.0, temperature 1, fp32 on CPU
with the same torch thread count, no gradient checkpointing, no evaluation, no checkpoints during
the timed steps. The prompts are the same `arith` rows for both (the chat template pre-applied for
TRL, so both models see identical token ids) and both are rewarded with `looplm.rewards.outcome_reward`.

Exactly 64 new tokens: *no EOS stop* on either side. looplm's `generate` is called without stop
tokens (`looplm.train.grpo.generate` is wrapped here, nothing in looplm is edited) and TRL's
generation config gets `eos_token_id=None`; afterwards each completion is cut after its first EOS
on both sides (TRL masks after EOS itself; the wrapper does it for looplm), so the loss sees the
same tokens it would with an EOS stop. The wrappers check that every row got 64 tokens.

Models (random init, seeded): looplm `tiny` at its default R, and a `transformers`
`LlamaForCausalLM` whose forward FLOPs per token match `model.flops_per_token(R, seq_len)` (seq_len =
prompt + 64), chosen by `benchmarks.plain_gpt.matched_config` (same width, heads, KV heads,
vocabulary; depth and MLP width solved for) and checked here with an independent Llama formula and
with `torch.utils.flop_counter` on one forward of each model. Tokenizer: looplm's default tokenizer
for both (TRL loads it with `AutoTokenizer` from the `tokenizer_config.json` that `Tokenizer.save` writes).

Fair timing on a shared machine: both trainers run in the same process and take turns step by step
(a baton passed between TRL's `on_step_end` callback and looplm's per-step metrics write, in two
threads of which only one ever computes). A step's time is the time its trainer holds the baton:
everything the loop does for that step (rollout, scoring, reference and policy forward, backward,
optimizer, logging). The first `--warmup` steps of each are dropped; the table shows the median.

    python benchmarks/grpo_vs_trl.py [--steps 10] [--warmup 2] [--threads 1] [--profile] [--no-save]

Also reported: thread CPU time per step (the holding thread's CPU time: all compute when torch runs
1 thread, so much less sensitive to other jobs on the machine than wall time), the rollout's share of
the step and rollout tokens/s. `--profile` adds: the thread CPU time of each part of a step measured
alone for both models (rollout, reference log-probs, policy log-probs + backward), aten ops dispatched
per decoded token (both) and per part of one cached looplm decode forward (prelude / core / coda /
glue), and a torch.profiler table of one looplm step sorted by self CPU time. Target:
looplm <= 0.5x TRL. Writes the record `benchmarks/results/grpo_vs_trl-{compiled,eager}-rollouts.json`
(`--no-save` to skip). Needs `pip install trl` (tested with trl 1.16.0, transformers 5.24, accelerate 1.15).

Simplifications: TRL's own data pipeline, sampler and logging run as in normal use (they are part
of its step); looplm's rollout time includes decoding and scoring, as TRL's does; the lr schedules
differ (TRL linear, looplm cosine), which does not change the cost of a step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install

import torch  # noqa: E402

from benchmarks.common import count_flops, figure, markdown_table, set_threads, write_record  # noqa: E402
from benchmarks.plain_gpt import matched_config  # noqa: E402

TARGET_RATIO = 0.5


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per trainer")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per trainer first")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (both trainers)")
    ap.add_argument("--preset", default="tiny", help="looplm preset (default R)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--prompts-per-step", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--llama-width", type=int, default=0,
                    help="Llama hidden size (default: looplm's d_model, i.e. the same matmul shapes; depth and MLP "
                         "width are solved for equal FLOPs/token either way)")
    ap.add_argument("--profile", action="store_true", help="profile one looplm step and count decode ops")
    ap.add_argument("--compile", action="store_true",
                    help="looplm decodes rollouts with its torch.compile'd step (--compile-rollouts); the one-time "
                         "compile falls in the first warm-up step and is reported")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/grpo_vs_trl-*.json")
    args = ap.parse_args(argv)
    for name in ("steps", "warmup", "max_new_tokens", "prompts_per_step", "group_size"):
        if getattr(args, name) < (2 if name == "group_size" else 1):
            raise SystemExit(f"--{name.replace('_', '-')}={getattr(args, name)} is too small")
    return args


# ---------------------------------------------------------------------------------------------- setup
def prompt_rows(n: int, seed: int) -> list[dict]:
    from looplm.tasks import get_task

    return [{"prompt": e.prompt, "answer": e.gold, "task": e.task}
            for e in get_task("arith").generate(n, seed=seed, split="train")]


def llama_flops_per_token(c, seq_len: int) -> int:
    """Forward matmul FLOPs per token of a LlamaConfig, looplm's convention (2 per multiply-add,
    average causal context (seq_len + 1) / 2, LM head included)."""
    d, H, kv, hd, f = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size
    layer = d * H * hd * 2 + d * kv * hd * 2 + 3 * d * f + 2 * H * hd * (seq_len + 1) / 2
    return int(2 * (c.num_hidden_layers * layer + d * c.vocab_size))


def llama_shape(cfg, steps: int, seq_len: int, width: int) -> dict[str, int]:
    """Llama layers and MLP width whose forward FLOPs per token match looplm's at (steps, seq_len).
    At width = d_model this is `benchmarks.plain_gpt.matched_config` (same heads, head width, KV heads);
    another width keeps head_dim and the heads/KV-heads ratio and scales the starting MLP width."""
    if width == cfg.d_model:
        g = matched_config(cfg, steps, seq_len)
        return {"d": g.d_model, "layers": g.n_layers, "ffn": g.mlp_hidden, "heads": g.n_heads, "kv": g.n_kv_heads,
                "head_dim": g.head_dim}
    hd = cfg.head_dim
    if width % hd:
        raise SystemExit(f"--llama-width={width} must be a multiple of head_dim={hd}")
    H = width // hd
    kv = max(1, H * cfg.n_kv_heads // cfg.n_heads)
    body = cfg_flops(cfg, steps, seq_len) / 2 - width * cfg.vocab_size
    fixed = width * H * hd * 2 + width * kv * hd * 2 + 2 * H * hd * (seq_len + 1) / 2
    ffn0 = round(cfg.mlp_hidden * width / cfg.d_model)
    layers = max(1, round(body / (fixed + 3 * width * ffn0)))
    ffn = 8 * round((body / layers - fixed) / (3 * width) / 8)
    if ffn < 8:
        raise SystemExit(f"--llama-width={width}: one layer already costs more than looplm's body")
    return {"d": width, "layers": layers, "ffn": ffn, "heads": H, "kv": kv, "head_dim": hd}


def cfg_flops(cfg, steps: int, seq_len: int) -> int:
    from looplm.model.recursive import flops_per_token

    return flops_per_token(cfg, steps, seq_len)


def build_llama(looplm_cfg, steps: int, seq_len: int, width: int, tok, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    g = llama_shape(looplm_cfg, steps, seq_len, width)
    cfg = LlamaConfig(vocab_size=looplm_cfg.vocab_size, hidden_size=g["d"], intermediate_size=g["ffn"],
                      num_hidden_layers=g["layers"], num_attention_heads=g["heads"], num_key_value_heads=g["kv"],
                      head_dim=g["head_dim"], max_position_embeddings=looplm_cfg.max_seq_len,
                      rms_norm_eps=looplm_cfg.norm_eps, rope_theta=looplm_cfg.rope_theta,
                      initializer_range=looplm_cfg.init_std, tie_word_embeddings=True, attention_bias=False,
                      mlp_bias=False, bos_token_id=tok.bos_id, eos_token_id=None, pad_token_id=tok.pad_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).float()
    model.generation_config.eos_token_id = None  # no EOS stop (see the module docstring)
    return model


def flop_check(looplm_model, llama, steps: int, seq_len: int) -> dict[str, Any]:
    """Formula FLOPs per token of both models and torch's FlopCounter on one forward of seq_len tokens."""
    ids = torch.randint(0, 1000, (1, seq_len))
    with torch.no_grad():
        c_loop = count_flops(lambda: looplm_model(ids, steps))
        c_llama = count_flops(lambda: llama(ids))
    f_loop, f_llama = looplm_model.flops_per_token(steps, seq_len), llama_flops_per_token(llama.config, seq_len)
    return {"looplm_formula": f_loop, "llama_formula": f_llama, "formula_ratio": f_llama / f_loop,
            "looplm_counter": c_loop / seq_len, "llama_counter": c_llama / seq_len, "counter_ratio": c_llama / c_loop}


# ---------------------------------------------------------------------------------------------- turn taking
class Baton:
    """Strict alternation between two named parties; records how long each holds it per turn."""

    def __init__(self, first: str):
        self.cv = threading.Condition()
        self.turn, self.error = first, None
        self.since, self.since_cpu = time.perf_counter(), {first: time.thread_time()}
        self.held: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}  # CPU time of the holding thread (= all compute with 1 thread)

    def pass_to(self, me: str, other: str) -> None:
        with self.cv:
            self.held.setdefault(me, []).append(time.perf_counter() - self.since)
            self.cpu.setdefault(me, []).append(time.thread_time() - self.since_cpu[me])
            self.turn = other
            self.cv.notify_all()

    def wait(self, me: str) -> None:
        with self.cv:
            self.cv.wait_for(lambda: self.turn == me or self.error is not None)
            if self.error is not None and self.turn != me:
                raise RuntimeError(f"the other trainer failed: {self.error!r}")
            self.since, self.since_cpu[me] = time.perf_counter(), time.thread_time()

    def fail(self, err: BaseException) -> None:
        with self.cv:
            self.error = err
            self.cv.notify_all()


# ---------------------------------------------------------------------------------------------- looplm side
def no_stop_generate(real: Callable, log: list, expect: int) -> Callable:
    """`looplm.generate.generate` without stop tokens, cut after the first EOS afterwards; logs
    (seconds, new tokens) per call and checks every row decoded `expect` tokens."""
    def gen(model, prompts, cfg):
        stops = set(cfg.stop_tokens)
        t0 = time.perf_counter()
        out = real(model, prompts, dataclasses.replace(cfg, stop_tokens=()))
        dt = time.perf_counter() - t0
        lens = {len(t) for t in out.tokens}
        if lens != {expect}:
            raise RuntimeError(f"looplm rollout decoded {sorted(lens)} tokens per row, expected exactly {expect}")
        log.append((dt, sum(len(t) for t in out.tokens)))
        cut = [t[: next((i + 1 for i, x in enumerate(t) if x in stops), len(t))] for t in out.tokens]
        return dataclasses.replace(out, tokens=cut, exit_steps=[e[: len(c)] for e, c in zip(out.exit_steps, cut)],
                                   finished=[bool(c) and c[-1] in stops for c in cut])
    return gen


def run_looplm(work: Path, ckpt: Path, prompts: Path, args, baton: Baton, gen_log: list, total: int) -> None:
    import looplm.train.grpo as G
    import looplm.train.grpo_rollouts as GR
    from looplm.train.logger import MetricsLogger

    cfg = G.GRPOConfig(init=str(ckpt), out=str(work / "looplm_run"), prompts=str(prompts), eval_n=0, eval_every=0,
                       group_size=args.group_size, prompts_per_step=args.prompts_per_step,
                       max_new_tokens=args.max_new_tokens, lr=1e-6, beta=0.04, steps=total, iterations=1,
                       loss_type="grpo", scale="group", temperature=1.0, seed=args.seed, save_every=0,
                       threads=args.threads, log_every=10**6, compile_rollouts=args.compile)
    real_log, real_gen = MetricsLogger.train, GR.generate  # the loop logs each step's record once

    def log_and_yield(logger, rec):
        real_log(logger, rec)
        baton.pass_to("looplm", "trl")
        if rec["step"] < total:
            baton.wait("looplm")

    MetricsLogger.train, GR.generate = log_and_yield, no_stop_generate(real_gen, gen_log, args.max_new_tokens)
    try:
        baton.wait("looplm")
        G.train(cfg)
    except BaseException as e:  # noqa: BLE001 - handed to the main thread
        baton.fail(e)
        raise
    finally:
        MetricsLogger.train, GR.generate = real_log, real_gen


# ---------------------------------------------------------------------------------------------- TRL side
def make_trl(work: Path, llama_dir: Path, rows: list[dict], tok, args, total: int):
    """TRL's GRPOTrainer on the saved Llama (policy and reference load from llama_dir) and the same prompts."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from looplm.rewards import outcome_reward

    def reward(completions, answer, **_):
        return [outcome_reward(c, a) for c, a in zip(completions, answer)]

    ds = Dataset.from_list([{"prompt": tok.chat_prompt(r["prompt"]), "answer": r["answer"]} for r in rows])
    cfg = GRPOConfig(output_dir=str(work / "trl_run"),
                     per_device_train_batch_size=args.prompts_per_step * args.group_size,  # completions per step
                     num_generations=args.group_size, max_completion_length=args.max_new_tokens, learning_rate=1e-6,
                     beta=0.04, num_iterations=1, loss_type="grpo", scale_rewards="group", epsilon=0.2,
                     max_grad_norm=1.0, temperature=1.0, use_cpu=True, bf16=False, fp16=False,
                     gradient_checkpointing=False, max_steps=total, logging_steps=10**6, save_strategy="no",
                     report_to="none", disable_tqdm=True, seed=args.seed, weight_decay=0.0,
                     generation_kwargs={"eos_token_id": None}, dataloader_num_workers=0)
    hf_tok = AutoTokenizer.from_pretrained(str(llama_dir))
    return GRPOTrainer(model=str(llama_dir), reward_funcs=reward, args=cfg, train_dataset=ds,
                       processing_class=hf_tok), TrainerCallback


def time_trl_generate(trainer, log: list, expect: int) -> None:
    model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    real = model.generate

    def gen(*a, **kw):
        t0 = time.perf_counter()
        out = real(*a, **kw)
        dt = time.perf_counter() - t0
        new = out.shape[1] - kw["input_ids"].shape[1]
        if new != expect:
            raise RuntimeError(f"TRL rollout decoded {new} tokens per row, expected exactly {expect}")
        log.append((dt, new * out.shape[0]))
        return out

    model.generate = gen


def baton_callback(base, baton: Baton):
    """A TrainerCallback that hands the turn to looplm after every TRL step and waits for it back."""
    class Yield(base):
        def on_step_end(self, args, state, control, **kw):
            baton.pass_to("trl", "looplm")
            baton.wait("trl")  # looplm's last step hands back before TRL's last step ends
    return Yield()


# ---------------------------------------------------------------------------------------------- profiling
def count_ops(fn: Callable[[], object]) -> int:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, a=(), kw=None):
            Count.n += 1
            return func(*a, **(kw or {}))

    with Count():
        fn()
    return Count.n


def decode_ops(looplm_model, llama, prompts: list[list[int]], steps: int, pad_id: int) -> dict[str, float]:
    """aten ops per decoded token for the whole batch: (ops for 9 new tokens - ops for 1) / 8, greedy."""
    from looplm.generate import GenerationConfig, generate

    def loop(n):
        return count_ops(lambda: generate(looplm_model, prompts, GenerationConfig(max_new_tokens=n, steps=steps,
                                                                                 pad_id=pad_id)))

    def hf(n):
        ids = torch.tensor(prompts)
        with torch.no_grad():
            return count_ops(lambda: llama.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                    max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                                    pad_token_id=pad_id))
    return {"looplm": (loop(9) - loop(1)) / 8, "llama": (hf(9) - hf(1)) / 8}


def decode_ops_by_part(model, batch: int, prompt_len: int, steps: int) -> dict[str, int]:
    """aten ops of one cached decode forward of looplm, attributed to prelude / core / coda blocks."""
    from torch.utils._python_dispatch import TorchDispatchMode

    where, counts = ["glue"], {"prelude": 0, "core": 0, "coda": 0, "glue": 0}
    hooks = []
    for part, blocks in (("prelude", model.prelude), ("core", model.core.blocks), ("coda", model.coda)):
        for b in blocks:
            hooks.append(b.register_forward_pre_hook(lambda m, a, part=part: where.append(part)))
            hooks.append(b.register_forward_hook(lambda m, a, o: where.pop() and None))

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, a=(), kw=None):
            counts[where[-1]] += 1
            return func(*a, **(kw or {}))

    ids = torch.randint(0, 100, (batch, prompt_len))
    try:
        with torch.inference_mode():
            cache = model.new_cache(batch, prompt_len + 1, steps)
            model(ids, steps, cache=cache, last_only=True)
            with Count():
                model(ids[:, -1:], steps, cache=cache, position_ids=torch.full((batch, 1), prompt_len))
    finally:
        for h in hooks:
            h.remove()
    return counts


def cpu_median(fn: Callable[[], object], repeats: int = 3) -> float:
    """Median thread CPU seconds of fn after one untimed call (all compute with 1 torch thread)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    return statistics.median(times)


def phase_breakdown(looplm_model, llama, prompts: list[list[int]], steps: int, new: int, pad_id: int,
                    compile_rollout: bool = False) -> list[list]:
    """Thread CPU seconds of each part of a GRPO step, same batch for both models (random completions)."""
    import torch.nn.functional as F

    from looplm.generate import GenerationConfig, generate
    from looplm.train.grpo_rollouts import token_logprobs

    ids = torch.cat([torch.tensor(prompts), torch.randint(0, 1000, (len(prompts), new))], dim=1)  # [N, P + new]
    p_ids = torch.tensor(prompts)

    def hf_logp():
        return F.log_softmax(llama(ids[:, :-1]).logits.float(), -1).gather(-1, ids[:, 1:, None])

    def no_grad(fn):
        def run():
            with torch.no_grad():
                fn()
        return run

    parts = {
        "rollout (sampled, no stop)" + (", looplm compiled" if compile_rollout else ""): (
            lambda: generate(looplm_model, prompts, GenerationConfig(max_new_tokens=new, steps=steps, temperature=1.0,
                                                                     seed=0, pad_id=pad_id, compile=compile_rollout)),
            no_grad(lambda: llama.generate(input_ids=p_ids, attention_mask=torch.ones_like(p_ids), max_new_tokens=new,
                                           min_new_tokens=new, do_sample=True, top_k=0, pad_token_id=pad_id))),
        "reference log-probs (no grad)": (no_grad(lambda: token_logprobs(looplm_model, ids, steps, 1.0)),
                                          no_grad(hf_logp)),
        "policy log-probs + backward": (lambda: token_logprobs(looplm_model, ids, steps, 1.0)[0].sum().backward(),
                                        lambda: hf_logp().sum().backward()),
    }
    rows = [[name, f"{cpu_median(a):.3f}", f"{cpu_median(b):.3f}"] for name, (a, b) in parts.items()]
    for m in (looplm_model, llama):
        m.zero_grad(set_to_none=True)
    return rows


def profile_looplm(work: Path, ckpt: Path, prompts: Path, args) -> str:
    """torch.profiler table (self CPU time) of looplm's second training step."""
    import looplm.train.grpo as G
    import looplm.train.grpo_rollouts as GR
    from torch.profiler import ProfilerActivity, profile, schedule

    from looplm.train.logger import MetricsLogger

    cfg = G.GRPOConfig(init=str(ckpt), out=str(work / "looplm_prof"), prompts=str(prompts), eval_n=0, eval_every=0,
                       group_size=args.group_size, prompts_per_step=args.prompts_per_step,
                       max_new_tokens=args.max_new_tokens, steps=2, seed=args.seed, save_every=0,
                       threads=args.threads, log_every=10**6)
    real_log, real_gen = MetricsLogger.train, GR.generate
    GR.generate = no_stop_generate(real_gen, [], args.max_new_tokens)
    with profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=1, warmup=0, active=1)) as prof:
        def log_and_step(logger, rec):
            real_log(logger, rec)
            prof.step()
        MetricsLogger.train = log_and_step
        try:
            G.train(cfg)
        finally:
            MetricsLogger.train, GR.generate = real_log, real_gen
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=50)


# ---------------------------------------------------------------------------------------------- main
def summarize(name: str, held: list[float], cpu: list[float], gens: list, warmup: int) -> dict[str, float]:
    step, gen = held[warmup:], gens[warmup:]
    if not step or len(held) != len(gens):
        raise RuntimeError(f"{name}: {len(held)} timed steps but {len(gens)} rollouts")
    share = [g[0] / s for g, s in zip(gen, step)]
    return {"step_s": statistics.median(step), "step_min_s": min(step), "first_s": held[0], "cpu_s": statistics.median(cpu[warmup:]),
            "gen_s": statistics.median(g[0] for g in gen), "gen_share": statistics.median(share),
            "tok_per_s": statistics.median(g[1] / g[0] for g in gen)}


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    from looplm.checkpoint import save_checkpoint
    from looplm.config import get_preset
    from looplm.model import RecursiveCausalLM
    from looplm.tokenizer import train_default_tokenizer

    tok = train_default_tokenizer(vocab_size=2048, seed=0)
    rows = prompt_rows(200, args.seed)
    prompt_len = round(statistics.mean(len(tok.encode(tok.chat_prompt(r["prompt"]))) for r in rows))
    seq_len = prompt_len + args.max_new_tokens
    mcfg = get_preset(args.preset)
    R = mcfg.recurrence
    torch.manual_seed(args.seed)
    looplm_model = RecursiveCausalLM(mcfg)
    llama = build_llama(mcfg, R, seq_len, args.llama_width or mcfg.d_model, tok, args.seed)
    flops = flop_check(looplm_model, llama, R, seq_len)
    if abs(flops["formula_ratio"] - 1) > 0.05:
        raise SystemExit(f"FLOPs do not match: Llama/looplm = {flops['formula_ratio']:.3f}")
    total = args.warmup + args.steps
    with tempfile.TemporaryDirectory(prefix="grpo_vs_trl_") as tmp:
        work = Path(tmp)
        ckpt = save_checkpoint(work / "looplm_init", looplm_model, tok)
        llama_dir = work / "llama_init"
        llama.save_pretrained(llama_dir)
        tok.save(llama_dir)
        prompts = work / "prompts.jsonl"
        prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
        trainer, cb_base = make_trl(work, llama_dir, rows, tok, args, total)
        trl_gen, loop_gen = [], []
        time_trl_generate(trainer, trl_gen, args.max_new_tokens)
        baton = Baton(first="trl")
        trainer.add_callback(baton_callback(cb_base, baton))
        worker = threading.Thread(target=run_looplm, args=(work, ckpt, prompts, args, baton, loop_gen, total),
                                  daemon=True)
        worker.start()
        try:
            trainer.train()
        except BaseException as e:
            baton.fail(e)
            raise
        worker.join()
        if baton.error is not None:
            raise SystemExit(f"looplm trainer failed: {baton.error!r}")
        res = {"looplm": summarize("looplm", baton.held["looplm"], baton.cpu["looplm"], loop_gen, args.warmup),
               "trl": summarize("trl", baton.held["trl"], baton.cpu["trl"], trl_gen, args.warmup)}
        prof = profile_looplm(work, ckpt, prompts, args) if args.profile else ""
    ops = None
    if args.profile:
        batch = [tok.encode(tok.chat_prompt(rows[0]["prompt"]))] * (args.prompts_per_step * args.group_size)
        ops = {"decode": decode_ops(looplm_model, llama, batch, R, tok.pad_id),
               "parts": decode_ops_by_part(looplm_model, len(batch), len(batch[0]), R),
               "phases": phase_breakdown(looplm_model, llama, batch, R, args.max_new_tokens, tok.pad_id,
                                         args.compile)}
    report(args, res, flops, looplm_model, llama, R, seq_len, prof, ops)
    return 0


def report(args, res, flops, looplm_model, llama, R, seq_len, prof: str, ops) -> None:
    ratio = res["looplm"]["step_s"] / res["trl"]["step_s"]
    cpu_ratio = res["looplm"]["cpu_s"] / res["trl"]["cpu_s"]
    n_llama = sum(p.numel() for p in llama.parameters())
    pc = looplm_model.param_counts(R)
    rows = [[name, f"{r['step_s']:.3f}", f"{r['step_min_s']:.3f}", f"{r['cpu_s']:.3f}", f"{r['gen_s']:.3f}",
             f"{100 * r['gen_share']:.0f}%", f"{r['tok_per_s']:.0f}"]
            for name, r in (("looplm", res["looplm"]), ("TRL", res["trl"]))]
    table = markdown_table(["trainer", "s/step (median)", "s/step (min)", "CPU s/step (median)", "rollout s",
                            "rollout share", "rollout tok/s"], rows)
    c = llama.config
    body = "\n".join([
        f"Settings: {args.prompts_per_step} prompts x {args.group_size} completions, exactly {args.max_new_tokens} new "
        f"tokens (no EOS stop on either side; completions cut after the first EOS afterwards), lr 1e-6, beta 0.04, "
        f"1 iteration, loss grpo, fp32, CPU, {args.threads} thread(s); {args.steps} timed steps each after "
        f"{args.warmup} warm-up, interleaved step by step in one process. Machine shared with other jobs.",
        f"looplm rollouts: {'compiled decode step (`--compile-rollouts`); its first step, compile included, took ' + format(res['looplm']['first_s'], '.1f') + ' s (not in the table)' if args.compile else 'eager'}; "
        f"TRL's first step took {res['trl']['first_s']:.1f} s.",
        f"Models (random init): looplm `{args.preset}` R={R} ({pc['physical'] / 1e6:.2f}M physical, "
        f"{pc['virtual'] / 1e6:.2f}M virtual params); LlamaForCausalLM {c.num_hidden_layers} layers, "
        f"d={c.hidden_size}, ffn={c.intermediate_size}, heads {c.num_attention_heads}/{c.num_key_value_heads} "
        f"({n_llama / 1e6:.2f}M params).",
        f"Forward FLOPs/token at seq_len {seq_len}: looplm {flops['looplm_formula'] / 1e6:.2f}M, Llama "
        f"{flops['llama_formula'] / 1e6:.2f}M (ratio {flops['formula_ratio']:.3f}); torch FlopCounter (full-context "
        f"attention) {flops['looplm_counter'] / 1e6:.2f}M vs {flops['llama_counter'] / 1e6:.2f}M (ratio "
        f"{flops['counter_ratio']:.3f}).", "", table, "",
        f"**looplm / TRL step time: {ratio:.2f}x** (target <= {TARGET_RATIO}x: "
        f"{'met' if ratio <= TARGET_RATIO else 'MISSED'}); "
        f"CPU-time ratio {cpu_ratio:.2f}x (thread CPU time of each trainer's turns, less sensitive to load"
        f"{'' if args.threads == 1 else '; meaningful only with 1 thread'}).",
    ])
    if ops:
        d, p = ops["decode"], ops["parts"]
        body += ("\n\nWhere the time goes (thread CPU seconds, each part alone, same batch for both models, "
                 "median of 3):\n\n" + markdown_table(["part of a step", "looplm", "Llama"], ops["phases"]) +
                 f"\n\naten ops dispatched per decoded token (batch {args.prompts_per_step * args.group_size}, "
                 f"greedy, incl. sampling): looplm {d['looplm']:.0f}, Llama {d['llama']:.0f}. One cached looplm "
                 f"decode forward: {sum(p.values())} ops = prelude {p['prelude']} + core {p['core']} "
                 f"({p['core'] // (R * looplm_model.config.n_core)} per core-block application x {R} steps x "
                 f"{looplm_model.config.n_core} blocks) + coda {p['coda']} + glue {p['glue']}.")
    if prof:
        body += ("\n\nOne looplm step under torch.profiler (second step; self CPU time, profiler overhead "
                 "included):\n\n```\n" + prof.strip() + "\n```")
    print(body)
    if not args.no_save:
        lo, trl = res["looplm"], res["trl"]
        figs = [figure("GRPO step time, looplm / TRL GRPOTrainer (equal settings and FLOPs/token)", round(ratio, 2),
                       "x", f"<= {TARGET_RATIO}", headline=True),
                figure("thread CPU time per step, looplm / TRL", round(cpu_ratio, 2), "x"),
                *[figure(f"{n} s/step (median)", round(r["step_s"], 3), " s") for n, r in (("looplm", lo),
                                                                                          ("TRL", trl))],
                *[figure(f"{n} rollout tokens/s", round(r["tok_per_s"]), " tokens/s") for n, r in (("looplm", lo),
                                                                                                  ("TRL", trl))]]
        name = "grpo_vs_trl-" + ("compiled-rollouts" if args.compile else "eager-rollouts") + (
            f"-llama-width{args.llama_width}" if args.llama_width else "")
        write_record(name, figs, script=__file__, details=body,
                     title="GRPO seconds per step: looplm vs TRL GRPOTrainer in one run, "
                           + ("compiled" if args.compile else "eager") + " looplm rollouts")


if __name__ == "__main__":
    raise SystemExit(main())
