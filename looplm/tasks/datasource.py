"""Rows from any data source a loader is given: one source-spec grammar, one resolver (`iter_rows`)
and file readers whose errors name the file and line. Every loader goes through it: the loaded tasks
(gsm8k, alpaca, orca_math, text), pre-training documents (`looplm.data.sources`), SFT sets and RL
prompt sets (`looplm.data.rowsets`).

Source specs:

| spec | rows |
|---|---|
| `hub` | the loader's own hub dataset (e.g. `openai/gsm8k`, config `main`), the loader's split |
| `hub:NAME[:CONFIG][@SPLIT]` | `datasets.load_dataset(NAME, CONFIG, split=SPLIT)`; SPLIT defaults to the loader's split |
| `local:PATH` or `PATH`, a file | by suffix: `.jsonl`/`.ndjson` (one object per line), `.json` (an array of objects, or JSON lines), `.parquet` (pyarrow), `.csv` (header row; every value a string); any other file is plain text, one row `{"line": text}` per line, for loaders that read text (else an error) |
| a `save_to_disk` directory | `datasets.load_from_disk`: a `DatasetDict` (`dataset_dict.json`) gives the split, a `Dataset` (`state.json`) is taken whole |
| a hub-layout directory | its data files (the suffixes above; `.txt`/`.raw` for text loaders) whose relative path names the split as a word: `data/train-00000-of-00001.parquet`, `test.jsonl`, `wiki.valid.raw`, `train/part-0.csv`. Files that name no split at all form the `train` split (as on the hub). A directory named like the loader's config (gsm8k's `main/`) is entered first. The split's files must share one folder. |

A single file (or a single saved `Dataset`) is taken whole whatever split is asked for; the split only
chooses among the files of a directory or the splits of a `DatasetDict` or hub dataset.

Every failure is a `DataSourceError` naming the spec or the file and, where there is one, the line
(`file:line` for JSONL, CSV and text; `file: row i` for JSON arrays and parquet; `SPEC row i` for
hub and saved datasets). Nothing falls back to another source or to generated data.

Simplifications: local JSONL, JSON, CSV and text are parsed here (not by `datasets`) so errors can
name lines, parquet by `pyarrow.parquet` (a `datasets` dependency) so a corrupt file names itself;
compressed files (`.gz`, ...) and `.arrow` files outside a `save_to_disk` directory are not read;
split words are the split's own name only (no `valid` for `validation` synonyms).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator


class DataSourceError(RuntimeError):
    """A dataset could not be loaded (hub down, file missing or malformed); the message says why and
    what to do instead."""


class DataFormatError(DataSourceError):
    """A data file is malformed; the message names the file and line."""


ROW_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv")
TEXT_SUFFIXES = (".txt", ".raw")  # the plain-text files a directory holds for text loaders
METADATA_FILES = frozenset({"dataset_info.json", "dataset_infos.json", "dataset_dict.json", "state.json"})


@dataclass(frozen=True)
class Spec:
    """A parsed source spec: `kind` is "hub" (name, config, split) or "local" (path)."""

    kind: str
    name: str | None = None
    config: str | None = None
    split: str | None = None
    path: Path | None = None

    def __str__(self) -> str:
        if self.kind == "local":
            return str(self.path)
        return "hub:" + self.name + (f":{self.config}" if self.config else "") + (f"@{self.split}" if self.split else "")


def is_hub(source: str) -> bool:
    """Whether a spec names a hub dataset (`hub` or `hub:...`)."""
    return isinstance(source, str) and (source == "hub" or source.startswith("hub:"))


def parse_spec(source: str, default_hub: tuple[str, str | None] | None = None) -> Spec:
    """Parse a source spec (see the module docstring); `default_hub` is the loader's (name, config)
    that a bare `hub` means."""
    if not isinstance(source, str) or not source.strip():
        raise DataSourceError(f"a source must be hub, hub:NAME[:CONFIG][@SPLIT] or a local path "
                              f"(local:PATH), got {source!r}")
    if source == "hub":
        if default_hub is None:
            raise DataSourceError("this loader has no default hub dataset: give hub:NAME[:CONFIG][@SPLIT]")
        return Spec("hub", name=default_hub[0], config=default_hub[1])
    if source.startswith("hub:"):
        rest, at, split = source[len("hub:"):].partition("@")
        name, colon, config = rest.partition(":")
        if not name or (colon and not config) or (at and not split) or ":" in config:
            raise DataSourceError(f"source {source!r}: expected hub:NAME[:CONFIG][@SPLIT], e.g. "
                                  f"hub:openai/gsm8k:main@test")
        return Spec("hub", name=name, config=config or None, split=split or None)
    path = source[len("local:"):] if source.startswith("local:") else source
    if not path.strip():
        raise DataSourceError("source 'local:' needs a path after the colon, e.g. local:data/x.jsonl")
    return Spec("local", path=Path(path))


def with_split(source: str, split: str) -> str:
    """The same hub spec with another split (`hub` stays `hub`: loaders pass the split themselves)."""
    if not source.startswith("hub:"):
        return source
    return source.partition("@")[0] + f"@{split}"


def remedy_text(task: str) -> str:
    """How to avoid the hub: the same sentence in every hub error."""
    return (f"pass a local copy with --source local:PATH (for task '{task}'), "
            f"or ask for generated data explicitly instead")


def load_hub(name: str, config: str | None = None, split: str = "train", task: str = "?") -> Any:
    """`datasets.load_dataset(name, config, split=split)`; any failure -> `DataSourceError` naming the
    dataset (and config/split) and the remedy. Returns the `datasets.Dataset`."""
    label = name + (f" (config {config!r})" if config else "") + f", split {split!r}"
    try:
        import datasets  # imported lazily: it is slow to import and only some paths need it
    except ImportError as e:  # pragma: no cover - datasets is a dependency
        raise DataSourceError(f"cannot load hub dataset {label}: the 'datasets' package is missing "
                              f"({e}); {remedy_text(task)}") from e
    try:
        args = (name, config) if config else (name,)
        return datasets.load_dataset(*args, split=split)
    except Exception as e:  # noqa: BLE001 - every hub failure gets the same clear message
        raise DataSourceError(f"could not load hub dataset {label}: {type(e).__name__}: {e}; "
                              f"{remedy_text(task)}") from e


# ----------------------------------------------------------------------------- row checks


def check_fields(row: Any, required: Iterable[str], where: str) -> dict[str, Any]:
    """`row` if it is an object whose `required` fields are strings, else a `DataFormatError`."""
    if not isinstance(row, dict):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
    required = tuple(required)
    missing = [k for k in required if k not in row]
    if missing:
        raise DataFormatError(f"{where}: missing field(s) {', '.join(missing)} (required: {', '.join(required)})")
    bad = [k for k in required if not isinstance(row[k], str)]
    if bad:
        raise DataFormatError(f"{where}: field(s) {', '.join(bad)} must be strings")
    return row


# ----------------------------------------------------------------------------- file readers


def _need_file(path: Path) -> None:
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file")


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start}); is the "
                              f"file in the format its suffix says?") from e


def iter_jsonl(path: str | Path, required: Iterable[str] = ()) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file, streamed. Trailing blank lines are allowed; any other blank line is an
    error, as is malformed JSON, a line that is not UTF-8, or a missing/non-string required field."""
    path, required = Path(path), tuple(required)
    _need_file(path)
    blank_at = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = _decode(raw, path, lineno)
            if not line.strip():
                blank_at = blank_at or lineno
                continue
            if blank_at:
                raise DataFormatError(f"{path}:{blank_at}: blank line inside the file")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
            yield check_fields(row, required, f"{path}:{lineno}")


