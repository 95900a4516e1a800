"""Token shards on disk (`ShardWriter`) and the pre-training data reader (`PretrainData`).

A pre-training directory holds `manifest.json`, train shards `train_00000.bin`, ... and one
validation file per domain `val_<domain>.bin`: raw little-endian token ids (uint16 when the vocab
has <= 65535 ids, else uint32), documents joined by EOS. Shards are written through a fixed-size
buffer, so memory stays bounded whatever the token count.

Next to the tokens, a build may hold a loss mask (`loss_mask` in the manifest; one uint8 per token,
1 where pre-training with `--loss-on answers` scores the token: see `looplm.data.mixture`).

`PretrainData.open(dir)` memory-maps them and offers:
- `sample_batch(B, T, rng, rank, world_size)`: seeded random windows `(B, T+1)` (inputs `[:, :-1]`,
  targets `[:, 1:]`); rank r draws only from the r-th contiguous 1/world_size of the train tokens;
- `sample_windows(..., windows="random"|"documents")`: the same with the loss mask and a validity
  mask; "documents" windows start at a document boundary (the EOS before a document, the token
  every prompt starts with), so no scored answer has lost its question; a window that runs past the
  end of its shard is padded (EOS, not valid);
- `iter_batches(B, T, rank, world_size, split)`: sequential windows with stride T (each token is a
  target once); window k belongs to rank k // B % world_size, so ranks get disjoint windows and the
  same number of batches; `iter_documents` does the same with one document per window (its own
  tokens valid, the rest of the window not), so every document is scored exactly once.

Simplification: windows never cross shard boundaries (with the default shard size a 60M-token
build is one shard); batches are numpy int64 (`torch.from_numpy` on the caller's side).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np

MANIFEST = "manifest.json"
FORMAT = "looplm-pretrain-v1"
DEFAULT_SHARD_TOKENS = 1 << 26  # 64 Mi tokens (128 MB as uint16)


class ManifestError(ValueError):
    """A pre-training directory is missing, incomplete or inconsistent with its manifest."""


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Append token arrays into shard files `<prefix>_NNNNN.bin` (or one file `<prefix>.bin` when
    `single=True`), each at most `shard_tokens` long; hashes are computed while writing."""

    def __init__(self, out_dir: Path, prefix: str, dtype: np.dtype, shard_tokens: int = DEFAULT_SHARD_TOKENS,
                 buffer_tokens: int = 1 << 20, single: bool = False):
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
        self.out_dir, self.prefix, self.dtype, self.single = Path(out_dir), prefix, np.dtype(dtype), single
        self.shard_tokens = shard_tokens if not single else np.iinfo(np.int64).max
        self.buf = np.empty(min(buffer_tokens, self.shard_tokens), dtype=self.dtype)
        self.n_buf = 0
        self.shards: list[dict[str, Any]] = []
        self._file = None
        self._hash = None
        self._in_shard = 0

    def _name(self) -> str:
        return f"{self.prefix}.bin" if self.single else f"{self.prefix}_{len(self.shards):05d}.bin"

    def _open_next(self) -> None:
        self._file = (self.out_dir / self._name()).open("wb")
        self._hash = hashlib.sha256()
        self._in_shard = 0

    def _flush(self) -> None:
        data = self.buf[: self.n_buf]
        while len(data):
            if self._file is None:
                self._open_next()
            room = self.shard_tokens - self._in_shard
            part, data = data[:room], data[room:]
            raw = part.tobytes()
            self._file.write(raw)
            self._hash.update(raw)
            self._in_shard += len(part)
            if self._in_shard == self.shard_tokens:
                self._close_shard()
        self.n_buf = 0

    def _close_shard(self) -> None:
        self._file.close()
        self.shards.append({"file": self._name(), "tokens": self._in_shard, "sha256": self._hash.hexdigest()})
        self._file = None

    def write(self, tokens: np.ndarray | list[int]) -> None:
        arr = np.asarray(tokens)
        while len(arr):
            room = len(self.buf) - self.n_buf
            part, arr = arr[:room], arr[room:]
            self.buf[self.n_buf: self.n_buf + len(part)] = part
            self.n_buf += len(part)
            if self.n_buf == len(self.buf):
                self._flush()

    def close(self) -> list[dict[str, Any]]:
        """Flush, close and return `[{file, tokens, sha256}, ...]`."""
        self._flush()
        if self._file is not None:
            self._close_shard()
        return self.shards


