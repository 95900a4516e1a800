"""Shared pieces of the speed calibrations (`calibrate-halt`, `train-spec`).

- `load_samples(data, n, seed, tokenizer)`: `--data` as an SFT JSONL (`prompt`, `response`), an RL
  prompt JSONL (`prompt`, `answer`; no response) or a generated task name (with `n`), encoded with
  the chat template: prompt ids end with the assistant tag, responses end with EOS.
- `split_heldout`, `greedy_continuations` (full-depth greedy decoding in batches), `right_pad`.
- `snapshot` / `changed_params`: bit-for-bit checks that only the intended parameters moved.
- `time_interleaved`: tokens/s of several decoders measured in alternating order in one run.
- `clean_meta`, `write_json`, `prefix_agreement`: meta carried to a new checkpoint, results, comparisons.

Simplification: samples are held in memory; a row's kind is decided by its file's first row.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from looplm.generate import GenerationConfig, generate

RESERVED_META_KEYS = ("format_version", "looplm_version", "torch_version", "created", "files")


@dataclass
class Sample:
    prompt: list[int]  # chat-template prompt ids, ending with the assistant tag
    response: list[int] | None  # reference response ids incl. EOS; None for RL prompt files


# ---------------------------------------------------------------------------------------------- data
def load_samples(data: str, n: int | None, seed: int, tokenizer) -> list[Sample]:
    """Samples from a JSONL file or a generated task (see module docstring); errors name file:line."""
    path = Path(data)
    if path.suffix == ".jsonl" or path.exists():
        rows = _read_rows(path)
        if n is not None:
            if n > len(rows):
                raise ValueError(f"{path}: n={n} examples requested but the file has {len(rows)} rows")
            rows = rows[:n]
        return [_encode(tokenizer, r["prompt"], r.get("response")) for r in rows]
    return _task_samples(data, n, seed, tokenizer)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    from looplm.data.jsonl import DataFormatError, read_jsonl

    first = read_jsonl(path)[:1]
    if not first:
        raise DataFormatError(f"{path}: no rows")
    if "response" in first[0]:
        return read_jsonl(path, required=("prompt", "response"))
    if "answer" in first[0]:
        rows = read_jsonl(path, required=("prompt", "answer"))
        return [{"prompt": r["prompt"]} for r in rows]
    raise DataFormatError(f"{path}:1: neither an SFT row (prompt, response) nor an RL prompt row (prompt, answer); "
                          f"keys: {sorted(first[0])}")


def _task_samples(name: str, n: int | None, seed: int, tokenizer) -> list[Sample]:
    from looplm.tasks import GENERATED_TASKS, TASK_NAMES, get_task

    try:
        task = get_task(name)
    except KeyError:
        raise ValueError(f"data {name!r} is neither an existing file nor a task name "
                         f"(tasks: {', '.join(TASK_NAMES)})") from None
    if task.TASK not in GENERATED_TASKS:
        raise ValueError(f"task {name!r} is loaded from a source, not generated: export it to an SFT JSONL "
                         f"(`looplm data`) and pass the file (generated tasks: {', '.join(GENERATED_TASKS)})")
    if n is None or n < 1:
        raise ValueError(f"data is the task name {name!r}: give the number of examples n >= 1 (--n)")
    return [_encode(tokenizer, ex.prompt, ex.answer) for ex in task.generate(n, seed=seed)]


def _encode(tokenizer, prompt: str, response: str | None) -> Sample:
    ids = tokenizer.encode(tokenizer.chat_prompt(prompt))
    resp = None if response is None else tokenizer.encode(response) + [tokenizer.eos_id]
    return Sample(prompt=ids, response=resp)


def split_heldout(samples: list[Sample], frac: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Shuffle deterministically and hold out round(frac * len) samples (at least one on each side)."""
    k = round(frac * len(samples))
    if len(samples) < 2 or not 1 <= k < len(samples):
        raise ValueError(f"cannot hold out {frac:.0%} of {len(samples)} samples and keep both parts non-empty: "
                         "give more data (n) or change heldout_frac")
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    return [samples[i] for i in order[k:]], [samples[i] for i in order[:k]]


