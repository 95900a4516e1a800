"""`looplm generate`: sample a continuation of one prompt from a checkpoint.

Prints the generated text to stdout and a one-line summary to stderr, or with `--json` one object
with `text`, `tokens` (new token ids), `exit_steps`, `accept_counts`, `tokens_per_s`, `prompt_tokens`,
`new_tokens`, `finished`, `forward_passes` and `seconds`. Generation stops at the tokenizer's EOS or after `--max-new-tokens`.
Options left unset take `looplm.generate.GenerationConfig`'s defaults (greedy unless a
temperature is given). Prompt + new tokens must fit the model's context (`max_seq_len`): a longer
request is an error, never silently truncated.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from looplm.commands import print_json


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate", help="generate text from a checkpoint",
        description="Generate a continuation of --prompt with the model in --ckpt.")
    p.add_argument("--ckpt", required=True, metavar="DIR", help="checkpoint directory (see `looplm init`)")
    p.add_argument("--prompt", required=True, help="prompt text (encoded without BOS unless --bos)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument("--bos", action="store_true", help="prepend the BOS token")
    p.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="default: 64")
    p.add_argument("--steps", type=int, metavar="S", help="recurrence steps (default: the config's recurrence)")
    p.add_argument("--temperature", type=float, metavar="T", help="sampling temperature (0 = greedy)")
    p.add_argument("--top-k", type=int, metavar="K", help="keep the K most likely tokens")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling mass")
    p.add_argument("--seed", type=int, metavar="S", help="sampling seed")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole prefix every token (no KV cache)")
    p.add_argument("--speculative", action="store_true", help="draft with the speculative heads, verify in one pass")
    p.add_argument("--halt-threshold", type=float, metavar="X", help="AdaExit: exit a token once the halt prob > X")
    p.add_argument("--min-steps", type=int, metavar="M", help="AdaExit: never exit before M steps")
    p.add_argument("--adaptive", action="store_true",
                   help="AdaExit with the threshold and min steps calibrated by `looplm calibrate-halt` "
                        "(stored in the checkpoint's meta; an error if it has none)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    from looplm.checkpoint import load_checkpoint
    from looplm.generate import GenerationConfig, generate

    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    model, tokenizer, meta = load_checkpoint(args.ckpt, map_location=args.device)
    if getattr(args, "adaptive", False):
        if meta.get("halt_threshold") is None:
            raise ValueError(f"--adaptive: {args.ckpt} has no calibrated halt threshold (run looplm calibrate-halt, "
                             f"or pass --halt-threshold X)")
        if args.halt_threshold is None:
            args.halt_threshold = float(meta["halt_threshold"])
        if args.min_steps is None:
            args.min_steps = int(meta.get("halt_min_steps", 1))
    text = tokenizer.chat_prompt(args.prompt) if args.chat else args.prompt
    ids = tokenizer.encode(text, add_bos=args.bos)
    reserve = model.config.n_spec_heads + 1 if args.speculative else 0  # positions the verify pass drafts into
    check_fits(len(ids), args.max_new_tokens, model.config.max_seq_len, reserve)
    cfg = GenerationConfig(**generation_kwargs(args, model.config, tokenizer.eos_id, tokenizer.pad_id))
    start = time.perf_counter()
    out = generate(model, [ids], cfg)
    seconds = time.perf_counter() - start
    new = [int(t) for t in out.tokens[0]]
    result = {
        "text": tokenizer.decode(new, skip_special=True),
        "tokens": new,
        "prompt_tokens": len(ids),
        "new_tokens": len(new),
        "exit_steps": _first_prompt(getattr(out, "exit_steps", None)),
        "accept_counts": _first_prompt(getattr(out, "accept_counts", None)),
        "finished": bool(out.finished[0]) if getattr(out, "finished", None) else None,
        "forward_passes": getattr(out, "forward_passes", None),
        "seconds": seconds,
        "tokens_per_s": len(new) / seconds if seconds > 0 else None,
    }
    if args.json:
        print_json(result)
    else:
        print(result["text"], flush=True)
        print(f"[{len(new)} new tokens in {seconds:.2f}s, {result['tokens_per_s'] or 0:.1f} tok/s]", file=sys.stderr)
    return 0


def check_fits(n_prompt: int, max_new: int, max_seq_len: int, reserve: int = 0) -> None:
    """Prompt + new tokens (+ `reserve` extra positions) must fit the context; else a ValueError saying how."""
    if n_prompt == 0:
        raise ValueError("the prompt encodes to zero tokens (pass a non-empty --prompt or --bos)")
    if n_prompt >= max_seq_len:
        raise ValueError(f"the prompt is {n_prompt} tokens but the model's context is max_seq_len={max_seq_len} "
                         "tokens: shorten the prompt")
    if n_prompt + max_new + reserve > max_seq_len:
        extra = f" + {reserve} draft positions (--speculative)" if reserve else ""
        raise ValueError(f"prompt ({n_prompt} tokens) + --max-new-tokens {max_new}{extra} exceeds the model's "
                         f"context max_seq_len={max_seq_len}: use --max-new-tokens <= "
                         f"{max(0, max_seq_len - n_prompt - reserve)}")


def generation_kwargs(args: argparse.Namespace, config: Any, eos_id: int, pad_id: int) -> dict[str, Any]:
    """GenerationConfig fields from the CLI options; unset options are left to its defaults."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": args.max_new_tokens,
        "steps": config.recurrence if args.steps is None else args.steps,
        "stop_tokens": (eos_id,),
        "pad_id": pad_id,
        "use_cache": not args.no_cache,
        "speculative": args.speculative,
    }
    for name in ("temperature", "top_k", "top_p", "seed", "halt_threshold", "min_steps"):
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = value
    return kwargs


def _first_prompt(value: Any) -> Any:
    """The first prompt's entry of a per-prompt output field, as plain JSON-able Python."""
    if value is None:
        return None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)) and value:
        first = value[0]
        return first.tolist() if hasattr(first, "tolist") else first
    return value