def read_jsonl(path: str | Path, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """All rows of a JSONL file (see `iter_jsonl` for the checks)."""
    return list(iter_jsonl(path, required))


def read_json_array(path: str | Path, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Rows of a JSON file holding one array of objects; errors name the file and the row index."""
    path = Path(path)
    _need_file(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    return [check_fields(row, required, f"{path}: row {i}") for i, row in enumerate(data)]


def _json_is_array(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


def iter_parquet(path: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """(row, "file: row i") of a parquet file; an unreadable file is an error naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        batches = pf.iter_batches(batch_size=1024)
        i = 0
        for batch in batches:
            for row in batch.to_pylist():
                yield row, f"{path}: row {i}"
                i += 1
    except (OSError, ValueError, pa.ArrowException) as e:
        raise DataFormatError(f"{path}: cannot read parquet ({type(e).__name__}: {e})") from e


def iter_csv(path: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """(row, "file:line") of a CSV file with a header row; a row with a different number of fields
    than the header is an error naming its line."""
    try:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise DataFormatError(f"{path}:1: a CSV file needs a header row")
            for fields in reader:
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise DataFormatError(f"{path}:{reader.line_num}: {len(fields)} fields, the header has "
                                          f"{len(header)}")
                yield dict(zip(header, fields)), f"{path}:{reader.line_num}"
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except csv.Error as e:
        raise DataFormatError(f"{path}: malformed CSV ({e})") from e


LINE_FIELD = "line"  # the field of a plain-text file's rows: one line each, to be grouped by the loader


def iter_text_lines(path: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """({"line": text}, "file:line") per line of a plain-text file; CRLF and lone CR end lines too."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            text = _decode(raw, path, lineno).replace("\r\n", "\n").replace("\r", "\n")
            if text.endswith("\n"):
                text = text[:-1]
            for part in text.split("\n"):
                yield {LINE_FIELD: part}, f"{path}:{lineno}"


def iter_file(path: Path, text: bool = False) -> Iterator[tuple[dict[str, Any], str]]:
    """(row, where) of one local file, read by its suffix (see the module docstring)."""
    _need_file(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson") or (suffix == ".json" and not _json_is_array(path)):
        for i, row in enumerate(iter_jsonl(path), start=1):
            yield row, f"{path}:{i}"
    elif suffix == ".json":
        for i, row in enumerate(read_json_array(path)):
            yield row, f"{path}: row {i}"
    elif suffix == ".parquet":
        yield from iter_parquet(path)
    elif suffix == ".csv":
        yield from iter_csv(path)
    elif text:
        yield from iter_text_lines(path)
    else:
        raise DataFormatError(f"{path}: unsupported file type {suffix or '(no suffix)'!r} (use .jsonl, .json, "
                              f".parquet, .csv, a hub-layout or save_to_disk directory, or hub:NAME)")


# ----------------------------------------------------------------------------- directories


def _split_word(split: str) -> re.Pattern[str]:
    return re.compile(rf"(?:^|[-._ /0-9]){re.escape(split.lower())}(?:[-._ /0-9]|$)")


KNOWN_SPLITS = ("train", "test", "validation", "valid", "dev", "eval")


def data_files(root: Path, split: str, config: str | None = None, text: bool = False) -> list[Path]:
    """The files of `split` in a hub-layout directory (see the module docstring), sorted."""
    if config and (root / config).is_dir():
        root = root / config
    suffixes = ROW_SUFFIXES + (TEXT_SUFFIXES if text else ())
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                   and p.name not in METADATA_FILES and not p.name.endswith("manifest.json")
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise DataSourceError(f"{root}: no data files ({', '.join(suffixes)}) in this directory")

    def stem(p: Path) -> str:
        return p.relative_to(root).with_suffix("").as_posix().lower()

    chosen = [p for p in files if _split_word(split).search(stem(p))]
    if not chosen and split == "train" and not any(_split_word(s).search(stem(p)) for p in files
                                                   for s in (*KNOWN_SPLITS, split)):
        chosen = files  # files that name no split are the train split, as on the hub
    if not chosen:
        listing = ", ".join(p.relative_to(root).as_posix() for p in files[:8]) + (" ..." if len(files) > 8 else "")
        raise DataSourceError(f"{root}: no file of split {split!r} (a file's path must name the split, e.g. "
                              f"{split}.jsonl or data/{split}-00000-of-00001.parquet; files: {listing})")
    parents = sorted({p.parent.relative_to(root).as_posix() for p in chosen})
    if len(parents) > 1:
        raise DataSourceError(f"{root}: split {split!r} has files in several folders ({', '.join(parents)}); "
                              f"give the folder you mean (e.g. local:{root / parents[0]})")
    return chosen


def _saved_rows(root: Path, split: str) -> Iterator[tuple[dict[str, Any], str]]:
    """Rows of a `save_to_disk` directory (a DatasetDict's split, or a whole Dataset)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(root))
    except Exception as e:  # noqa: BLE001 - corrupt arrow files, bad json: name the directory
        raise DataSourceError(f"{root}: cannot read the save_to_disk directory ({type(e).__name__}: {e})") from e
    label = str(root)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataSourceError(f"{root}: saved DatasetDict has no split {split!r} (splits: {', '.join(ds)})")
        ds, label = ds[split], f"{root}[{split}]"
    for i, row in enumerate(ds):
        yield dict(row), f"{label} row {i}"


def is_saved_dataset(root: Path) -> bool:
    return (root / "dataset_dict.json").is_file() or (root / "state.json").is_file()


def has_split(root: Path, split: str, config: str | None = None) -> bool:
    """Whether a local directory holds `split` as such: a saved DatasetDict's split, or hub-layout
    files that name it (a saved single Dataset, or unsplit files, have no named split)."""
    if (root / "dataset_dict.json").is_file():
        try:
            return split in json.loads((root / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise DataSourceError(f"{root / 'dataset_dict.json'}: unreadable ({e})") from e
    if is_saved_dataset(root):
        return False
    if config and (root / config).is_dir():
        root = root / config
    word = _split_word(split)
    return any(p.is_file() and p.suffix.lower() in ROW_SUFFIXES + TEXT_SUFFIXES
               and word.search(p.relative_to(root).with_suffix("").as_posix().lower()) for p in root.rglob("*"))


# ----------------------------------------------------------------------------- the resolver


def iter_rows(source: str, split: str = "train", *, default_hub: tuple[str, str | None] | None = None,
              required: Iterable[str] = (), text: bool = False, task: str = "?") -> Iterator[tuple[dict[str, Any], str]]:
    """(row, where) for every row of `source` (any spec of the module docstring), streamed.
    `split` is the loader's split (a hub spec's `@SPLIT` wins); `default_hub` is what a bare `hub`
    means; `required` fields are checked on every row; `text` admits plain-text files."""
    spec = parse_spec(source, default_hub)
    required = tuple(required)
    if spec.kind == "hub":
        split = spec.split or split
        ds = load_hub(spec.name, spec.config, split=split, task=task)
        label = str(Spec("hub", spec.name, spec.config, split))
        rows: Iterable[tuple[dict[str, Any], str]] = ((dict(r), f"{label} row {i}") for i, r in enumerate(ds))
    elif spec.path.is_dir():
        if is_saved_dataset(spec.path):
            rows = _saved_rows(spec.path, split)
        else:
            config = default_hub[1] if default_hub else None
            rows = (item for f in data_files(spec.path, split, config, text) for item in iter_file(f, text))
    elif spec.path.is_file():
        rows = iter_file(spec.path, text)
    else:
        raise DataSourceError(f"{spec.path}: no such file or directory")
    for row, where in rows:
        yield check_fields(row, required, where), where


def read_rows(source: str, split: str = "train", **kw: Any) -> list[tuple[dict[str, Any], str]]:
    """All (row, where) pairs of `source` (see `iter_rows`)."""
    return list(iter_rows(source, split, **kw))
