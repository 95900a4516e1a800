"""The phases of `looplm reproduce`, in docs/pipeline.md order, each a call into a stage's own `main(config)`.

    tokenizer -> data -> pretrain -> sft (+ sft-noreplay) -> grpo-outcome (+ grpo-outcome-noreplay)
    -> grpo-process (+ grpo-outcome-cmp: outcome reward, same start, same steps) -> calibrate-halt
    -> train-spec -> audit -> ablation (core KV: anchored vs per_step) -> eval -> eval-depth -> report

Checkpoints: `pretrain/final`, `sft/final`, `grpo-outcome/final`, `grpo-process/final`,
`calibrate-halt` (halt head + threshold), `final` (speculative heads: the finished model).
Beyond the report: `--replay F` mixes a share F of CLRS-Text DFS into SFT and GRPO (the `-noreplay`
runs are the control); maths SFT uses word problems with worked equations; outcome vs process reward
from the same start at equal steps; the core-KV ablation.

SFT samples the recurrence depth per update as pre-training does (same r̄ and truncated backprop), so
the aligned model keeps working at every depth and AdaExit has depth to save.

Simplification: GRPO prompts are verbal DFS + word problems (+ CLRS replay) for the outcome phase and
word problems (+ CLRS replay, scored by its exact-match scorer) for the process phase: chat prompts
carry no verifiable reward, so the math-heavy set's chat share is not used for RL.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from looplm.reproduce.runner import Context, Phase


def _s(p: Path) -> str:
    return str(p)


def _threads(ctx: Context) -> int | None:
    return ctx.cfg.threads


# ------------------------------------------------------------------------------------ tokenizer, data
def tokenizer_phase(ctx: Context) -> dict[str, Any]:
    from looplm.tokenizer import train_default_tokenizer

    tok = train_default_tokenizer(ctx.budget.vocab_size, seed=ctx.cfg.seed)
    path = tok.save(ctx.path("tokenizer"))
    print(f"tokenizer: {tok.vocab_size} tokens -> {path}")
    return {"tokenizer_dir": _s(ctx.path("tokenizer")), "vocab_size": tok.vocab_size, "sha256": tok.sha256()}


def _rl_rows(tasks: dict[str, int], seed: int, split: str, nodes: dict[str, dict]) -> list[dict]:
    from looplm.data.rl import RLConfig, rl_examples

    rows = []
    for task, n in tasks.items():
        if n <= 0:
            continue
        exs, _ = rl_examples(RLConfig(task=task, n=n, out="unused.jsonl", seed=seed, split=split,
                                      opts=nodes.get(task, {})))
        rows += [{"prompt": e.prompt, "answer": e.gold, "task": e.task} for e in exs]
    random.Random(seed).shuffle(rows)
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return _s(path)


def data_phase(ctx: Context) -> dict[str, Any]:
    from looplm.data.mixture import MixConfig, build_pretrain_mix
    from looplm.data.sft import SFTConfig, build_sft

    b, cfg, d = ctx.budget, ctx.cfg, ctx.path("data")
    tok = ctx.outputs["tokenizer"]["tokenizer_dir"]
    mix = build_pretrain_mix(MixConfig(tokenizer=tok, out=d / "pretrain", tokens=b.mix_tokens, mix=dict(b.mix), seed=cfg.seed,
                                       sources={"clrs": "generated", "math": "generated", "text": cfg.text},
                                       clrs_nodes=b.clrs_nodes, allow_repeat=cfg.text != "generated",
                                       overwrite=True), log=print)
    sets = {}
    for name, recipe, sizes, replay in (("sft", "three-domain", b.sft_sizes, cfg.replay),
                                        ("sft-noreplay", "three-domain", b.sft_sizes, 0.0),
                                        ("sft-math-heavy", "math-heavy", b.sft_math_sizes, cfg.replay)):
        out = d / f"{name}.jsonl"
        build_sft(SFTConfig(recipe=recipe, out=out, sizes=sizes, math_source="word-problems",
                            alpaca_source=cfg.chat, seed=cfg.seed, replay=replay, logic_nodes=b.logic_nodes,
                            clrs_nodes=b.clrs_nodes), log=print)
        sets[name] = _s(out)
    n = b.grpo_prompts
    nodes = {"dfs_verbal": {"min_nodes": b.logic_nodes[0], "max_nodes": b.logic_nodes[1]},
             "clrs_dfs": {"node_counts": b.clrs_nodes}}
    n_replay = round(n * cfg.replay)
    outcome = _rl_rows({"dfs_verbal": (n - n_replay) // 2, "word_problems": n - n_replay - (n - n_replay) // 2,
                        "clrs_dfs": n_replay}, cfg.seed + 1, "train", nodes)
    outcome_noreplay = _rl_rows({"dfs_verbal": n // 2, "word_problems": n - n // 2}, cfg.seed + 1, "train", nodes)
    process = _rl_rows({"word_problems": n}, cfg.seed + 2, "train", nodes)
    held = _rl_rows({"word_problems": 32}, cfg.seed + 3, "eval", nodes)
    return {"pretrain_dir": _s(d / "pretrain"), "mix_manifest": mix, **{f"{k}_file": v for k, v in sets.items()},
            "rl_outcome_file": _write_jsonl(d / "rl-outcome.jsonl", outcome),
            "rl_outcome_noreplay_file": _write_jsonl(d / "rl-outcome-noreplay.jsonl", outcome_noreplay),
            "rl_process_file": _write_jsonl(d / "rl-process.jsonl", process),
            "rl_heldout_file": _write_jsonl(d / "rl-heldout.jsonl", held)}


# ------------------------------------------------------------------------------------ training stages
def _pretrain(ctx: Context, out: Path, steps: int, overrides: list[str], data: str) -> dict[str, Any]:
    from looplm.train.pretrain import PretrainConfig, train

    b = ctx.budget
    res = train(PretrainConfig(data=data, out=_s(out), preset=b.model_preset,
                               model_overrides=list(b.model_overrides) + overrides,
                               steps=steps, batch_size=b.pretrain_batch, seq_len=b.pretrain_seq_len,
                               lr=b.pretrain_lr, warmup=b.pretrain_warmup, mean_steps=b.mean_steps,
                               loss_on=b.pretrain_loss_on, windows=b.pretrain_windows,
                               min_depth=b.min_depth, bptt_steps=b.bptt_steps, eval_every=max(steps // 4, 1),
                               save_every=steps, keep=1, seed=ctx.cfg.seed, device=ctx.cfg.device,
                               threads=_threads(ctx), progress=False, log_every=10,
                               resume=(out / "metrics.jsonl").exists()))
    if res.get("exit_code", 0) != 0:
        raise RuntimeError(f"pre-training stopped with exit code {res['exit_code']}")
    return {"ckpt_dir": _s(out / "final"), "metrics_file": _s(out / "metrics.jsonl")}


def pretrain_phase(ctx: Context) -> dict[str, Any]:
    return _pretrain(ctx, ctx.path("pretrain"), ctx.budget.pretrain_steps, [],
                     ctx.outputs["data"]["pretrain_dir"])


def _sft(ctx: Context, out: Path, data: str, init: str) -> dict[str, Any]:
    from looplm.train.sft import SFTConfig, train

    b = ctx.budget
    res = train(SFTConfig(data=data, init=init, out=_s(out), steps=b.sft_steps, batch_size=b.sft_batch,
                          seq_len=min(512, 384), lr=b.sft_lr, warmup=20, eval_every=0, save_every=b.sft_steps,
                          sample_depth=True, mean_steps=b.mean_steps, min_depth=b.min_depth,  # as pre-trained
                          bptt_steps=b.bptt_steps, exit_share=b.sft_exit_share,
                          keep=1, seed=ctx.cfg.seed, device=ctx.cfg.device, threads=_threads(ctx), progress=False,
                          log_every=10, resume=(out / "metrics.jsonl").exists()))
    if res.get("exit_code", 0) != 0:
        raise RuntimeError(f"SFT stopped with exit code {res['exit_code']}")
    return {"ckpt_dir": _s(out / "final"), "metrics_file": _s(out / "metrics.jsonl")}


def sft_phase(ctx: Context) -> dict[str, Any]:
    return _sft(ctx, ctx.path("sft"), ctx.outputs["data"]["sft_file"], ctx.outputs["pretrain"]["ckpt_dir"])


def sft_noreplay_phase(ctx: Context) -> dict[str, Any]:
    return _sft(ctx, ctx.path("sft-noreplay"), ctx.outputs["data"]["sft-noreplay_file"],
                ctx.outputs["pretrain"]["ckpt_dir"])


def _grpo(ctx: Context, out: Path, init: str, prompts: str, reward: str, steps: int) -> dict[str, Any]:
    from looplm.train.grpo import GRPOConfig, train

    b = ctx.budget
    res = train(GRPOConfig(init=init, out=_s(out), prompts=prompts, eval_prompts=ctx.outputs["data"]["rl_heldout_file"],
                           eval_n=32, eval_every=max(steps // 3, 1), reward=reward, group_size=b.grpo_group,
                           prompts_per_step=b.grpo_prompts_per_step, max_new_tokens=b.grpo_max_new, lr=b.grpo_lr,
                           steps=steps, seed=ctx.cfg.seed, save_every=steps, keep=1, log_every=5,
                           device=ctx.cfg.device, threads=_threads(ctx), progress=False,
                           resume=any(out.glob("step_*"))))
    if res["exit_code"] != 0:
        raise RuntimeError(f"GRPO stopped with exit code {res['exit_code']}")
    return {"ckpt_dir": _s(out / "final"), "metrics_file": _s(out / "metrics.jsonl"),
            "last": {k: v for k, v in res["last"].items() if isinstance(v, (int, float))}}


def grpo_outcome_phase(ctx: Context) -> dict[str, Any]:
    return _grpo(ctx, ctx.path("grpo-outcome"), ctx.outputs["sft"]["ckpt_dir"],
                 ctx.outputs["data"]["rl_outcome_file"], "outcome", ctx.budget.grpo_outcome_steps)


def grpo_outcome_noreplay_phase(ctx: Context) -> dict[str, Any]:
    return _grpo(ctx, ctx.path("grpo-outcome-noreplay"), ctx.outputs["sft-noreplay"]["ckpt_dir"],
                 ctx.outputs["data"]["rl_outcome_noreplay_file"], "outcome", ctx.budget.grpo_outcome_steps)


def grpo_process_phase(ctx: Context) -> dict[str, Any]:
    return _grpo(ctx, ctx.path("grpo-process"), ctx.outputs["grpo-outcome"]["ckpt_dir"],
                 ctx.outputs["data"]["rl_process_file"], "process", ctx.budget.grpo_process_steps)


def grpo_outcome_cmp_phase(ctx: Context) -> dict[str, Any]:
    """The control for the process reward: same start, same prompts, same steps, outcome reward."""
    return _grpo(ctx, ctx.path("grpo-outcome-cmp"), ctx.outputs["grpo-outcome"]["ckpt_dir"],
                 ctx.outputs["data"]["rl_process_file"], "outcome", ctx.budget.grpo_process_steps)


# ------------------------------------------------------------------------------------ speed, audit
def calibrate_phase(ctx: Context) -> dict[str, Any]:
    from looplm.calibrate.configs import HaltCalibConfig
    from looplm.calibrate.halt import calibrate_halt

    out = ctx.path("calibrate-halt")
    res = calibrate_halt(HaltCalibConfig(init=ctx.outputs["grpo-process"]["ckpt_dir"], data="dfs_verbal",
                                         out=_s(out), n=ctx.budget.calib_n, seed=ctx.cfg.seed, progress=False))
    return {"ckpt_dir": _s(out), "result": _numbers(res)}


def spec_phase(ctx: Context) -> dict[str, Any]:
    from looplm.calibrate.configs import SpecTrainConfig
    from looplm.calibrate.spec import train_spec

    out = ctx.path("final")
    res = train_spec(SpecTrainConfig(init=ctx.outputs["calibrate-halt"]["ckpt_dir"], out=_s(out), data="dfs_verbal",
                                     n=ctx.budget.spec_n, epochs=ctx.budget.spec_epochs, seed=ctx.cfg.seed,
                                     progress=False))
    return {"ckpt_dir": _s(out), "result": _numbers(res)}


def audit_phase(ctx: Context) -> dict[str, Any]:
    from looplm.audit import AuditConfig, run_audit

    out = ctx.path("audit")
    res = run_audit(AuditConfig(ckpt=ctx.outputs["train-spec"]["ckpt_dir"], out=_s(out),
                                elastic_n=ctx.budget.audit_elastic_n, seed=ctx.cfg.seed, progress=False))
    return {"audit_dir": _s(out), "result": _numbers(res)}


def _numbers(res: Any, depth: int = 0) -> Any:
    """The JSON-able scalars of a stage's result dict (nested one level), for the manifest."""
    if not isinstance(res, dict) or depth > 2:
        return None
    out = {}
    for k, v in res.items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = v
        elif isinstance(v, dict):
            sub = _numbers(v, depth + 1)
            if sub:
                out[k] = sub
    return out


