"""`looplm data {pretrain-mix, sft, rl}`: build pre-training mixtures, SFT chat sets and RL prompt
sets. Each build writes a manifest (sources, counts, shares, seed, sha256) next to its output.

Simplification: options map one to one onto `MixConfig`, `SFTConfig` and `RLConfig`; the builders do
all validation, so tests call them without the CLI.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from looplm.data.mixture import DataBuildError, MixConfig, build_pretrain_mix, parse_mix
from looplm.data.rl import RLConfig, build_rl
from looplm.data.sft import MATH_SOURCES, RECIPES, SFTConfig, build_sft
from looplm.data.shards import DEFAULT_SHARD_TOKENS

_COUNT_RE = re.compile(r"(\d+(?:\.\d+)?)([kKmMgG]?)")
_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_count(text: str) -> int:
    """`60M`, `500k`, `5000` -> int (decimal suffixes)."""
    m = _COUNT_RE.fullmatch(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"expected a count like 5000, 500k or 60M, got {text!r}")
    value = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of tokens")
    return int(value)


def parse_ints(text: str) -> tuple[int, ...]:
    """`4,5` or `4-8` (inclusive range) -> tuple of ints."""
    try:
        if re.fullmatch(r"\d+-\d+", text):
            lo, hi = map(int, text.split("-"))
            return tuple(range(lo, hi + 1))
        return tuple(int(x) for x in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected integers like 4,5 or 4-8, got {text!r}") from e


def parse_pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key or not value:
            raise DataBuildError(f"{flag} {item!r}: expected KEY=VALUE")
        if key in out:
            raise DataBuildError(f"{flag} given twice for {key!r}")
        out[key] = value
    return out


def _opt_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _print(manifest: dict[str, Any], keys: tuple[str, ...]) -> None:
    print(json.dumps({k: manifest[k] for k in keys if k in manifest}, indent=2))


# ----------------------------------------------------------------------------- subcommands


def run_pretrain_mix(args: argparse.Namespace) -> int:
    cfg = MixConfig(tokenizer=args.tokenizer, out=args.out, tokens=args.tokens, mix=parse_mix(args.mix),
                    sources=parse_pairs(args.source, "--source"), seed=args.seed, val_tokens=args.val_tokens,
                    clrs_nodes=args.clrs_nodes, allow_repeat=args.allow_repeat,
                    shard_tokens=args.shard_tokens, overwrite=args.overwrite)
    m = build_pretrain_mix(cfg, log=lambda s: print(s, file=sys.stderr))
    summary = {d: {k: v[k] for k in ("train_tokens", "train_docs", "val_tokens", "epochs")}
               for d, v in m["domains"].items()}
    print(json.dumps({"out": str(args.out), "tokens": m["train"]["tokens"], "achieved_shares": m["achieved_shares"],
                      "domains": summary, "build_seconds": m["build_seconds"]}, indent=2))
    return 0


def run_sft(args: argparse.Namespace) -> int:
    sizes = None
    if args.sizes is not None:
        sizes = parse_ints(args.sizes)
        if len(sizes) != 3:
            raise DataBuildError(f"--sizes needs three numbers LOGIC,MATH,CHAT, got {args.sizes!r}")
    nodes = args.logic_nodes
    cfg = SFTConfig(recipe=args.recipe, out=args.out, sizes=sizes, math_source=args.math_source,
                    gsm8k_source=args.gsm8k, alpaca_source=args.alpaca, seed=args.seed, replay=args.replay,
                    logic_nodes=(min(nodes), max(nodes)), clrs_nodes=args.clrs_nodes,
                    exclude=args.exclude or [], drop_overlap=args.drop_overlap)
    _print(build_sft(cfg, log=lambda s: print(s, file=sys.stderr)),
           ("rows", "counts", "sources", "duplicate_prompts", "exclude_overlaps"))
    return 0


def run_rl(args: argparse.Namespace) -> int:
    opts = {k: _opt_value(v) for k, v in parse_pairs(args.opt, "--opt").items()}
    cfg = RLConfig(task=args.task, n=args.n, out=args.out, seed=args.seed, source=args.source, split=args.split,
                   opts=opts, exclude=args.exclude or [], drop_overlap=args.drop_overlap)
    _print(build_rl(cfg, log=lambda s: print(s, file=sys.stderr)),
           ("task", "rows", "source", "duplicate_prompts", "exclude_overlaps"))
    return 0


def _add_pretrain_mix(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain-mix", help="tokenised, packed pre-training shards mixed by token share",
        description="Tokenise documents from each domain, interleave them by token share (any prefix is a fair "
                    "mixture), pack them into uint16/uint32 shards and write manifest.json. Sources: clrs and "
                    "math default to generated data; text must be given (a file, hub, or generated "
                    "synthetic English on request). A failed hub load is an error.")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="directory holding tokenizer.json")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (new or empty)")
    p.add_argument("--tokens", required=True, type=parse_count, metavar="N", help="train tokens (e.g. 60M)")
    p.add_argument("--mix", default="clrs=0.5,math=0.33,text=0.17", metavar="D=S,...",
                   help="token shares per domain (clrs, math, text), summing to 1 (default: %(default)s)")
    p.add_argument("--source", action="append", metavar="DOMAIN=SPEC",
                   help="SPEC is hub (the domain's dataset), hub:NAME[:CONFIG][@SPLIT], generated, or local:PATH "
                        "(a .jsonl/.json/.parquet/.csv or text file, a hub-layout or save_to_disk directory; "
                        "repeatable). Defaults: clrs=generated, "
                        "math=generated; text has no default (e.g. text=local:../shared/data/wikitext2/wiki.test.raw, "
                        "or text=generated for synthetic English paragraphs, recorded in the manifest)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated documents (default: 0)")
    p.add_argument("--val-tokens", type=parse_count, default=50_000, metavar="N",
                   help="validation tokens per domain, disjoint from train (default: 50000)")
    p.add_argument("--clrs-nodes", type=parse_ints, default=(4, 5), metavar="N,N",
                   help="node counts of generated CLRS-Text DFS graphs, e.g. 4,5 or 4-8 (default: 4,5)")
    p.add_argument("--allow-repeat", action="store_true",
                   help="re-read an exhausted hub/local source (recorded as epochs) instead of failing")
    p.add_argument("--shard-tokens", type=parse_count, default=DEFAULT_SHARD_TOKENS, metavar="N",
                   help=f"tokens per train shard (default: {DEFAULT_SHARD_TOKENS})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing looplm data directory")
    p.set_defaults(data_func=run_pretrain_mix)


def _add_sft(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sft", help="chat SFT set {prompt, response, domain} with a manifest",
        description="Build an SFT JSONL from three domains: logic (generated verbal DFS), math (--math-source, "
                    "chosen explicitly) and chat (Alpaca format: --alpaca PATH|hub|generated). Sizes LOGIC,MATH,CHAT default to "
                    "10000,1000,10000 (three-domain) or 1000,333,333 (math-heavy); a size of 0 needs no source.")
    p.add_argument("--recipe", required=True, choices=tuple(RECIPES))
    p.add_argument("--out", required=True, metavar="FILE.jsonl")
    p.add_argument("--sizes", metavar="L,M,C", help="rows per domain LOGIC,MATH,CHAT (overrides the recipe)")
    p.add_argument("--math-source", choices=tuple(MATH_SOURCES), help="required when the math size is > 0")
    p.add_argument("--gsm8k", metavar="SOURCE", help="GSM8K source (for --math-source gsm8k): a file (.jsonl, .json, "
                   ".parquet, .csv), a directory ({split}.jsonl, main/{split}-*.parquet, save_to_disk), hub "
                   "(openai/gsm8k, main) or hub:NAME[:CONFIG][@SPLIT]")
    p.add_argument("--alpaca", metavar="PATH|hub|generated",
                   help="chat domain: Alpaca-format or TRL messages/prompt-completion rows (any source: a "
                        "file, a directory, hub:NAME[:CONFIG][@SPLIT]), hub (yahma/alpaca-cleaned), or generated "
                        "(synthetic English instructions, task synth_chat; recorded in the manifest)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--replay", type=float, default=0.0, metavar="F",
                   help="share F of the final set made of CLRS-Text DFS records, domain 'replay' (default: 0)")
    p.add_argument("--logic-nodes", type=parse_ints, default=(4, 8), metavar="LO-HI",
                   help="verbal DFS graph sizes (default: 4-8)")
    p.add_argument("--clrs-nodes", type=parse_ints, default=(4, 5), metavar="N,N", help="replay graph sizes")
    p.add_argument("--exclude", action="append", metavar="FILE.jsonl",
                   help="eval rows (with 'prompt') that must not appear in the set (repeatable)")
    p.add_argument("--drop-overlap", action="store_true", help="drop overlapping rows instead of failing")
    p.set_defaults(data_func=run_sft)


def _add_rl(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rl", help="RL prompt set {prompt, answer, task} (answer = gold final answer)",
        description="Build a prompt set for GRPO. Generated tasks use their train split (--split eval for "
                    "held-out sets); loaded tasks (gsm8k, orca_math, ...) need --source hub|PATH.")
    p.add_argument("--task", required=True, help="clrs_dfs, dfs_verbal, arith, word_problems, gsm8k, orca_math, ...")
    p.add_argument("--n", required=True, type=int, help="number of prompts")
    p.add_argument("--out", required=True, metavar="FILE.jsonl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", metavar="SOURCE", help="data source of a loaded task: a file (.jsonl, .json, .parquet, "
                   ".csv), a hub-layout or save_to_disk directory, hub, or hub:NAME[:CONFIG][@SPLIT]; TRL "
                   "messages / prompt-completion rows are accepted")
    p.add_argument("--split", help="task split (default: train)")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE",
                   help="task option, VALUE parsed as JSON when it can be (e.g. node_counts=[4,5])")
    p.add_argument("--exclude", action="append", metavar="FILE.jsonl", help="eval rows to keep out (repeatable)")
    p.add_argument("--drop-overlap", action="store_true", help="drop overlapping rows instead of failing")
    p.set_defaults(data_func=run_rl)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("data", help="build pre-training mixtures, SFT sets and RL prompt sets",
                              description="Dataset builders; every build writes a manifest.")
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", title="subcommands")
    _add_pretrain_mix(sub)
    _add_sft(sub)
    _add_rl(sub)
    p.set_defaults(func=main, data_parser=p)
    return p


def main(args: argparse.Namespace) -> int:
    func = getattr(args, "data_func", None)
    if func is None:
        args.data_parser.print_help(sys.stderr)
        return 2
    return func(args)
