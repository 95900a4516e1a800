"""Pre-training document sources per domain: `hub`, `local:PATH` or `generated`, always explicit.

Domains and what each source kind means:

| domain | generated | hub (`datasets.load_dataset`) | local:PATH |
|---|---|---|---|
| clrs | (default) CLRS-Text DFS, official format, n from `clrs_nodes` (default 4,5) | smcleish/CLRS-Text-train | rows with question+answer |
| math | (default) arithmetic and word problems, alternating | microsoft/orca-math-word-problems-200k | rows with question+answer |
| text | synthetic English paragraphs (`synth_chat.iter_paragraphs`), only when asked for | Salesforce/wikitext, wikitext-103-raw-v1 | text file or rows with text |

`text` has no default: it must be given, and `--source text=generated` is an explicit choice of
synthetic English (small vocabulary; for offline runs, not a stand-in for WikiText quality).

A document is `question + answer` (joined by a newline unless the question already ends with one,
which is the CLRS-Text layout) or a row's `text`. Local files: `.jsonl` (streamed), `.json` (an
array), `.parquet`, anything else is plain text read one paragraph per line (the WikiText layout),
CRLF turned into LF, a heading line (`= Title =`) attached to the paragraph after it. Hub text rows
are read the same way (they are WikiText lines).

A failed hub load is a `DataSourceError` that names the dataset and says how to pass a local copy
or ask for generated data; nothing falls back on its own.

Simplification: generated math alternates one arithmetic and one word-problem document; hub/local
rows of CLRS-Text are taken whatever their `algo_name` (the report used all of CLRS-Text-train).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from looplm.data.jsonl import DataFormatError, iter_jsonl
from looplm.tasks.base import DataSourceError, load_hub, read_json_array

DOMAINS: tuple[str, ...] = ("clrs", "math", "text")
DEFAULT_SOURCES: dict[str, str] = {"clrs": "generated", "math": "generated"}  # text: must be given
HUB_DATASETS: dict[str, tuple[str, str | None, str]] = {  # name, config, split
    "clrs": ("smcleish/CLRS-Text-train", None, "train"),
    "math": ("microsoft/orca-math-word-problems-200k", None, "train"),
    "text": ("Salesforce/wikitext", "wikitext-103-raw-v1", "train"),
}
GENERATORS: dict[str, tuple[str, ...]] = {"clrs": ("clrs_dfs",), "math": ("arith", "word_problems"),
                                          "text": ("synth_chat",)}  # text: its paragraphs


@dataclass(frozen=True)
class Source:
    """Where one domain's documents come from. `kind` is hub | local | generated."""

    domain: str
    kind: str
    path: Path | None = None

    @property
    def spec(self) -> str:
        return f"local:{self.path}" if self.kind == "local" else self.kind

    @property
    def finite(self) -> bool:
        return self.kind != "generated"


def parse_source(domain: str, spec: str) -> Source:
    """`hub`, `generated` or `local:PATH` for `domain`; anything else is a clear error."""
    if domain not in DOMAINS:
        raise DataSourceError(f"unknown domain {domain!r}; domains are {', '.join(DOMAINS)}")
    if spec in ("hub", "generated"):
        if spec == "generated" and domain not in GENERATORS:
            raise DataSourceError(f"domain {domain!r} has no generator; pass --source "
                                  f"{domain}=local:PATH (e.g. ../shared/data/wikitext2/wiki.test.raw) "
                                  f"or --source {domain}=hub")
        return Source(domain, spec)
    if spec.startswith("local:") and len(spec) > len("local:"):
        path = Path(spec[len("local:"):])
        if not path.is_file():
            raise DataSourceError(f"--source {domain}={spec}: no such file {path}")
        return Source(domain, "local", path)
    raise DataSourceError(f"--source {domain}={spec!r}: expected hub, generated or local:PATH")


def resolve_sources(domains: list[str], given: dict[str, str]) -> dict[str, Source]:
    """One `Source` per mixed domain: the given spec, else the documented default (generated for
    clrs and math); a domain with no default (text) must be given."""
    extra = sorted(set(given) - set(domains))
    if extra:
        raise DataSourceError(f"--source given for domain(s) {extra} that are not in --mix {domains}")
    out = {}
    for d in domains:
        spec = given.get(d, DEFAULT_SOURCES.get(d))
        if spec is None:
            gen = f", or --source {d}=generated (synthetic English)" if d in GENERATORS else ""
            raise DataSourceError(f"domain {d!r} needs an explicit source: --source {d}=local:PATH "
                                  f"(e.g. ../shared/data/wikitext2/wiki.test.raw) or --source {d}=hub "
                                  f"({HUB_DATASETS[d][0]}){gen}")
        out[d] = parse_source(d, spec)
    return out


