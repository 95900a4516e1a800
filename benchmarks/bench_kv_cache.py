"""Benchmark: KV-cache bytes per token of anchored CART-MLA, per-step latents and a plain GPT of equal FLOPs.

For each preset and number of recurrence steps: the formula (`model.kv_cache_bytes_per_token(steps)`,
split into prelude + coda GQA keys/values and core latents) next to the bytes of a cache actually
allocated by `model.new_cache(batch=1, max_len=L, n_steps=steps)` divided by L. The plain GPT is the
one with equal forward FLOPs per token at those steps and --seq-len (`plain_gpt.matched_config`), with
the looplm config's KV heads (GQA) and with one KV head per query head (MHA, as in nanoGPT); its cache
does not depend on steps, but a deeper recurrence needs a deeper plain GPT to match. Target:
anchored core bytes/token identical at 8 and 32 steps. Writes the record `benchmarks/results/
bench_kv_cache.json` (`--no-save` to skip).

    python benchmarks/bench_kv_cache.py [--presets tiny,small] [--steps 8,32] [--seq-len 256] [--no-save]

Simplification: fp32 caches (4 bytes per number); the `valid` padding mask (1 byte per position, the
same for every variant) is not counted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install

import torch  # noqa: E402

from benchmarks.common import figure, markdown_table, write_record  # noqa: E402
from benchmarks.plain_gpt import PlainGPT, matched_config  # noqa: E402
from looplm.config import PRESETS, get_preset  # noqa: E402
from looplm.model import RecursiveCausalLM  # noqa: E402

CACHE_LEN = 64  # positions allocated for the measured caches


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="tiny,small", help=f"comma-separated, from {', '.join(PRESETS)}")
    ap.add_argument("--steps", default="8,32", help="comma-separated recurrence steps")
    ap.add_argument("--seq-len", type=int, default=256, help="sequence length the plain GPT's FLOPs are matched at")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/bench_kv_cache.json")
    return ap.parse_args(argv)


def int_list(text: str, name: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--{name}={text!r} must be comma-separated integers") from None


def looplm_rows(preset: str, mode: str, steps_list: list[int]) -> tuple[list[list[object]], dict[int, tuple], bool]:
    cfg = get_preset(preset, core_kv=mode)
    torch.manual_seed(0)
    model = RecursiveCausalLM(cfg)
    rows, core = [], {}
    for steps in steps_list:
        f = model.kv_cache_bytes_per_token(steps)
        cache = model.new_cache(1, CACHE_LEN, steps)
        m_core = sum(t.numel() * t.element_size() for t in cache.core) / CACHE_LEN
        m_total = cache.nbytes() / CACHE_LEN
        core[steps] = (f["core"], m_core)
        ok = f["total"] == m_total and f["core"] == m_core
        rows.append([preset, f"looplm {mode}", steps, f["prelude"] + f["coda"], f["core"], f["total"],
                     f"{m_total:.0f}", "yes" if ok else "NO"])
    return rows, core, all(r[-1] == "yes" for r in rows)


def plain_rows(preset: str, steps_list: list[int], seq_len: int) -> list[list[object]]:
    cfg = get_preset(preset)
    rows = []
    for label, kv_heads in (("GQA", cfg.n_kv_heads), ("MHA", cfg.n_heads)):
        for steps in steps_list:
            pcfg = matched_config(cfg, steps, seq_len, n_kv_heads=kv_heads)
            model = PlainGPT(pcfg)
            f = model.kv_cache_bytes_per_token()
            m_total = model.new_cache(1, CACHE_LEN).nbytes() / CACHE_LEN
            rows.append([preset, f"plain GPT {label}, {pcfg.n_layers} layers", steps, f, 0, f, f"{m_total:.0f}",
                         "yes" if f == m_total else "NO"])
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    for p in presets:
        if p not in PRESETS:
            raise SystemExit(f"--presets: unknown preset {p!r}; valid: {', '.join(PRESETS)}")
    steps_list = int_list(args.steps, "steps")
    rows, notes, figs, consistent = [], [], [], True
    for preset in presets:
        for mode in ("anchored", "per_step"):
            r, core, ok = looplm_rows(preset, mode, steps_list)
            rows, consistent = rows + r, consistent and ok
            name = "anchored" if mode == "anchored" else "per-step"
            figs += [figure(f"`{preset}` {name} core KV bytes/token, {s} steps", int(b), "B/token")
                     for s, (_, b) in core.items()]
            if mode == "anchored":
                same = len({v for pair in core.values() for v in pair}) == 1
                figs.append(figure(f"`{preset}` anchored core KV bytes/token equal at "
                                   f"{' and '.join(map(str, core))} steps", same, target="== true", headline=True))
                notes.append(f"{preset}: anchored core KV bytes/token at steps {', '.join(map(str, core))}: "
                             f"{', '.join(f'{a} (measured {b:.0f})' for a, b in core.values())} -> "
                             f"{'identical (target met)' if same else 'DIFFERENT (target NOT met)'}")
        p_rows = plain_rows(preset, steps_list, args.seq_len)
        rows, consistent = rows + p_rows, consistent and all(r[-1] == "yes" for r in p_rows)
    figs.append(figure("formula bytes/token = allocated cache bytes/token, every row", consistent, target="== true"))
    headers = ["preset", "model", "steps", "prelude+coda B/token", "core B/token", "total B/token (formula)",
               "total B/token (allocated cache)", "formula = cache"]
    lines = [markdown_table(headers, rows), ""] + [f"- {n}" for n in notes]
    print("\n".join(lines))
    if not args.no_save:
        write_record("bench_kv_cache", figs, script=__file__, details="\n".join(lines),
                     title="KV-cache bytes per token: anchored CART-MLA, per-step latents, plain GPT")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
