"""Build the pre-training mixture: tokenise each domain's documents, interleave them by token share,
pack them into shards, and write `manifest.json`.

- Interleaving is at document granularity and deterministic: the next document always comes from
  the domain furthest below its share (smallest tokens/share, ties by `--mix` order), so every
  prefix of the train stream is a fair mixture (each domain within one document of its share). The
  last document is cut so the train stream holds exactly `tokens` tokens.
- Validation: per domain, `val_tokens` tokens (whole documents). Generated domains draw them from the
  tasks' "eval" split with a seed distinct from the train seed; hub/local domains use the first
  documents of the source and train on the rest. Either way every train document whose text equals a
  validation document is left out of train and counted in the manifest (`dropped_val_duplicates`).
- A finite source (hub/local) that runs out is an error unless `allow_repeat`, in which case it is
  re-read (the manifest records `epochs`).
- Every token also gets a loss-mask byte (`train_mask_*.bin`, `val_<domain>_mask.bin`, listed under
  the manifest's `loss_mask`): 1 on the answer of a question + answer document (the tokens that
  hold any answer character, and the EOS after it), 0 on its question; 1 on every token of a plain
  text document. `looplm pretrain --loss-on answers` scores only the 1s.
- Memory is bounded: documents are tokenised in batches of `batch_docs` and written through
  `ShardWriter`'s fixed buffer; only validation-document hashes are kept.

Simplification: hub/local sources are read in file order (not shuffled); the seed changes generated
documents only.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from looplm.data.jsonl import text_hash, write_json
from looplm.data.shards import DEFAULT_SHARD_TOKENS, FORMAT, MANIFEST, ShardWriter, token_dtype
from looplm.data.sources import (Source, answer_start, derive_seed, describe, finite_docs, generated_docs,
                                 resolve_sources)
from looplm.tasks.base import DataSourceError
from looplm.tokenizer import Tokenizer

SHARE_TOLERANCE = 0.01


class DataBuildError(DataSourceError):
    """A dataset build cannot meet what was asked (shares, sizes, a source too small)."""


@dataclass
class MixConfig:
    """What `looplm data pretrain-mix` builds."""

    tokenizer: str | Path
    out: str | Path
    tokens: int
    mix: dict[str, float] = field(default_factory=lambda: {"clrs": 0.5, "math": 0.33, "text": 0.17})
    sources: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    val_tokens: int = 50_000
    clrs_nodes: tuple[int, ...] = (4, 5)
    allow_repeat: bool = False
    shard_tokens: int = DEFAULT_SHARD_TOKENS
    batch_docs: int = 256
    overwrite: bool = False


def parse_mix(text: str) -> dict[str, float]:
    """`"clrs=0.5,math=0.33,text=0.17"` -> shares (must be > 0 and sum to 1 within 1e-3)."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, eq, value = part.strip().partition("=")
        if not eq or not name:
            raise DataBuildError(f"--mix entry {part!r} must look like DOMAIN=SHARE")
        if name in mix:
            raise DataBuildError(f"--mix names domain {name!r} twice")
        try:
            mix[name] = float(value)
        except ValueError as e:
            raise DataBuildError(f"--mix share for {name!r} is not a number: {value!r}") from e
        if not mix[name] > 0:
            raise DataBuildError(f"--mix share for {name!r} must be > 0, got {value}")
    total = sum(mix.values())
    if abs(total - 1.0) > 1e-3:
        raise DataBuildError(f"--mix shares must sum to 1, got {total:g} ({text})")
    return {k: v / total for k, v in mix.items()}


# ----------------------------------------------------------------------------- token streams


Tokens = tuple[np.ndarray, np.ndarray]  # (ids + EOS, loss mask of the same length, uint8)


def _tokenized(docs: Iterator[str], tok: Tokenizer, batch_docs: int) -> Iterator[tuple[str, Tokens]]:
    """(text, (ids + EOS, mask)) per document, tokenised `batch_docs` at a time. The mask is 1 on
    the tokens that end after `answer_start(text)` (any token holding an answer character) and on
    the EOS."""
    dtype = token_dtype(tok.vocab_size)
    while True:
        batch = [d for _, d in zip(range(batch_docs), docs)]
        if not batch:
            return
        for text, enc in zip(batch, tok.hf.encode_batch(batch, add_special_tokens=False)):
            arr = np.empty(len(enc.ids) + 1, dtype=dtype)
            arr[:-1] = enc.ids
            arr[-1] = tok.eos_id
            mask = np.ones(len(arr), dtype=np.uint8)
            start = answer_start(text)
            if start:
                mask[:-1] = np.fromiter((end > start for _, end in enc.offsets), dtype=np.uint8, count=len(enc.ids))
            yield text, (arr, mask)


