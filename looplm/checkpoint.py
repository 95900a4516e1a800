"""Atomic save/load of self-describing checkpoint directories (safetensors + JSON, never pickle).

A checkpoint directory `DIR/` holds:

    config.json         {"format": "looplm-checkpoint", "format_version": 1, "model": ModelConfig.to_dict()}
    model.safetensors   the model's state_dict; a tied tensor (embedding == lm_head) is stored once,
                        under its first name, and re-tied on load from the freshly built model
    tokenizer.json      written by `Tokenizer.save`
    meta.json           free-form dict (stage, step, metrics, ...) plus `format_version`,
                        `looplm_version`, `torch_version`, `created` (UTC ISO time) and `files`
                        (relative path -> sha256 of every other file); written last
    train_state/        optional: `tensors.safetensors` + `state.json` (see below)

Save protocol (`save_checkpoint`), so that a kill at any instant leaves a complete checkpoint:
  1. write every file into a fresh sibling `.{name}.tmp-{pid}-{rand}/`, fsync each file, write
     `meta.json` last (a directory without it is never loadable), fsync the directory;
  2. if `DIR` does not exist: `rename(tmp, DIR)`, fsync the parent. Done.
  3. if it exists: `rename(DIR, .{name}.old-{pid}-{rand})`, `rename(tmp, DIR)`, fsync the parent,
     then delete the old copy. Between the two renames `DIR` is absent and the old complete
     checkpoint sits in `.{name}.old-*`: `load_checkpoint(DIR)` then fails naming that directory,
     and the next `save_checkpoint(DIR, ...)` first renames it back. An error (not a kill) during
     step 3 renames the old copy back before re-raising.
  A crashed save leaves only hidden `.{name}.tmp-*` / `.{name}.old-*` siblings, which the next save
  to the same `DIR` removes. Concurrent saves to the same `DIR` are not supported.

Load checks, each failing with `CheckpointError` naming the file: the four files exist; meta.json and
config.json parse; every sha256 recorded in meta matches; the config is valid; the tokenizer fits
the config's vocab; the weights file parses (a truncated file is refused) and its tensor names and
shapes equal the model's exactly (checked from the header, before any weight is copied).

Training state (`train_state=` in `save_checkpoint`, read back by `load_train_state`) is any nested
structure of dicts, lists, tuples, None/bool/int/float/str/bytes, torch tensors and numpy arrays,
for example `{"optimizer": opt.state_dict(), "step": 100, "rng": capture_rng_state()}`. Tensors go to
`train_state/tensors.safetensors`, the rest to `train_state/state.json` with tagged placeholders
(`{"__tensor__": key}`, `{"__tuple__": [...]}`, `{"__dict__": [[key, value], ...]}` for dicts with
non-string keys, ...). Floats are written with `repr` precision and ints exactly, so optimizer
state and RNG states (`capture_rng_state` / `restore_rng_state`) round-trip bit for bit.

Simplifications: weights are loaded into a model built in float32 on the CPU (a bf16 file is
up-cast), then moved to `map_location`; no sharding, no async writes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "looplm-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "meta.json"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, META_FILE)
TRAIN_STATE_DIR = "train_state"
TRAIN_TENSORS_FILE = f"{TRAIN_STATE_DIR}/tensors.safetensors"
TRAIN_JSON_FILE = f"{TRAIN_STATE_DIR}/state.json"
# Bumped whenever the model code changes what a given set of weights computes (e.g. the RoPE pairing),
# so an old checkpoint is refused instead of silently producing different outputs.
ARCH_VERSION = 1

_RESERVED_META_KEYS = ("format_version", "looplm_version", "torch_version", "created", "files")


class CheckpointError(Exception):
    """A checkpoint directory is missing, incomplete, corrupt or inconsistent; the message names the file."""


# ---------------------------------------------------------------------------------------------- save
def save_checkpoint(
    dir: str | os.PathLike,
    model: torch.nn.Module,
    tokenizer: Any,
    meta: dict[str, Any] | None = None,
    train_state: Any = None,
) -> Path:
    """Write `model` (with `.config`), `tokenizer`, `meta` and optional `train_state` to `dir` atomically."""
    target = Path(dir).absolute()
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{target}: exists and is not a directory")
    config = model.config
    tok_size = int(tokenizer.vocab_size)
    if tok_size > config.vocab_size:
        raise CheckpointError(f"tokenizer has {tok_size} tokens but ModelConfig.vocab_size={config.vocab_size}")
    meta_out = _prepare_meta(meta)
    tensors, aliases = _dedupe_tied(model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover_interrupted(target)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files = {
            CONFIG_FILE: _write_json(tmp / CONFIG_FILE, {"format": FORMAT, "format_version": FORMAT_VERSION,
                                                         "arch_version": ARCH_VERSION, "model": config.to_dict()}),
            WEIGHTS_FILE: _write_weights(tmp / WEIGHTS_FILE, tensors, aliases),
            TOKENIZER_FILE: _save_tokenizer(tokenizer, tmp),
        }
        if train_state is not None:
            files.update(_write_train_state(tmp, train_state))
        meta_out["files"] = files
        _write_json(tmp / META_FILE, meta_out)  # last: marks the directory complete
        _fsync_dir(tmp)
        _move_into_place(tmp, target)
    except BaseException:
        _cleanup_tmp(tmp)
        raise
    return target


def _prepare_meta(meta: dict[str, Any] | None) -> dict[str, Any]:
    from looplm import __version__

    meta = dict(meta or {})
    clash = [k for k in _RESERVED_META_KEYS if k in meta]
    if clash:
        raise CheckpointError(f"meta keys {clash} are reserved (written by save_checkpoint)")
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"meta is not JSON-serialisable: {e}") from e
    meta.update(format_version=FORMAT_VERSION, looplm_version=__version__, torch_version=torch.__version__,
                created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    return meta


def _dedupe_tied(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keep each tensor once: `aliases` maps a dropped name to the kept name it is identical to."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    by_view: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, t in state.items():
        if t.device.type == "meta":
            raise CheckpointError(f"cannot save tensor {name!r}: it is on the meta device (no data)")
        t = t.detach()
        ptr = t.untyped_storage().data_ptr()
        view = (ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() > 0 and view in by_view:
            aliases[name] = by_view[view]
            continue
        if t.numel() > 0:
            by_view[view] = name
            if ptr in storages:  # a different view of an already-saved storage: store a copy
                t = t.clone()
            storages.add(ptr)
        kept[name] = t.to("cpu").contiguous()
    return kept, aliases


def _write_weights(path: Path, tensors: dict[str, torch.Tensor], aliases: dict[str, str]) -> str:
    from safetensors.torch import save

    metadata = {"format": "pt", "looplm_format_version": str(FORMAT_VERSION), "tied": json.dumps(aliases)}
    return _write_bytes(path, save(tensors, metadata=metadata))


def _save_tokenizer(tokenizer: Any, dir: Path) -> str:
    written = Path(tokenizer.save(dir))
    path = dir / TOKENIZER_FILE
    if written.resolve() != path.resolve() or not path.is_file():
        raise CheckpointError(f"tokenizer.save({dir}) wrote {written}, expected {path}")
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return _sha256_file(path)


def _move_into_place(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.rename(tmp, target)
        _fsync_dir(target.parent)
        return
    aside = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(target, aside)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(aside, target)
        raise
    _fsync_dir(target.parent)
    shutil.rmtree(aside)


def _recover_interrupted(target: Path) -> None:
    """Undo a save killed between its two renames, then remove leftovers of crashed saves."""
    asides = _siblings(target, "old")
    if not target.exists() and asides:
        newest = max(asides, key=lambda p: p.stat().st_mtime)
        os.rename(newest, target)
        _fsync_dir(target.parent)
        asides.remove(newest)
    for leftover in asides + _siblings(target, "tmp"):
        shutil.rmtree(leftover, ignore_errors=True)


def _siblings(target: Path, kind: str) -> list[Path]:
    prefix = f".{target.name}.{kind}-"
    if not target.parent.is_dir():
        return []
    return [p for p in target.parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]


def _cleanup_tmp(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- load
def load_checkpoint(
    dir: str | os.PathLike, map_location: str | torch.device = "cpu", strict: bool = True
) -> tuple[Any, Any, dict[str, Any]]:
    """Return `(model, tokenizer, meta)`; the model is in eval mode on `map_location`.

    `strict=False` tolerates weight names missing from or unknown to the model (e.g. a checkpoint
    saved before a head was added); shape mismatches, corrupt files and hash mismatches are always
    refused.
    """
    from safetensors.torch import load_file

    root = Path(dir)
    meta = verify_checkpoint(root)
    config = load_config(root)
    tokenizer = _load_tokenizer(root, config.vocab_size)
    model = _build_model(config)
    expected, aliases = _dedupe_tied(model.state_dict())
    _check_weight_header(root / WEIGHTS_FILE, {k: tuple(v.shape) for k, v in expected.items()}, strict)
    try:
        state = load_file(str(root / WEIGHTS_FILE), device="cpu")
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{root / WEIGHTS_FILE}: cannot read weights ({e})") from e
    for alias, name in aliases.items():
        if name in state:
            state[alias] = state[name]
    model.load_state_dict(state, strict=strict)
    return model.to(map_location).eval(), tokenizer, meta


def verify_checkpoint(dir: str | os.PathLike) -> dict[str, Any]:
    """Check that the required files exist and match the sha256 recorded in meta.json; return meta."""
    root = Path(dir)
    if not root.is_dir():
        hint = ""
        if not root.exists():
            asides = _siblings(root.absolute(), "old")
            if asides:
                hint = (f"; an interrupted save left the previous complete checkpoint at {asides[0]} "
                        f"(`mv {asides[0]} {root}` restores it; the next save to {root} does so itself)")
        raise CheckpointError(f"{root}: no checkpoint directory{hint}")
    for name in REQUIRED_FILES:
        if not (root / name).is_file():
            raise CheckpointError(f"{root / name}: missing (a checkpoint directory holds {', '.join(REQUIRED_FILES)})")
    meta = _read_json(root / META_FILE)
    files = meta.get("files", {})
    if not isinstance(files, dict):
        raise CheckpointError(f"{root / META_FILE}: 'files' must map file names to sha256 hashes")
    for rel, want in files.items():
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise CheckpointError(f"{root / META_FILE}: file entry {rel!r} points outside the checkpoint")
        path = root / rel
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (listed in {META_FILE})")
        got = _sha256_file(path)
        if got != want:
            raise CheckpointError(f"{path}: sha256 mismatch (meta.json records {want}, file has {got}): "
                                  "the file is corrupt or was changed after saving")
    return meta


def load_config(dir: str | os.PathLike):
    """Read and validate `dir/config.json` into a ModelConfig (no weights are read)."""
    from looplm.config import ConfigError, ModelConfig

    path = Path(dir) / CONFIG_FILE
    raw = _read_json(path)
    if raw.get("format") != FORMAT or "model" not in raw:
        raise CheckpointError(f"{path}: not a looplm checkpoint config (expected keys 'format'={FORMAT!r}, 'model')")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {raw.get('format_version')!r} is not supported "
                              f"(this looplm reads {FORMAT_VERSION})")
    if raw.get("arch_version", ARCH_VERSION) != ARCH_VERSION:
        raise CheckpointError(f"{path}: written by model architecture version {raw.get('arch_version')!r}; this looplm "
                              f"computes version {ARCH_VERSION} (the same weights would compute something else)")
    try:
        return ModelConfig.from_dict(raw["model"])
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{path}: invalid model config: {e}") from e


def _load_tokenizer(root: Path, vocab_size: int) -> Any:
    from looplm.tokenizer import Tokenizer

    path = root / TOKENIZER_FILE
    try:
        tokenizer = Tokenizer.load(path)
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises plain Exceptions
        raise CheckpointError(f"{path}: cannot load tokenizer ({e})") from e
    if tokenizer.vocab_size > vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {tokenizer.vocab_size} tokens but "
                              f"{root / CONFIG_FILE} sets vocab_size={vocab_size}")
    return tokenizer


def _build_model(config: Any) -> torch.nn.Module:
    """Build a model without touching the caller's global RNG state."""
    from looplm.model import RecursiveCausalLM

    with torch.random.fork_rng(devices=[]):
        return RecursiveCausalLM(config)


