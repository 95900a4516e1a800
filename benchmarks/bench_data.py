"""Benchmark: build a pre-training mixture (default 5M tokens, 50/33/17) and report time and memory.

Targets: < 120 s and peak RSS < 2 GB for 5M tokens. Also times the default tokenizer (target < 5 s
for vocab 2048). The text domain reads `wikitext2/wiki.test.raw` of the shared data directory
(`$LOOPLM_SHARED_DATA`, see the README's "Data sources"; re-read as needed, `--allow-repeat`), or a
synthetic text file when the shared data is absent (the record says which). Writes the record
`benchmarks/results/bench_data.json` (`--no-save` to skip). Run:

    python benchmarks/bench_data.py [--tokens 5000000] [--tracemalloc] [--no-save]

Peak RSS is `resource.getrusage(RUSAGE_SELF).ru_maxrss` of this process (it includes the Python
interpreter and libraries); `--tracemalloc` also reports the peak of Python-level allocations during
the build (it slows the build down, so its time is not comparable).

Simplification: one run, wall-clock `time.perf_counter`; the machine is shared, so expect noise.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install

from benchmarks.common import figure, write_record  # noqa: E402
from looplm.data.mixture import MixConfig, build_pretrain_mix  # noqa: E402
from looplm.tokenizer import train_default_tokenizer  # noqa: E402

TARGET_S, TARGET_RSS_GB, TARGET_TOK_S = 120.0, 2.0, 5.0


def text_source(tmp: Path) -> Path:
    shared = Path(os.environ.get("LOOPLM_SHARED_DATA", ROOT.parent / "shared" / "data"))
    wiki = shared / "wikitext2" / "wiki.test.raw"
    if wiki.is_file():
        return wiki
    rng = random.Random(0)
    words = "the of and in a river town music game season film war city island school model".split()
    path = tmp / "synthetic.raw"
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(80)) for _ in range(20_000)))
    return path


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=5_000_000)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--tracemalloc", action="store_true", help="also measure the Python allocation peak")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/bench_data.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        t0 = time.perf_counter()
        tok = train_default_tokenizer(vocab_size=args.vocab, seed=0)
        t_tok = time.perf_counter() - t0
        tok.save(tmp / "tok")
        print(f"tokenizer: vocab {tok.vocab_size} (asked {args.vocab}) in {t_tok:.2f} s  "
              f"{'OK' if t_tok < TARGET_TOK_S else 'SLOW'}")
        text = text_source(tmp)
        cfg = MixConfig(tokenizer=tmp / "tok", out=tmp / "mix", tokens=args.tokens,
                        sources={"text": f"local:{text}"}, allow_repeat=True)
        if args.tracemalloc:
            tracemalloc.start()
        t0 = time.perf_counter()
        m = build_pretrain_mix(cfg)
        dt = time.perf_counter() - t0
        py_peak = tracemalloc.get_traced_memory()[1] if args.tracemalloc else None
        size = sum((tmp / "mix" / s["file"]).stat().st_size for s in m["train"]["shards"])
    shares = ", ".join(f"{d} {a:.4f}" for d, a in m["achieved_shares"].items())
    print(f"mixture: {m['train']['tokens']:,} train tokens (+{sum(v['tokens'] for v in m['val'].values()):,} val) "
          f"in {dt:.1f} s = {m['train']['tokens'] / dt:,.0f} tokens/s; {size / 1e6:.1f} MB on disk")
    print(f"shares: {shares}; text epochs {m['domains']['text']['epochs']}; text source {text}")
    print(f"peak RSS {rss_gb():.3f} GB" + (f"; tracemalloc peak {py_peak / 1e6:.1f} MB" if py_peak else ""))
    ok = dt < TARGET_S and rss_gb() < TARGET_RSS_GB
    print(f"targets (< {TARGET_S:.0f} s, < {TARGET_RSS_GB} GB): {'OK' if ok else 'MISSED'}"
          + (" (time inflated by --tracemalloc)" if args.tracemalloc else ""))
    if not args.no_save:
        judged = args.tokens == 5_000_000 and not args.tracemalloc  # the targets are for 5M tokens, untraced
        figs = [figure(f"seconds to build a {args.tokens:,}-token mixture", round(dt, 1), " s",
                       f"< {TARGET_S:g}" if judged else None),
                figure("peak RSS of the build process", round(rss_gb(), 3), " GB",
                       f"< {TARGET_RSS_GB:g}" if judged else None),
                figure(f"seconds to train the default tokenizer (vocab {args.vocab})", round(t_tok, 2), " s",
                       f"< {TARGET_TOK_S:g}" if args.vocab == 2048 else None),
                figure("mixture tokens/s", round(m["train"]["tokens"] / dt), " tokens/s")]
        write_record("bench_data", figs, script=__file__, title="building a pre-training mixture: time and memory",
                     notes=[f"text source: {text}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