def check_fits(samples: list[Sample], extra: int, max_seq_len: int, what: str) -> None:
    for i, s in enumerate(samples):
        if len(s.prompt) + extra > max_seq_len:
            raise ValueError(f"sample {i}: prompt of {len(s.prompt)} tokens + {what} exceeds the model context "
                             f"max_seq_len={max_seq_len}")


# ---------------------------------------------------------------------------------------------- model
def greedy_continuations(model, prompts: list[list[int]], steps: int, max_new_tokens: int, eos_id: int,
                         pad_id: int, batch_size: int, progress: bool, desc: str = "greedy") -> list[list[int]]:
    """Full-depth greedy continuations (stopping at EOS, which is kept) in batches of `batch_size`."""
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, steps=steps, stop_tokens=(eos_id,), pad_id=pad_id)
    out: list[list[int]] = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, leave=False):
        out.extend(generate(model, prompts[i:i + batch_size], cfg).tokens)
    return out


def right_pad(seqs: list[list[int]], pad_id: int, device) -> torch.Tensor:
    """[B, L] right-padded ids: with causal attention the real positions never see the pads."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return ids


def freeze(model) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed_params(model, snap: dict[str, torch.Tensor]) -> list[str]:
    """Names of state_dict entries that differ (bit for bit) from `snap`."""
    now = model.state_dict()
    return sorted(k for k, v in snap.items() if not torch.equal(now[k], v))


def check_only_changed(model, snap: dict[str, torch.Tensor], allowed_prefixes: tuple[str, ...]) -> list[str]:
    """The changed parameter names; RuntimeError if any lies outside `allowed_prefixes`."""
    changed = changed_params(model, snap)
    bad = [k for k in changed if not k.startswith(allowed_prefixes)]
    if bad:
        raise RuntimeError(f"parameters outside {allowed_prefixes} changed: {bad[:5]}")
    return changed


# ---------------------------------------------------------------------------------------------- timing
def time_interleaved(runs: dict[str, Callable[[], Any]], repeats: int, progress: bool = False,
                     desc: str = "timing") -> dict[str, dict[str, float]]:
    """Call each run `repeats` times in alternating order (forward, then reversed, ...); each returns
    a list of GenerationOutput. Returns per name the summed new tokens, seconds, tokens/s, and the
    token lists of the last call (`tokens`, one list per prompt) and its outputs (`outputs`)."""
    names = list(runs)
    tot: dict[str, dict[str, Any]] = {k: {"new_tokens": 0, "seconds": 0.0} for k in names}
    for r in tqdm(range(repeats), desc=desc, disable=not progress, leave=False):
        for k in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            outs = runs[k]()
            tot[k]["seconds"] += time.perf_counter() - t0
            tot[k]["new_tokens"] += sum(o.new_tokens for o in outs)
            tot[k]["outputs"] = outs
            tot[k]["tokens"] = [t for o in outs for t in o.tokens]
    for v in tot.values():
        v["tokens_per_s"] = v["new_tokens"] / v["seconds"] if v["seconds"] > 0 else float("nan")
    return tot


def batched_generate(model, prompts: list[list[int]], cfg: GenerationConfig, batch: int) -> Callable[[], list]:
    """A thunk decoding `prompts` in chunks of `batch` (for `time_interleaved`)."""
    return lambda: [generate(model, prompts[i:i + batch], cfg) for i in range(0, len(prompts), batch)]


# ---------------------------------------------------------------------------------------------- output
def clean_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The init checkpoint's meta without the keys `save_checkpoint` writes itself."""
    return {k: v for k, v in meta.items() if k not in RESERVED_META_KEYS}


def write_json(path: Path, obj: Any) -> Path:
    """Write JSON atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def prefix_agreement(ref: list[list[int]], got: list[list[int]]) -> dict[str, float]:
    """exact: fraction of identical token lists; prefix: matched-prefix tokens / reference tokens."""
    exact = sum(a == b for a, b in zip(ref, got)) / len(ref)
    matched = 0
    for a, b in zip(ref, got):
        j = 0
        while j < min(len(a), len(b)) and a[j] == b[j]:
            j += 1
        matched += j
    return {"exact_match_frac": exact, "prefix_agreement": matched / max(1, sum(len(a) for a in ref))}