# ------------------------------------------------------------------------------------ ablation, eval
def ablation_phase(ctx: Context) -> dict[str, Any]:
    """Anchored vs per-step core KV from the same data and budget: DFS accuracy, decode speed, KV memory."""
    from looplm.checkpoint import load_checkpoint
    from looplm.evaluate import EvalConfig, run_eval
    from looplm.generate import GenerationConfig, generate

    b, res = ctx.budget, {}
    for mode in ("anchored", "per_step"):
        out = ctx.path("ablation", mode)
        _pretrain(ctx, out, b.ablation_steps, [f"core_kv={mode}"], ctx.outputs["data"]["pretrain_dir"])
        ev = run_eval(EvalConfig(ckpt=_s(out / "final"), tasks=("clrs-dfs",), n=b.ablation_eval_n, seed=ctx.cfg.seed,
                                 out=_s(ctx.path("ablation", f"{mode}-eval")), progress=False, print_table=False))
        model, tok, _ = load_checkpoint(out / "final")
        prompt = [tok.eos_id] + tok.encode("dfs:\n")
        gen = generate(model, [prompt], GenerationConfig(max_new_tokens=128, stop_tokens=()))
        steps = model.config.recurrence
        res[mode] = {"clrs_dfs": _clrs_accuracy(ev),
                     "eval_file": _s(ctx.path("ablation", f"{mode}-eval", "eval.json")),
                     "decode_tokens_per_s_batch1": gen.new_tokens / gen.seconds,
                     "kv_bytes_per_token_8": model.kv_cache_bytes_per_token(steps),
                     "kv_bytes_per_token_32": model.kv_cache_bytes_per_token(32),
                     "metrics_file": _s(out / "metrics.jsonl")}
    path = ctx.path("ablation", "ablation.json")
    path.write_text(json.dumps(res, indent=2))
    return {"ablation_file": _s(path), **{m: {k: v for k, v in r.items() if k != "clrs_dfs"} for m, r in res.items()}}


