"""`looplm chat --ckpt DIR`: an interactive multi-turn terminal chat with streamed tokens.

The conversation so far (an optional `--system` message, then every user turn and reply) is fed
back each turn in the chat template (`tokenizer.encode_messages`), decoded with the KV-cached
generator and printed as tokens are accepted, then a status line with tokens/s and the mean exit
step. The history is kept within the model's `max_seq_len`: before a turn, the oldest turns are
dropped until the prompt leaves room for a full reply (`max_new_tokens`, at most half the context),
and the chat says how many it dropped. Switches (flags at start, or `/commands` during the chat):

    /steps N         recurrence steps per token            /temp T      sampling temperature (0 = greedy)
    /adaptive X      AdaExit threshold in (0, 1] or off    /spec on|off speculative decoding (greedy only)
    /maxnew N        tokens per reply                       /raw on|off  no chat template, no history
    /reset           forget the conversation so far         /help, /quit

Simplification: a reply's own tokens (ending in EOS; one is added when the reply was cut at
`max_new_tokens`) are what the next turn sees, not a re-encoding of its text; the system message is
never dropped.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import TextIO

HELP = __doc__.split("Switches")[1].split("Simplification")[0]


@dataclass
class ChatSettings:
    steps: int | None = None
    temperature: float = 0.0
    halt_threshold: float | None = None
    min_steps: int = 1
    speculative: bool = False
    max_new_tokens: int = 128
    raw: bool = False
    seed: int = 0


@dataclass
class Conversation:
    """The chat's history as token ids: the system message, then one segment per turn (the user
    turn with its generation prompt, then the reply and its EOS)."""

    system: list[int] = field(default_factory=list)
    turns: list[list[int]] = field(default_factory=list)

    def ids(self) -> list[int]:
        return self.system + [t for turn in self.turns for t in turn]


def history_prompt(tok, conv: Conversation, text: str, limit: int) -> tuple[list[int], list[int], int]:
    """(prompt ids, this turn's ids, turns dropped): the oldest turns of `conv` are dropped (in
    place) until history + this turn fit in `limit` tokens, or no turn is left."""
    turn = tok.encode_messages([{"role": "user", "content": text}], add_generation_prompt=True)[0]
    dropped = 0
    while conv.turns and len(conv.system) + sum(map(len, conv.turns)) + len(turn) > limit:
        conv.turns.pop(0)
        dropped += 1
    return conv.ids() + turn, turn, dropped


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("chat", help="interactive chat with streamed tokens", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint directory")
    p.add_argument("--steps", type=int, default=None, help="recurrence steps (default: the model's R)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--halt-threshold", type=float, default=None,
                   help="AdaExit threshold (default: the checkpoint's calibrated one, if any; else off)")
    p.add_argument("--no-adaptive", action="store_true", help="ignore a calibrated halt threshold")
    p.add_argument("--speculative", action="store_true", help="speculative decoding (greedy only)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--raw", action="store_true", help="send text without the chat template (and no history)")
    p.add_argument("--system", default=None, metavar="TEXT", help="a system message that opens the conversation")
    p.set_defaults(func=main)
    return p


def apply_command(line: str, s: ChatSettings, out: TextIO) -> bool:
    """Apply a /command to the settings; returns False on /quit."""
    parts = line.strip().split()
    cmd, arg = parts[0].lower(), (parts[1] if len(parts) > 1 else "")
    try:
        if cmd in ("/quit", "/exit"):
            return False
        if cmd == "/steps":
            s.steps = int(arg)
        elif cmd == "/temp":
            s.temperature = float(arg)
        elif cmd == "/adaptive":
            s.halt_threshold = None if arg in ("", "off") else float(arg)
        elif cmd == "/spec":
            s.speculative = arg == "on"
        elif cmd == "/maxnew":
            s.max_new_tokens = int(arg)
        elif cmd == "/raw":
            s.raw = arg == "on"
        else:
            out.write(HELP)
            return True
    except ValueError:
        out.write(f"bad value for {cmd}: {arg!r}\n")
        return True
    out.write(f"settings: {s}\n")
    return True


def reply(model, tok, text: str, s: ChatSettings, out: TextIO, conv: Conversation | None = None) -> dict:
    """Stream one reply to `out`; returns its statistics. With `conv`, the prompt is the history plus
    this turn (oldest turns dropped to fit, and said so), and the turn is added to it."""
    from looplm.generate import GenerationConfig, generate

    spec_extra = model.config.n_spec_heads + 1 if s.speculative else 0
    turn: list[int] = []
    if s.raw or conv is None:
        ids = tok.encode(text if s.raw else tok.chat_prompt(text))
    else:
        limit = model.config.max_seq_len - spec_extra - min(s.max_new_tokens, model.config.max_seq_len // 2)
        ids, turn, dropped = history_prompt(tok, conv, text, limit)
        if dropped:
            out.write(f"[dropped the oldest {dropped} turn(s) to keep the conversation within max_seq_len = "
                      f"{model.config.max_seq_len} tokens; {len(conv.turns)} kept]\n")
    room = model.config.max_seq_len - len(ids) - spec_extra
    if room < 1:
        out.write(f"[prompt of {len(ids)} tokens does not fit the context of {model.config.max_seq_len}]\n")
        return {}
    cfg = GenerationConfig(max_new_tokens=min(s.max_new_tokens, room), steps=s.steps, temperature=s.temperature,
                           stop_tokens=(tok.eos_id,), halt_threshold=s.halt_threshold, min_steps=s.min_steps,
                           speculative=s.speculative and s.temperature == 0, seed=s.seed, pad_id=tok.pad_id)
    shown: list[int] = []
    printed = ""

    def stream(row: int, new: list[int]) -> None:
        nonlocal printed
        shown.extend(t for t in new if t != tok.eos_id)
        text_now = tok.decode(shown)
        if text_now.startswith(printed):  # print only complete characters
            out.write(text_now[len(printed):])
            out.flush()
            printed = text_now

    gen = generate(model, [ids], cfg, on_tokens=stream)
    n = len(gen.tokens[0])
    if conv is not None and not s.raw:
        new = list(gen.tokens[0])
        conv.turns.append(turn + new + ([] if new and new[-1] == tok.eos_id else [tok.eos_id]))
    exits = gen.exit_steps[0]
    stats = {"tokens": n, "tokens_per_s": n / max(gen.seconds, 1e-9),
             "mean_exit_step": sum(exits) / max(len(exits), 1),
             "steps": s.steps or model.config.recurrence}
    if gen.accept_counts and gen.accept_counts[0]:
        stats["tokens_per_verify"] = sum(gen.accept_counts[0]) / len(gen.accept_counts[0])
    extra = f", {stats['tokens_per_verify']:.2f} tokens/verify" if "tokens_per_verify" in stats else ""
    out.write(f"\n[{n} tokens, {stats['tokens_per_s']:.1f} tokens/s, mean exit step "
              f"{stats['mean_exit_step']:.2f} of {stats['steps']}{extra}]\n")
    return stats


def main(args) -> int:
    from looplm.checkpoint import load_checkpoint

    model, tok, meta = load_checkpoint(args.ckpt)
    halt = args.halt_threshold
    if halt is None and not args.no_adaptive and meta.get("halt_threshold") is not None:
        halt = float(meta["halt_threshold"])
    s = ChatSettings(steps=args.steps, temperature=args.temperature, halt_threshold=halt,
                     min_steps=int(meta.get("halt_min_steps", 1)) if halt is not None else 1,
                     speculative=args.speculative, max_new_tokens=args.max_new_tokens, raw=args.raw)
    out = sys.stdout
    system = [{"role": "system", "content": args.system}] if args.system else []
    conv = Conversation(system=tok.encode_messages(system)[0] if system else [])
    out.write(f"looplm chat: {args.ckpt} ({model.config.core_kv} core, R = {model.config.recurrence}, "
              f"context {model.config.max_seq_len} tokens). /help for switches, /quit to leave.\n")
    while True:
        try:
            line = input("you> ")
        except EOFError:
            out.write("\n")
            return 0
        if not line.strip():
            continue
        if line.strip().lower() == "/reset":
            conv.turns.clear()
            out.write("[conversation reset]\n")
            continue
        if line.startswith("/"):
            if not apply_command(line, s, out):
                return 0
            continue
        out.write("model> ")
        reply(model, tok, line, s, out, conv)