def derive_seed(seed: int, *parts: str) -> int:
    """A 31-bit seed for a (seed, domain, split, ...) combination; distinct parts give distinct seeds."""
    h = hashlib.sha256(":".join([str(seed), *parts]).encode("utf-8")).digest()
    return int.from_bytes(h[:4], "big") & 0x7FFFFFFF


def join_qa(question: str, answer: str) -> str:
    return question + answer if question.endswith("\n") else question + "\n" + answer


# ----------------------------------------------------------------------------- generated


def generated_docs(domain: str, seed: int, split: str, clrs_nodes: tuple[int, ...] = (4, 5)) -> Iterator[str]:
    """Endless deterministic documents from the domain's generators; `split` is the tasks' split
    ("train" or "eval"), so a train stream never shares a prompt with an eval/val stream."""
    from looplm.tasks import get_task

    if domain == "clrs":
        for ex in get_task("clrs_dfs").iter_examples(seed, node_counts=tuple(clrs_nodes), split=split):
            yield join_qa(ex.prompt, ex.answer)
    elif domain == "math":
        streams = [get_task(t).iter_examples(derive_seed(seed, t), split=split) for t in GENERATORS["math"]]
        while True:
            for s in streams:
                ex = next(s)
                yield join_qa(ex.prompt, ex.answer)
    elif domain == "text":
        yield from get_task("synth_chat").iter_paragraphs(seed, split=split)
    else:
        raise DataSourceError(f"domain {domain!r} has no generator")


# ----------------------------------------------------------------------------- local / hub

_HEADING_RE = re.compile(r"^\s*(=+) .* \1\s*$")


def paragraphs(lines: Iterator[str]) -> Iterator[str]:
    """One document per non-blank line (CRLF -> LF); heading lines join the paragraph after them."""
    headings: list[str] = []
    for line in lines:
        line = line.rstrip("\r\n").replace("\r\n", "\n")
        if not line.strip():
            continue
        if _HEADING_RE.match(line):
            headings.append(line)
            continue
        yield "\n".join([*headings, line])
        headings = []
    if headings:
        yield "\n".join(headings)


def row_doc(row: Any, where: str) -> str:
    """The document of one row: its `text`, or `question` + `answer`."""
    if isinstance(row, dict):
        if isinstance(row.get("text"), str):
            return row["text"]
        if isinstance(row.get("question"), str) and isinstance(row.get("answer"), str):
            return join_qa(row["question"], row["answer"])
    raise DataFormatError(f"{where}: a row needs a string 'text' field or string 'question' and "
                          f"'answer' fields")


def local_docs(path: Path) -> Iterator[str]:
    """Documents of a local file (see the module docstring for the formats), streamed."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for i, row in enumerate(iter_jsonl(path), start=1):
            yield row_doc(row, f"{path}:{i}")
    elif suffix == ".json":
        for i, row in enumerate(read_json_array(path)):
            yield row_doc(row, f"{path}: row {i}")
    elif suffix == ".parquet":
        import datasets

        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
        for i, row in enumerate(ds):
            yield row_doc(row, f"{path}: row {i}")
    else:
        with path.open(encoding="utf-8", newline="") as f:
            yield from paragraphs(iter(f))


def hub_docs(domain: str) -> Iterator[str]:
    """Documents of the domain's hub dataset; a failed load names the dataset and the remedies."""
    name, config, split = HUB_DATASETS[domain]
    try:
        ds = load_hub(name, config, split, task=domain)
    except DataSourceError as e:
        cause = e.__cause__ or e
        gen = f", or ask for generated data with --source {domain}=generated" if domain in GENERATORS else ""
        label = name + (f" (config {config})" if config else "")
        raise DataSourceError(f"domain {domain!r}: could not load hub dataset {label} "
                              f"({type(cause).__name__}: {cause}); pass a local copy with "
                              f"--source {domain}=local:PATH{gen}") from e
    if domain == "text":
        yield from paragraphs(str(row["text"]) for row in ds)
    else:
        for i, row in enumerate(ds):
            yield row_doc(dict(row), f"{name}: row {i}")


def finite_docs(src: Source) -> Iterator[str]:
    """One pass over a hub or local source."""
    return hub_docs(src.domain) if src.kind == "hub" else local_docs(src.path)


def describe(src: Source, clrs_nodes: tuple[int, ...]) -> dict[str, Any]:
    """What the manifest records about a source."""
    out: dict[str, Any] = {"spec": src.spec, "kind": src.kind}
    if src.kind == "generated":
        out["generators"] = list(GENERATORS[src.domain])
        if src.domain == "clrs":
            out["node_counts"] = list(clrs_nodes)
        if src.domain == "text":
            out["unit"] = "paragraph (synthetic English)"
    elif src.kind == "hub":
        name, config, split = HUB_DATASETS[src.domain]
        out.update(dataset=name, config=config, split=split)
    else:
        out.update(path=str(src.path), bytes=src.path.stat().st_size)
    return out