@dataclass
class DomainStats:
    train_docs: int = 0
    train_tokens: int = 0
    val_docs: int = 0
    val_tokens: int = 0
    dropped_val_duplicates: int = 0
    epochs: int = 1


def _write_val(stream: Iterator[tuple[str, Tokens]], writer: ShardWriter, mask_writer: ShardWriter,
               val_tokens: int, stats: DomainStats, label: str) -> set[bytes]:
    """Write whole documents until `val_tokens` are reached; returns their text hashes."""
    hashes: set[bytes] = set()
    while stats.val_tokens < val_tokens:
        item = next(stream, None)
        if item is None:
            raise DataBuildError(f"{label}: source ran out after {stats.val_tokens} validation tokens "
                                 f"(--val-tokens {val_tokens}); give a larger source or fewer --val-tokens")
        text, (ids, mask) = item
        writer.write(ids)
        mask_writer.write(mask)
        hashes.add(text_hash(text))
        stats.val_docs += 1
        stats.val_tokens += len(ids)
    return hashes


def _train_docs(src: Source, cfg: MixConfig, tok: Tokenizer, stats: DomainStats, val_hashes: set[bytes],
                rest: Iterator[tuple[str, Tokens]] | None, label: str) -> Iterator[Tokens]:
    """Train documents of one domain (val duplicates left out and counted); finite sources are
    continued from `rest` (the pass that produced validation) and re-read only if `allow_repeat`."""
    if src.kind == "generated":
        seed = derive_seed(cfg.seed, src.domain, "train")
        rest = _tokenized(generated_docs(src.domain, seed, "train", cfg.clrs_nodes), tok, cfg.batch_docs)
    while True:
        yielded = 0
        for text, ids in rest:
            if text_hash(text) in val_hashes:
                stats.dropped_val_duplicates += 1
                continue
            yielded += 1
            yield ids
        if yielded == 0:
            raise DataBuildError(f"{label}: no training documents left after the validation split")
        if not cfg.allow_repeat:
            raise DataBuildError(f"{label}: source exhausted after {stats.train_tokens} train tokens "
                                 f"(epoch {stats.epochs}); give a larger source, fewer --tokens or a "
                                 f"smaller share, or pass --allow-repeat to re-read it (recorded as epochs)")
        stats.epochs += 1
        rest = _tokenized(finite_docs(src), tok, cfg.batch_docs)
        for _ in range(stats.val_docs):  # skip the validation documents again
            next(rest)


# ----------------------------------------------------------------------------- interleaving


def interleave(streams: dict[str, Iterator[Tokens]], shares: dict[str, float], total: int,
               write: Callable[[str, np.ndarray, np.ndarray], None]) -> dict[str, int]:
    """Write exactly `total` tokens, always taking the next document (ids, mask) from the domain with
    the smallest tokens/share (ties: first in `shares` order); the last document is cut. Returns the
    tokens written per domain."""
    counts = {d: 0 for d in shares}
    written = 0
    order = list(shares)
    while written < total:
        d = min(order, key=lambda k: counts[k] / shares[k])
        ids, mask = next(streams[d])
        if written + len(ids) > total:
            ids, mask = ids[: total - written], mask[: total - written]
        write(d, ids, mask)
        counts[d] += len(ids)
        written += len(ids)
    return counts


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise DataBuildError(f"{out} exists and is not empty; choose a new --out or pass --overwrite")
        if not (out / MANIFEST).is_file():
            raise DataBuildError(f"{out} is not a looplm data directory (no {MANIFEST}); refusing to "
                                 f"overwrite it")


def _publish(staging: Path, out: Path) -> None:
    """Move the finished build into place (replacing an old build only now that the new one is done)."""
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)