def _check_weight_header(path: Path, expected: dict[str, tuple[int, ...]], strict: bool) -> None:
    """Compare tensor names/shapes in the safetensors header with the model's, before loading any data."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a readable safetensors file, truncated or corrupt ({e})") from e
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [f"{k}: file {found[k]} vs model {expected[k]}" for k in sorted(set(found) & set(expected))
              if found[k] != expected[k]]
    problems = []
    if shapes:
        problems.append(f"shape mismatch ({len(shapes)}): {_first(shapes)}")
    if strict and missing:
        problems.append(f"missing tensors ({len(missing)}): {_first(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected tensors ({len(unexpected)}): {_first(unexpected)}")
    if problems:
        raise CheckpointError(f"{path}: weights do not match {CONFIG_FILE}: " + "; ".join(problems))


def _first(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n})" if len(items) > n else "")


# ----------------------------------------------------------------------------------- training state
def load_train_state(dir: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Return the `train_state` object saved with the checkpoint in `dir` (hashes verified)."""
    from safetensors.torch import load_file

    root = Path(dir)
    meta = verify_checkpoint(root)
    for rel in (TRAIN_TENSORS_FILE, TRAIN_JSON_FILE):
        if not (root / rel).is_file():
            raise CheckpointError(f"{root / rel}: missing (checkpoint saved without train_state?)")
        if rel not in meta.get("files", {}):
            raise CheckpointError(f"{root / rel}: not recorded in {META_FILE} (incomplete save?)")
    doc = _read_json(root / TRAIN_JSON_FILE)
    try:
        tensors = load_file(str(root / TRAIN_TENSORS_FILE), device=str(map_location))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{root / TRAIN_TENSORS_FILE}: cannot read ({e})") from e
    try:
        return _decode(doc["state"], tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{root / TRAIN_JSON_FILE}: malformed train state ({e!r})") from e


def _write_train_state(root: Path, state: Any) -> dict[str, str]:
    from safetensors.torch import save

    (root / TRAIN_STATE_DIR).mkdir()
    tensors: dict[str, torch.Tensor] = {}
    doc = {"format_version": FORMAT_VERSION, "state": _encode(state, tensors, "state")}
    kept, _ = _dedupe_tied(tensors)
    if len(kept) != len(tensors):  # identical views were dropped: store every key as its own copy
        kept = {k: v.detach().to("cpu").clone() for k, v in tensors.items()}
    files = {TRAIN_TENSORS_FILE: _write_bytes(root / TRAIN_TENSORS_FILE, save(kept)),
             TRAIN_JSON_FILE: _write_json(root / TRAIN_JSON_FILE, doc)}
    _fsync_dir(root / TRAIN_STATE_DIR)
    return files


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """JSON-able form of `obj`; tensors and arrays are moved into `tensors` under a unique key."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)) and not isinstance(obj, (np.generic,)):
        return obj
    if isinstance(obj, torch.Tensor):
        return {"__tensor__": _add_tensor(tensors, path, obj)}
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise CheckpointError(f"train_state at {path}: object arrays are not supported")
        return {"__ndarray__": _add_tensor(tensors, path, torch.from_numpy(np.ascontiguousarray(obj)))}
    if isinstance(obj, np.generic):
        return {"__npscalar__": obj.dtype.str, "value": obj.item()}
    if isinstance(obj, bytes):
        return {"__bytes__": obj.hex()}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{path}/{k}") for k, v in obj.items()}
        return {"__dict__": [[_encode(k, tensors, f"{path}/key{i}"), _encode(v, tensors, f"{path}/{k}")]
                             for i, (k, v) in enumerate(obj.items())]}
    raise CheckpointError(f"train_state at {path}: cannot store a {type(obj).__name__} "
                          "(allowed: dict, list, tuple, None, bool, int, float, str, bytes, tensor, ndarray)")


def _add_tensor(tensors: dict[str, torch.Tensor], path: str, t: torch.Tensor) -> str:
    key, n = path, 1
    while key in tensors:
        key, n = f"{path}#{n}", n + 1
    tensors[key] = t
    return key


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].cpu().numpy()
    if "__npscalar__" in obj:
        return np.dtype(obj["__npscalar__"]).type(obj["value"])
    if "__bytes__" in obj:
        return bytes.fromhex(obj["__bytes__"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__dict__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__dict__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def capture_rng_state() -> dict[str, Any]:
    """RNG states of python `random`, numpy's global RNG, torch CPU (and CUDA if initialised)."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state` (accepts its output after a save/load round trip)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state:
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])


# -------------------------------------------------------------------------------------- file helpers
def _write_bytes(path: Path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def _write_json(path: Path, obj: Any) -> str:
    return _write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