# ----------------------------------------------------------------------------- reader

class Windows(NamedTuple):
    """A batch of windows `(B, T+1)`: token ids (int64), loss mask (uint8, 1 = an answer or text token;
    all ones when the data has no mask) and valid (bool, False on padding and, for `iter_documents`,
    on the tokens after the window's document)."""

    tokens: np.ndarray
    mask: np.ndarray
    valid: np.ndarray


_REQUIRED = ("format", "vocab_size", "dtype", "tokenizer_sha256", "train", "val", "domains")


def read_manifest(directory: str | Path) -> dict[str, Any]:
    d = Path(directory)
    path = d / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{d}: no {MANIFEST}; build the directory with `looplm data pretrain-mix`")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: corrupt manifest ({e})") from e
    if not isinstance(m, dict):
        raise ManifestError(f"{path}: manifest must be a JSON object")
    missing = [k for k in _REQUIRED if k not in m]
    if missing:
        raise ManifestError(f"{path}: manifest lacks field(s) {missing}")
    if m["format"] != FORMAT:
        raise ManifestError(f"{path}: unknown format {m['format']!r} (expected {FORMAT!r})")
    return m


def _map(d: Path, entry: dict[str, Any], dtype: np.dtype, verify: bool) -> np.memmap:
    path = d / entry["file"]
    if not path.is_file():
        raise ManifestError(f"{d}: shard {entry['file']} listed in the manifest is missing")
    expected = int(entry["tokens"]) * dtype.itemsize
    if path.stat().st_size != expected:
        raise ManifestError(f"{path}: {path.stat().st_size} bytes, manifest says {entry['tokens']} tokens "
                            f"({expected} bytes)")
    if verify and file_sha256(path) != entry["sha256"]:
        raise ManifestError(f"{path}: sha256 differs from the manifest (file changed or corrupt)")
    return np.memmap(path, dtype=dtype, mode="r")


