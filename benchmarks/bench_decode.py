"""Benchmark: greedy decoding speed of RecursiveCausalLM with and without its KV cache, and a plain GPT.

For each batch size: `looplm.generate.generate` with `use_cache=True` (prefill once, then one token per
forward) and `use_cache=False` (the whole sequence re-run for every new token), `max_new_tokens` new
tokens, no stop tokens, fixed depth; and the plain GPT of equal forward FLOPs per token
(`plain_gpt.matched_config` at --steps and prompt + new tokens) decoding with its own KV cache. The three
are run in rotating order (`common.interleaved`). Weights are random: decoding cost does not depend
on them. Tokens/s counts new tokens of all rows. The table also says whether cached and uncached
decoding produced the same tokens (they should, up to float ties). Target: tiny, batch 1, 256 new
tokens: cached >= 5x uncached. Writes the record `benchmarks/results/bench_decode-PRESET.json`
(`--no-save` to skip).

    python benchmarks/bench_decode.py [--preset tiny] [--new-tokens 256] [--batch 1,8] [--threads 1]
        [--repeats 1] [--no-save]

Simplifications: equal-length random prompts (--prompt-len); one thread by default (single-token
decoding is dominated by per-op overhead, and extra threads only add synchronisation on this machine).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install

import torch  # noqa: E402

from benchmarks.common import figure, interleaved, machine_info, markdown_table, set_threads, write_record  # noqa: E402
from benchmarks.plain_gpt import PlainGPT, greedy_decode, matched_config  # noqa: E402
from looplm.config import PRESETS, get_preset  # noqa: E402
from looplm.generate import GenerationConfig, generate  # noqa: E402
from looplm.model import RecursiveCausalLM  # noqa: E402

TARGET_RATIO = 5.0  # tiny, batch 1, 256 new tokens: cached / uncached tokens/s


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny", choices=list(PRESETS))
    ap.add_argument("--steps", type=int, default=None, help="recurrence steps (default: the preset's recurrence)")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs of each decoder (median reported)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/bench_decode-PRESET.json")
    return ap.parse_args(argv)


def parse_batches(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--batch={text!r} must be comma-separated integers, e.g. 1,8") from None
    if not out or min(out) < 1:
        raise SystemExit(f"--batch={text!r} must list integers >= 1")
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    cfg = get_preset(args.preset)
    steps = args.steps or cfg.recurrence
    total = args.prompt_len + args.new_tokens
    if total > cfg.max_seq_len:
        raise SystemExit(f"--prompt-len + --new-tokens = {total} exceeds max_seq_len={cfg.max_seq_len}")
    if args.new_tokens < 1 or args.prompt_len < 1:
        raise SystemExit("--new-tokens and --prompt-len must be >= 1")
    torch.manual_seed(0)
    loop = RecursiveCausalLM(cfg).eval()
    pcfg = matched_config(cfg, steps, total)
    plain = PlainGPT(pcfg).eval()
    info = machine_info()
    print(f"machine: {info}")
    print(f"looplm {args.preset} at {steps} steps; plain GPT {pcfg.n_layers} layers (equal FLOPs/token at "
          f"seq {total}); prompt {args.prompt_len}, {args.new_tokens} new tokens, {args.threads} threads")
    rows, ratios, target_ratio, figs = [], [], None, []
    for B in parse_batches(args.batch):
        prompts = torch.randint(0, cfg.vocab_size, (B, args.prompt_len))
        outs: dict[str, object] = {}

        def run_loop(use_cache: bool, n: int = args.new_tokens):
            gcfg = GenerationConfig(max_new_tokens=n, steps=steps, use_cache=use_cache)
            outs["cached" if use_cache else "uncached"] = generate(loop, prompts.tolist(), gcfg).tokens

        def run_plain(n: int = args.new_tokens):
            outs["plain"] = greedy_decode(plain, prompts, n)

        run_loop(True, 4), run_loop(False, 4), run_plain(4)  # warm-up (allocator, kernels)
        t = interleaved({"cached": lambda: run_loop(True), "uncached": lambda: run_loop(False), "plain": run_plain},
                        rounds=args.repeats, warmup=0)
        same = sum(a == b for a, b in zip(outs["cached"], outs["uncached"]))
        tps = {k: B * args.new_tokens / v.median for k, v in t.items()}
        labels = {"cached": "looplm cached", "uncached": "looplm uncached", "plain": "plain GPT cached"}
        for name, label in labels.items():
            rows.append([B, label, f"{t[name].median:.2f}", f"{tps[name]:.1f}",
                         f"{1e3 * t[name].median / args.new_tokens:.1f}",
                         f"{same}/{B} rows identical" if name == "uncached" else ""])
        r_cache, r_plain = tps["cached"] / tps["uncached"], tps["cached"] / tps["plain"]
        ratios.append(f"batch {B}: looplm cached / uncached = **{r_cache:.2f}x**; "
                      f"looplm cached / plain GPT cached = {r_plain:.2f}x")
        judged = B == 1 and args.preset == "tiny" and args.new_tokens == 256
        if judged:
            target_ratio = r_cache
        figs += [figure(f"cached / uncached tokens/s, batch {B}, {args.new_tokens} new tokens", round(r_cache, 2), "x",
                        f">= {TARGET_RATIO}" if judged else None, headline=judged),
                 figure(f"looplm cached / plain GPT cached tokens/s, batch {B}", round(r_plain, 2), "x"),
                 figure(f"cached and uncached decoding give the same tokens, batch {B}", same == B, target="== true")]
    table = markdown_table(["batch", "decoder", "seconds", "new tokens/s", "ms per decode step", "check"], rows)
    lines = [table, ""] + [f"- {r}" for r in ratios]
    if target_ratio is not None:
        lines.append(f"- target: tiny, batch 1, 256 new tokens, cached >= {TARGET_RATIO}x uncached: "
                     f"{'met' if target_ratio >= TARGET_RATIO else 'NOT met'} ({target_ratio:.2f}x)")
    print("\n".join(lines))
    if not args.no_save:
        write_record(f"bench_decode-{args.preset}", figs, script=__file__, info=info, details="\n".join(lines),
                     title=f"cached vs uncached greedy decoding, `{args.preset}` at {steps} steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
