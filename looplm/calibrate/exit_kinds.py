"""AdaExit per token kind: does the halt head give harder tokens more steps?

After `calibrate-halt` has chosen (min_steps, τ), `decode_exits` runs the model's real adaptive forward
over the held-out prompts + full-depth greedy continuations (the same sequences and decode positions
as the τ sweep) and returns, for every decode position, the token it predicts (the next token of the
sequence) and the step at which that position exited. Each predicted token is classified from its
decoded text by `token_kind`:

- `node label`: a graph node letter, i.e. the token holds a single upper-case letter as a word
  (`A`, ` B`, `[C`, `D,`): the trace and answer node names of a verbal DFS item;
- `trace action`: `<search>` / `<backtrack>` (single ids in the looplm tokenizer);
- `punctuation/format`: only whitespace and punctuation (`[`, `, `, `]`, `:`, newline), a special
  token (`<|eos|>`), or words and word pieces of the fixed text of the task (`Trace`, `Answer`,
  `Path is`, ...: `FORMAT_WORDS`);
- `other`: everything else (digits, free text).

`exit_stats_by_kind` gives per kind the token count, the mean exit step, the histogram over steps
1..n and the share exiting before full depth; `save_kind_plot` draws the histograms (share of each
kind's tokens per exit step) for the report.

Simplification: kinds come from bounded string tests on one token's text (and, for a lone capital,
the next token's leading letters), not from parsing the item; a BPE token that merges a node letter
with punctuation counts as a node label.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Sequence

NODE, ACTION, FORMAT, OTHER = "node label", "trace action", "punctuation/format", "other"
TOKEN_KINDS: tuple[str, ...] = (NODE, ACTION, FORMAT, OTHER)
ACTIONS = frozenset({"<search>", "<backtrack>"})
# the fixed words of verbal DFS prompts and answers (a token that is a piece of one of them is format)
FORMAT_WORDS: tuple[str, ...] = ("algorithm", "dfs", "question", "graph", "start", "trace", "answer", "path", "is",
                                 "search", "backtrack")
MAX_TOKEN_CHARS = 64  # longer decoded tokens are `other` (no tokenizer here has such tokens)


def token_kind(text: str) -> str:
    """The kind (see the module docstring) of one token from its decoded text."""
    t = text.strip()
    if len(t) > MAX_TOKEN_CHARS:
        return OTHER
    if t in ACTIONS:
        return ACTION
    if t.startswith("<|") and t.endswith("|>"):
        return FORMAT  # special tokens: end of sequence, chat tags
    words = "".join(c if c.isalnum() else " " for c in t).split()
    if not words:
        return FORMAT  # whitespace and punctuation only
    if any(len(w) == 1 and w in string.ascii_uppercase for w in words):
        return NODE
    if all(w.isalpha() and any(w.lower() in f for f in FORMAT_WORDS) for w in words):
        return FORMAT
    return OTHER


def token_kinds(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """`token_kind` of each id's decoded text (special tokens kept visible), except that a token ending
    in an upper-case letter that the next token continues in lower case (`P` + `ath`: a word split by
    a small vocabulary) takes the kind of the word it starts (`Path`: format)."""
    texts = [tokenizer.decode([int(i)], skip_special=False) for i in ids]
    kinds = [token_kind(t) for t in texts]
    for i, (t, k) in enumerate(zip(texts, kinds)):
        nxt = texts[i + 1] if i + 1 < len(texts) else ""
        if k == NODE and t[-1:].isupper() and nxt[:1].isalpha() and nxt[:1].islower():
            tail = nxt[:MAX_TOKEN_CHARS]
            j = next((n for n, c in enumerate(tail) if not c.isalpha()), len(tail))
            kinds[i] = token_kind(t + tail[:j])
    return kinds


def exit_stats_by_kind(kinds: Sequence[str], exits: Sequence[int] | Any, steps: int) -> dict[str, dict[str, Any]]:
    """Per kind present (in `TOKEN_KINDS` order, unknown kinds after): `count`, `mean_exit_step`,
    `histogram` (counts of exit steps 1..steps) and `share_before_full` (exit step < steps).
    `exits` is a sequence or a 1-d tensor of exit steps in 1..steps, one per entry of `kinds`."""
    xs = [int(e) for e in (exits.tolist() if hasattr(exits, "tolist") else exits)]
    if len(xs) != len(kinds):
        raise ValueError(f"{len(kinds)} token kinds but {len(xs)} exit steps")
    bad = [e for e in xs if not 1 <= e <= steps]
    if bad:
        raise ValueError(f"exit steps must lie in 1..{steps}, got {bad[:5]}")
    order = list(TOKEN_KINDS) + sorted(set(kinds) - set(TOKEN_KINDS))
    out: dict[str, dict[str, Any]] = {}
    for kind in order:
        ks = [e for k, e in zip(kinds, xs) if k == kind]
        if not ks:
            continue
        hist = [0] * steps
        for e in ks:
            hist[e - 1] += 1
        out[kind] = {"count": len(ks), "mean_exit_step": sum(ks) / len(ks), "histogram": hist,
                     "share_before_full": sum(e < steps for e in ks) / len(ks)}
    return out


def decode_exits(model, prompt_lens: list[int], seqs: list[list[int]], steps: int, min_steps: int, tau: float,
                 pad_id: int, batch_size: int) -> tuple[list[int], list[int]]:
    """(predicted token, exit step) at every decode position of `seqs` (last prompt token .. last-but-one
    token, as in `halt.adaptive_sweep`) under the adaptive forward at (min_steps, τ)."""
    import torch

    from looplm.calibrate.common import right_pad

    device = model.embed.weight.device
    targets: list[int] = []
    exits: list[int] = []
    with torch.no_grad():
        for i in range(0, len(seqs), batch_size):
            chunk = seqs[i:i + batch_size]
            ids = right_pad(chunk, pad_id, device)
            out = model(ids, steps, halt_threshold=tau, min_steps=min_steps)
            ex = out.exit_steps.cpu()
            for row, (seq, plen) in enumerate(zip(chunk, prompt_lens[i:i + batch_size])):
                for p in range(plen - 1, len(seq) - 1):
                    targets.append(seq[p + 1])
                    exits.append(int(ex[row, p]))
    return targets, exits


def exit_kinds_report(tokenizer, targets: list[int], exits: list[int], steps: int, min_steps: int,
                      tau: float) -> dict[str, Any]:
    """The `exit_steps_by_kind` entry of calibration.json."""
    return {"steps": steps, "min_steps": min_steps, "tau": tau, "positions": len(targets),
            "source": "held-out decode positions, adaptive forward at the chosen (min_steps, tau); kind of the "
                      "predicted token",
            "kinds": exit_stats_by_kind(token_kinds(tokenizer, targets), exits, steps)}


def save_kind_plot(report: dict[str, Any], path: Path) -> Path:
    """Grouped bars: for each kind, the share of its tokens exiting at each step 1..n."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, kinds = report["steps"], report["kinds"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    width = 0.8 / max(len(kinds), 1)
    for j, (kind, s) in enumerate(kinds.items()):
        xs = [t + 1 + (j - (len(kinds) - 1) / 2) * width for t in range(steps)]
        ax.bar(xs, [h / s["count"] for h in s["histogram"]], width=width,
               label=f"{kind} (n={s['count']}, mean {s['mean_exit_step']:.2f})")
    ax.set_xticks(range(1, steps + 1))
    ax.set_xlabel(f"exit step (full depth {steps}; min_steps {report['min_steps']}, τ={report['tau']:.4g})")
    ax.set_ylabel("share of the kind's tokens")
    ax.set_title("AdaExit: exit step per token kind (held-out)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