def _clrs_accuracy(ev: dict) -> float | None:
    """The headline CLRS-DFS accuracy of a `run_eval` result: `summary["clrs-dfs"]` is {depth: accuracy}."""
    by_depth = (ev.get("summary") or {}).get("clrs-dfs") if isinstance(ev, dict) else None
    return next(iter(by_depth.values()), None) if by_depth else None


EVAL_COLUMNS = ("pretrain", "sft", "grpo-outcome", "grpo-process", "calibrate-halt", "train-spec",
                "sft-noreplay", "grpo-outcome-noreplay", "grpo-outcome-cmp")


def eval_phase(ctx: Context) -> dict[str, Any]:
    from looplm.evaluate import CompareConfig, EvalConfig, run_compare

    tasks = ("dfs-verbal", "clrs-dfs", "arith", "word-problems") + (("gsm8k",) if ctx.cfg.gsm8k else ())
    sources = [ctx.outputs[p]["ckpt_dir"] for p in EVAL_COLUMNS if p in ctx.outputs]
    labels = [p for p in EVAL_COLUMNS if p in ctx.outputs]
    template = EvalConfig(ckpt="-", tasks=tasks, n=ctx.budget.eval_n, seed=ctx.cfg.seed, gsm8k=ctx.cfg.gsm8k,
                          progress=False, print_table=False)
    out = ctx.path("eval")
    res = run_compare(CompareConfig(sources=tuple(sources), labels=tuple(labels), out=_s(out), template=template,
                                    reuse=False))
    return {"eval_dir": _s(out), "table_file": _s(out / "alignment_tax.md"), "result": _numbers(res)}


