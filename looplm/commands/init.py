"""`looplm init`: write a randomly initialised checkpoint with a tokenizer trained on generated text.

Vocabulary rule: the tokenizer is trained with `--vocab-size V` as its target (default: the
preset's vocab_size, capped at 4096 since generated text supports few more merges). BPE may stop
short of V, so:
- with `--vocab-size`, the config's vocab_size is set from the tokenizer: its true size rounded up
  to a multiple of 64 (the spare rows are never produced by the tokenizer);
- without it, the preset's vocab_size is kept and must be >= the tokenizer's size.
"""

from __future__ import annotations

import argparse

from looplm.commands import add_model_args, config_from_args, print_json

DEFAULT_MAX_TOKENIZER_VOCAB = 4096


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "init", help="write a randomly initialised checkpoint (model + tokenizer) to a directory",
        description="Initialise a model from a preset with random weights, train a BPE tokenizer on "
                    "generated task text, and save both as a checkpoint directory.")
    add_model_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory to write (replaced atomically)")
    p.add_argument("--seed", type=int, default=0, help="seed for the weights and the tokenizer text (default: 0)")
    p.add_argument("--vocab-size", type=int, metavar="V",
                   help="tokenizer target size; the config's vocab_size becomes the tokenizer's size "
                        "rounded up to a multiple of 64 (default: keep the preset's vocab_size and train "
                        f"a tokenizer of min(vocab_size, {DEFAULT_MAX_TOKENIZER_VOCAB}))")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=main)
    return p


def round_up(n: int, multiple: int = 64) -> int:
    return -(-n // multiple) * multiple


def main(args: argparse.Namespace) -> int:
    import torch

    from looplm.checkpoint import save_checkpoint
    from looplm.model import RecursiveCausalLM
    from looplm.tokenizer import train_default_tokenizer

    config = config_from_args(args)  # validates preset and --set before the slow tokenizer training
    target = args.vocab_size if args.vocab_size is not None else min(config.vocab_size, DEFAULT_MAX_TOKENIZER_VOCAB)
    tokenizer = train_default_tokenizer(vocab_size=target, seed=args.seed)
    if args.vocab_size is not None:
        config = config.replace(vocab_size=round_up(tokenizer.vocab_size))
    elif tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens > ModelConfig.vocab_size={config.vocab_size}")
    torch.manual_seed(args.seed)
    model = RecursiveCausalLM(config)
    meta = {"stage": "init", "step": 0, "seed": args.seed, "preset": args.preset,
            "overrides": args.overrides, "tokenizer_sha256": tokenizer.sha256()}
    path = save_checkpoint(args.out, model, tokenizer, meta=meta)
    summary = {"out": str(path), "vocab_size": config.vocab_size, "tokenizer_size": tokenizer.vocab_size,
               "physical_params": sum(p.numel() for p in model.parameters())}
    if args.json:
        print_json(summary)
    else:
        print(f"wrote {path}: {summary['physical_params']:,} parameters, tokenizer {tokenizer.vocab_size} tokens, "
              f"vocab_size {config.vocab_size}")
    return 0