def build_pretrain_mix(cfg: MixConfig, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Build the directory described by `cfg`; returns the manifest (also written to disk)."""
    if cfg.tokens < 1 or cfg.val_tokens < 1:
        raise DataBuildError(f"--tokens and --val-tokens must be >= 1, got {cfg.tokens}, {cfg.val_tokens}")
    t0 = time.perf_counter()
    tok = Tokenizer.load(cfg.tokenizer)
    sources = resolve_sources(list(cfg.mix), cfg.sources)
    out = Path(cfg.out)
    _check_out(out, cfg.overwrite)
    staging = out.with_name(f".{out.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        manifest = _build(cfg, tok, sources, staging, log)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    manifest["build_seconds"] = round(time.perf_counter() - t0, 2)
    write_json(staging / MANIFEST, manifest)
    _publish(staging, out)
    log(f"wrote {manifest['train']['tokens']} train tokens in {len(manifest['train']['shards'])} shard(s) to {out}")
    return manifest


def _build(cfg: MixConfig, tok: Tokenizer, sources: dict[str, Source], out: Path,
           log: Callable[[str], None]) -> dict[str, Any]:
    dtype = token_dtype(tok.vocab_size)
    stats = {d: DomainStats() for d in cfg.mix}
    val_files: dict[str, dict[str, Any]] = {}
    val_masks: dict[str, dict[str, Any]] = {}
    streams: dict[str, Iterator[Tokens]] = {}
    for d, src in sources.items():
        label = f"domain {d!r} ({src.spec})"
        if src.kind == "generated":
            val_seed = derive_seed(cfg.seed, d, "val")
            val_stream = _tokenized(generated_docs(d, val_seed, "eval", cfg.clrs_nodes), tok, cfg.batch_docs)
        else:
            val_stream = _tokenized(finite_docs(src), tok, cfg.batch_docs)
        vw = ShardWriter(out, f"val_{d}", dtype, single=True)
        vmw = ShardWriter(out, f"val_{d}_mask", np.dtype(np.uint8), single=True)
        hashes = _write_val(val_stream, vw, vmw, cfg.val_tokens, stats[d], label)
        val_files[d] = {**vw.close()[0], "docs": stats[d].val_docs}
        val_masks[d] = vmw.close()[0]
        streams[d] = _train_docs(src, cfg, tok, stats[d], hashes, val_stream, label)
        log(f"{d}: {stats[d].val_docs} validation documents ({stats[d].val_tokens} tokens)")

    writer = ShardWriter(out, "train", dtype, shard_tokens=cfg.shard_tokens)
    mask_writer = ShardWriter(out, "train_mask", np.dtype(np.uint8), shard_tokens=cfg.shard_tokens)
    last_is_eos = [True]

    def write(d: str, ids: np.ndarray, mask: np.ndarray) -> None:
        writer.write(ids)
        mask_writer.write(mask)
        stats[d].train_docs += 1
        stats[d].train_tokens += len(ids)
        last_is_eos[0] = int(ids[-1]) == tok.eos_id

    counts = interleave(streams, cfg.mix, cfg.tokens, write)
    shards, mask_shards = writer.close(), mask_writer.close()
    achieved = {d: counts[d] / cfg.tokens for d in cfg.mix}
    bad = {d: a for d, a in achieved.items() if abs(a - cfg.mix[d]) > SHARE_TOLERANCE}
    if bad:
        raise DataBuildError(f"achieved shares {bad} differ from --mix by more than {SHARE_TOLERANCE:.0%} "
                             f"(documents are long relative to --tokens {cfg.tokens}); ask for more tokens")
    manifest = {
        "format": FORMAT,
        "seed": cfg.seed,
        "tokens": cfg.tokens,
        "val_tokens_requested": cfg.val_tokens,
        "mix_requested": dict(cfg.mix),
        "achieved_shares": achieved,
        "tokenizer_sha256": tok.sha256(),
        "vocab_size": tok.vocab_size,
        "eos_id": tok.eos_id,
        "dtype": dtype.name,
        "documents_joined_by": "eos",
        "last_document_truncated": not last_is_eos[0],
        "domains": {d: {"source": describe(sources[d], cfg.clrs_nodes),
                        "generated": sources[d].kind == "generated",
                        **vars(stats[d])} for d in cfg.mix},
        "train": {"tokens": sum(s["tokens"] for s in shards), "shards": shards},
        "val": val_files,
        "loss_mask": {"dtype": "uint8", "scores": "answers of question+answer documents, all of other text",
                      "train": {"shards": mask_shards}, "val": val_masks},
    }
    tok.save(out)  # the data directory carries its tokenizer
    return manifest