def eval_depth_phase(ctx: Context) -> dict[str, Any]:
    """Test-time depth: the final checkpoint at R, 2R, 4R steps on graphs larger than trained
    (`depth_eval.py`); writes `eval-depth/depth_sweep.json`."""
    from looplm.reproduce.depth_eval import SWEEP_JSON, depth_sweep, larger_sizes

    sizes = larger_sizes(ctx.budget)
    path = ctx.path("eval-depth", SWEEP_JSON)
    device = "cuda" if ctx.cfg.device != "cpu" and _cuda() else "cpu"
    res = depth_sweep(ctx.outputs["train-spec"]["ckpt_dir"], sizes, ctx.budget.depth_eval_n, ctx.cfg.seed, path,
                      device=device)
    return {"sweep_file": _s(path), "skipped": res["skipped"],
            "trained": {t: v["trained"] for t, v in sizes.items()},
            "accuracy": {t: e["accuracy"] for t, e in res["sweep"].items()}}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def report_phase(ctx: Context) -> dict[str, Any]:
    from looplm.reproduce.report import write_report

    md, html = write_report(ctx, [p.name for p in phases(ctx.cfg)])
    return {"report_file": _s(md), "html_file": _s(html)}


def phases(cfg) -> list[Phase]:
    b = cfg.budget

    def sett(*keys):
        return lambda ctx: {"budget": {k: getattr(b, k) for k in keys}, "seed": cfg.seed, "preset": cfg.preset}

    data_keys = ("mix_tokens", "mix", "clrs_nodes", "logic_nodes", "sft_sizes", "sft_math_sizes", "grpo_prompts")
    grpo_keys = ("grpo_prompts_per_step", "grpo_group", "grpo_max_new", "grpo_lr")
    table = [
        Phase("tokenizer", tokenizer_phase, (), sett("vocab_size")),
        Phase("data", data_phase, ("tokenizer",),
              lambda ctx: {**sett(*data_keys)(ctx), "text": cfg.text, "chat": cfg.chat, "replay": cfg.replay}),
        Phase("pretrain", pretrain_phase, ("data",),
              sett("pretrain_steps", "pretrain_batch", "pretrain_seq_len", "pretrain_lr", "pretrain_loss_on",
                   "pretrain_windows", "mean_steps", "min_depth", "bptt_steps")),
        Phase("sft", sft_phase, ("pretrain", "data"), sett("sft_steps", "sft_batch", "sft_lr", "sft_exit_share")),
        Phase("sft-noreplay", sft_noreplay_phase, ("pretrain", "data"),
              sett("sft_steps", "sft_batch", "sft_lr", "sft_exit_share")),
        Phase("grpo-outcome", grpo_outcome_phase, ("sft", "data"), sett("grpo_outcome_steps", *grpo_keys)),
        Phase("grpo-outcome-noreplay", grpo_outcome_noreplay_phase, ("sft-noreplay", "data"),
              sett("grpo_outcome_steps", *grpo_keys)),
        Phase("grpo-process", grpo_process_phase, ("grpo-outcome", "data"), sett("grpo_process_steps", *grpo_keys)),
        Phase("grpo-outcome-cmp", grpo_outcome_cmp_phase, ("grpo-outcome", "data"),
              sett("grpo_process_steps", *grpo_keys)),
        Phase("calibrate-halt", calibrate_phase, ("grpo-process",), sett("calib_n")),
        Phase("train-spec", spec_phase, ("calibrate-halt",), sett("spec_n", "spec_epochs")),
        Phase("audit", audit_phase, ("train-spec",), sett("audit_elastic_n")),
    ]
    if cfg.ablation:
        table.append(Phase("ablation", ablation_phase, ("data",), sett("ablation_steps", "ablation_eval_n",
                                                                         "pretrain_batch", "pretrain_seq_len",
                                                                         "pretrain_loss_on", "pretrain_windows")))
    deps = tuple(p.name for p in table if p.name in EVAL_COLUMNS)
    table.append(Phase("eval", eval_phase, deps, lambda ctx: {"n": b.eval_n, "gsm8k": cfg.gsm8k}))
    table.append(Phase("eval-depth", eval_depth_phase, ("train-spec",),
                       sett("depth_eval_n", "logic_nodes", "clrs_nodes")))
    table.append(Phase("report", report_phase, tuple(p.name for p in table), always=True))
    return table
