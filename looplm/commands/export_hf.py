"""`looplm export-hf`: write a checkpoint as a Hugging Face model directory (looplm/hf/export.py).

    looplm export-hf --ckpt runs/tiny/sft --out hf/tiny-sft [--adaptive] [--force]

The output loads with `AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True)` and
`AutoTokenizer.from_pretrained(OUT)`, without looplm installed. Needs transformers (`pip install
looplm[hf]`). Prints the directory and its files.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export-hf", help="write a checkpoint as a Hugging Face model directory (trust_remote_code)",
        description="Write --ckpt as a transformers model directory at --out: config, safetensors weights, "
                    "tokenizer and the model code generated from looplm's source. The checkpoint is only read.")
    p.add_argument("--ckpt", required=True, metavar="DIR", help="looplm checkpoint directory")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write (must not overlap --ckpt)")
    p.add_argument("--adaptive", action="store_true",
                   help="make the checkpoint's calibrated AdaExit threshold (looplm calibrate-halt) the default")
    p.add_argument("--force", action="store_true", help="replace --out if it exists and is not empty")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    from looplm.hf.export import export_hf

    out = export_hf(args.ckpt, args.out, adaptive=args.adaptive, force=args.force)
    print(out)
    for f in sorted(out.iterdir()):
        print(f"  {f.name}  {f.stat().st_size} bytes")
    return 0
