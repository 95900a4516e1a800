"""Benchmark: compiled fixed-depth decoding (`GenerationConfig(compile=True)`) against eager decoding.

For each batch size: `looplm.generate.generate` with the KV cache at fixed depth, eager and with the
`torch.compile`d static-shape decode step (`looplm/compiled_decode.py`), on the same random-weight
model and the same left-padded random prompts, `--new-tokens` new tokens, no stop tokens. Greedy and
seeded sampling (temperature 1, as GRPO's rollouts) are both timed; the two decoders run in rotating
order (`common.interleaved`) and the table gives the median seconds per call, tokens/s and the ratio.
It also reports the one-time cost of the first compiled call of each shape (compile + first run;
inductor's on-disk cache makes a repeat in a later process much cheaper) and whether both decoders
produced the same tokens. Writes the record `benchmarks/results/bench_compiled_decode-PRESET.json`
(`--no-save` to skip).

    python benchmarks/bench_compiled_decode.py [--preset tiny] [--batch 1,8,32] [--new-tokens 64]
        [--rounds 3] [--threads 1] [--no-save]

Simplifications: random weights (decoding cost does not depend on them); prompt lengths drawn in
[prompt_len / 2, prompt_len] so the batch is left-padded as in real use.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install

import torch  # noqa: E402

from benchmarks.common import figure, interleaved, markdown_table, set_threads, write_record  # noqa: E402
from looplm.config import PRESETS, get_preset  # noqa: E402
from looplm.generate import GenerationConfig, generate  # noqa: E402
from looplm.model import RecursiveCausalLM  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny", choices=list(PRESETS))
    ap.add_argument("--batch", default="1,8,32", help="comma-separated batch sizes")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per decoder (median reported)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-save", action="store_true",
                    help="do not write benchmarks/results/bench_compiled_decode-PRESET.json")
    args = ap.parse_args(argv)
    try:
        args.batch = [int(x) for x in args.batch.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--batch={args.batch!r} must be comma-separated integers") from None
    if not args.batch or min(args.batch) < 1 or args.new_tokens < 1 or args.prompt_len < 2 or args.rounds < 1:
        raise SystemExit("--batch, --new-tokens, --rounds must be >= 1 and --prompt-len >= 2")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(0)
    model = RecursiveCausalLM(get_preset(args.preset)).eval()
    R = model.config.recurrence
    rng = random.Random(0)
    rows, figs, all_same = [], [], True
    for B in args.batch:
        prompts = [[rng.randrange(5, model.config.vocab_size) for _ in range(rng.randint(args.prompt_len // 2,
                                                                                         args.prompt_len))]
                   for _ in range(B)]
        for mode, extra in (("greedy", {}), ("sampled", {"temperature": 1.0, "seed": 0})):
            cfgs = {name: GenerationConfig(max_new_tokens=args.new_tokens, steps=R, compile=c, **extra)
                    for name, c in (("eager", False), ("compiled", True))}
            t0 = time.perf_counter()
            first = generate(model, prompts, cfgs["compiled"])  # compiles this shape (once per process)
            first_s = time.perf_counter() - t0
            same = first.tokens == generate(model, prompts, cfgs["eager"]).tokens
            t = interleaved({n: (lambda c=c: generate(model, prompts, c)) for n, c in cfgs.items()},
                            rounds=args.rounds, warmup=1)
            e, c = t["eager"].median, t["compiled"].median
            n_tok = B * args.new_tokens
            rows.append([B, mode, f"{e:.3f}", f"{c:.3f}", f"{n_tok / e:.0f}", f"{n_tok / c:.0f}", f"**{e / c:.2f}x**",
                         f"{1e3 * c / args.new_tokens:.2f}", f"{first_s:.1f}", "yes" if same else "NO"])
            print(rows[-1], flush=True)
            all_same = all_same and same
            figs.append(figure(f"compiled / eager tokens/s, batch {B}, {mode}, {args.new_tokens} new tokens",
                               round(e / c, 2), "x", headline=mode == "greedy" and B <= 8))
            figs.append(figure(f"first compiled call (compile included), batch {B}, {mode}", round(first_s, 1), " s"))
    table = markdown_table(["batch", "decoding", "eager s", "compiled s", "eager tok/s", "compiled tok/s",
                            "compiled / eager speed", "compiled ms/token step", "first compiled call s",
                            "same tokens"], rows)
    body = (f"`{args.preset}` at R = {R}, random weights, {args.new_tokens} new tokens, prompts of "
            f"{args.prompt_len // 2}-{args.prompt_len} tokens (left-padded), {args.threads} thread(s), fixed depth, "
            f"median of {args.rounds} interleaved rounds. \"first compiled call\" includes compiling that shape "
            f"(less when inductor's on-disk cache already holds it).\n\n" + table)
    print(body)
    if not args.no_save:
        figs.insert(0, figure("compiled and eager decoding give the same tokens, every row", all_same,
                              target="== true", headline=True))
        write_record(f"bench_compiled_decode-{args.preset}", figs, script=__file__, details=body,
                     title=f"compiled vs eager fixed-depth decoding, `{args.preset}` at R = {R}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