class PretrainData:
    """A built pre-training directory, memory-mapped. `.train` is the list of train shards."""

    def __init__(self, directory: Path, manifest: dict[str, Any], train: list[np.memmap],
                 val: dict[str, np.memmap], train_mask: list[np.memmap] | None = None,
                 val_mask: dict[str, np.memmap] | None = None):
        self.directory = directory
        self.manifest = manifest
        self.train = train
        self.val = val
        self.train_mask, self.val_mask = train_mask, val_mask
        self._cache: dict[tuple, Any] = {}  # EOS positions and document draws, computed once
        self.vocab_size: int = int(manifest["vocab_size"])
        self.tokenizer_sha256: str = manifest["tokenizer_sha256"]
        self.dtype = np.dtype(manifest["dtype"])
        self.eos_id: int | None = manifest.get("eos_id")

    @classmethod
    def open(cls, directory: str | Path, verify: bool = False) -> "PretrainData":
        """Map a directory written by `looplm data pretrain-mix`; `verify=True` also re-hashes files."""
        d = Path(directory)
        m = read_manifest(d)
        dtype = np.dtype(m["dtype"])
        train = [_map(d, s, dtype, verify) for s in m["train"]["shards"]]
        val = {dom: _map(d, e, dtype, verify) for dom, e in m["val"].items()}
        lm = m.get("loss_mask")
        if lm is None:
            return cls(d, m, train, val)
        u8 = np.dtype(np.uint8)
        try:
            train_mask = [_map(d, s, u8, verify) for s in lm["train"]["shards"]]
            val_mask = {dom: _map(d, lm["val"][dom], u8, verify) for dom in val}
        except (KeyError, TypeError) as e:
            raise ManifestError(f"{d / MANIFEST}: incomplete loss_mask entry ({type(e).__name__}: {e})") from e
        for what, toks, masks in [("train", train, train_mask)] + [(f"val {k}", [val[k]], [val_mask[k]]) for k in val]:
            if [len(t) for t in toks] != [len(x) for x in masks]:
                raise ManifestError(f"{d}: the {what} loss-mask shards do not match the token shards in length")
        return cls(d, m, train, val, train_mask, val_mask)

    @property
    def has_mask(self) -> bool:
        """Whether the build holds a loss mask (built by a looplm with `loss_mask` in the manifest)."""
        return self.train_mask is not None

    @property
    def train_tokens(self) -> int:
        return sum(len(s) for s in self.train)

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raise unless `tokenizer.sha256()` is the one the data was built with."""
        if tokenizer.sha256() != self.tokenizer_sha256:
            raise ManifestError(f"{self.directory}: built with tokenizer {self.tokenizer_sha256[:12]}, "
                                f"given tokenizer is {tokenizer.sha256()[:12]}")

    def _arrays(self, split: str) -> list[np.ndarray]:
        if split == "train":
            return self.train
        if split in self.val:
            return [self.val[split]]
        raise KeyError(f"unknown split {split!r}; splits: train, {', '.join(self.val)}")

    def _mask_arrays(self, split: str) -> list[np.ndarray] | None:
        if self.train_mask is None:
            return None
        return self.train_mask if split == "train" else [self.val_mask[split]]

    def _doc_starts(self, split: str, i: int) -> np.ndarray:
        """Positions of the EOS tokens of array i of a split (each one opens the next document)."""
        if self.eos_id is None:
            raise ManifestError(f"{self.directory}: the manifest records no eos_id, so documents cannot be found")
        key = (split, i)
        if key not in self._cache:
            self._cache[key] = np.flatnonzero(np.asarray(self._arrays(split)[i]) == self.eos_id)
        return self._cache[key]

    def _gather(self, split: str, picks: list[tuple[int, int]], seq_len: int) -> Windows:
        """Windows of seq_len + 1 tokens at (array index, start), padded past an array's end."""
        arrays, masks = self._arrays(split), self._mask_arrays(split)
        tokens = np.full((len(picks), seq_len + 1), self.eos_id if self.eos_id is not None else 0, dtype=np.int64)
        mask = np.zeros(tokens.shape, dtype=np.uint8)
        valid = np.zeros(tokens.shape, dtype=bool)
        for row, (i, s) in enumerate(picks):
            part = arrays[i][s: s + seq_len + 1]
            tokens[row, :len(part)] = part
            mask[row, :len(part)] = masks[i][s: s + seq_len + 1] if masks is not None else 1
            valid[row, :len(part)] = True
        return Windows(tokens, mask, valid)

    def sample_windows(self, batch_size: int, seq_len: int, rng: np.random.Generator | int, rank: int = 0,
                       world_size: int = 1, split: str = "train", windows: str = "random") -> Windows:
        """`batch_size` windows of `seq_len + 1` tokens with their masks: at uniformly random token
        offsets ("random") or at the start of the document that holds a uniformly random token
        ("documents": a document is drawn in proportion to its length, so the domains keep their
        token shares) within this rank's contiguous part of the split. `rng` is a Generator or a seed."""
        _check_rank(rank, world_size)
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        if windows == "random":
            return self._gather(split, self._random_starts(batch_size, seq_len, rng, rank, world_size, split), seq_len)
        if windows != "documents":
            raise ValueError(f"windows must be 'random' or 'documents', got {windows!r}")
        arr_idx, pos, cum = self._document_draws(split, rank, world_size)
        picks = np.searchsorted(cum, rng.integers(0, int(cum[-1]), size=batch_size), side="right")
        return self._gather(split, [(int(arr_idx[j]), int(pos[j])) for j in picks], seq_len)

    def _document_draws(self, split: str, rank: int, world_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(array index, EOS position, cumulative length) of every document that opens inside this
        rank's part of the split, computed once per (split, rank, world size)."""
        key = ("draws", split, rank, world_size)
        if key not in self._cache:
            idx, pos, lengths = [], [], []
            for i, lo, hi in _rank_segments([len(a) for a in self._arrays(split)], rank, world_size):
                eos = self._doc_starts(split, i)
                eos = eos[(eos >= lo) & (eos < hi - 1)]  # a document follows inside this rank's part
                idx.append(np.full(len(eos), i))
                pos.append(eos)
                lengths.append(np.diff(eos, append=hi))  # the document's length (+ its opening EOS)
            if not sum(len(p) for p in pos):
                raise ValueError(f"split {split!r} (rank {rank}/{world_size}) holds no document boundary")
            self._cache[key] = (np.concatenate(idx), np.concatenate(pos), np.cumsum(np.concatenate(lengths)))
        return self._cache[key]

    def sample_batch(self, batch_size: int, seq_len: int, rng: np.random.Generator | int,
                     rank: int = 0, world_size: int = 1, split: str = "train") -> np.ndarray:
        """`(batch_size, seq_len + 1)` int64 windows at uniformly random offsets within this rank's
        contiguous part of the split. `rng` is a Generator or a seed."""
        _check_rank(rank, world_size)
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        return self._gather(split, self._random_starts(batch_size, seq_len, rng, rank, world_size, split),
                            seq_len).tokens

    def _random_starts(self, batch_size: int, seq_len: int, rng: np.random.Generator, rank: int, world_size: int,
                       split: str) -> list[tuple[int, int]]:
        segs = _rank_segments([len(a) for a in self._arrays(split)], rank, world_size)
        starts = [(i, lo, hi - lo - seq_len) for i, lo, hi in segs if hi - lo > seq_len]  # n valid starts
        total = sum(n for _, _, n in starts)
        if total <= 0:
            raise ValueError(f"split {split!r} (rank {rank}/{world_size}) is too short for windows of "
                             f"{seq_len + 1} tokens")
        picks = rng.integers(0, total, size=batch_size)
        offsets = np.cumsum([0] + [n for _, _, n in starts])
        out = []
        for p in picks:
            k = int(np.searchsorted(offsets, p, side="right") - 1)
            i, lo, _ = starts[k]
            out.append((i, lo + int(p - offsets[k])))
        return out

    def iter_batches(self, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1,
                     split: str = "train") -> Iterator[np.ndarray]:
        """Sequential `(batch_size, seq_len + 1)` int64 windows (stride `seq_len`) in order; every
        rank yields the same number of batches (an incomplete last round is left out)."""
        return (w.tokens for w in self.iter_windows(batch_size, seq_len, rank, world_size, split))

    def iter_windows(self, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1,
                     split: str = "train") -> Iterator[Windows]:
        """`iter_batches` with the masks."""
        _check_rank(rank, world_size)
        arrays = self._arrays(split)
        counts = [max(0, (len(a) - 1) // seq_len) for a in arrays]  # windows per array
        offsets = np.cumsum([0] + counts)
        per_round = batch_size * world_size
        for r in range(int(offsets[-1]) // per_round):
            first = r * per_round + rank * batch_size
            picks = []
            for w in range(first, first + batch_size):
                i = int(np.searchsorted(offsets, w, side="right") - 1)
                picks.append((i, (w - int(offsets[i])) * seq_len))
            yield self._gather(split, picks, seq_len)  # (B, T+1) each

    def iter_documents(self, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1,
                       split: str = "train") -> Iterator[Windows]:
        """One document per window, in order (window k starts at the k-th EOS, the document's own
        tokens valid, cut at seq_len + 1); window k belongs to rank k // B % world_size and every rank
        yields the same number of batches (an incomplete last round is left out)."""
        _check_rank(rank, world_size)
        starts = [(i, int(p)) for i in range(len(self._arrays(split)))
                  for p in self._doc_starts(split, i) if p + 1 < len(self._arrays(split)[i])]
        per_round = batch_size * world_size
        for r in range(len(starts) // per_round):
            first = r * per_round + rank * batch_size
            w = self._gather(split, starts[first: first + batch_size], seq_len)
            body = np.cumsum(w.tokens[:, 1:] == self.eos_id, axis=1) == 0  # before the document's own EOS
            w.valid[:, 2:] &= body[:, :-1]  # the EOS that ends the document stays valid
            yield w

    def __repr__(self) -> str:
        return (f"PretrainData({str(self.directory)!r}, train_tokens={self.train_tokens}, "
                f"val={ {k: len(v) for k, v in self.val.items()} }, vocab_size={self.vocab_size})")


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


def _rank_segments(lengths: list[int], rank: int, world_size: int) -> list[tuple[int, int, int]]:
    """(array index, lo, hi) pieces of the rank-th contiguous 1/world_size of the concatenation."""
    total = sum(lengths)
    g_lo, g_hi = total * rank // world_size, total * (rank + 1) // world_size
    segs, base = [], 0
    for i, n in enumerate(lengths):
        lo, hi = max(g_lo, base), min(g_hi, base + n)
        if lo < hi:
            segs.append((i, lo - base, hi - base))
        base += n
    return segs
