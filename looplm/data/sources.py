"""Pre-training document sources per domain: `hub`, `hub:NAME[:CONFIG][@SPLIT]`, `local:PATH` (or a
bare existing path) or `generated`, always explicit.

Domains and what each source kind means:

| domain | generated | hub (`datasets.load_dataset`) | local:PATH |
|---|---|---|---|
| clrs | (default) CLRS-Text DFS, official format, n from `clrs_nodes` (default 4,5) | smcleish/CLRS-Text-train | rows with question+answer |
| math | (default) arithmetic and word problems, alternating | microsoft/orca-math-word-problems-200k | rows with question+answer |
| text | synthetic English paragraphs (`synth_chat.iter_paragraphs`), only when asked for | Salesforce/wikitext, wikitext-103-raw-v1 | text file or rows with text |

`text` has no default: it must be given, and `--source text=generated` is an explicit choice of
synthetic English (small vocabulary; for offline runs, not a stand-in for WikiText quality).

Rows are read by `looplm.tasks.datasource.iter_rows` (split "train" unless a hub spec names one):
`hub:NAME...` datasets, `.jsonl`/`.json`/`.parquet`/`.csv` files, hub-layout and `save_to_disk`
directories. A document is `question + answer` (joined by a newline unless the question already ends
with one, which is the CLRS-Text layout; a `QADoc` that remembers where the answer starts) or a
row's `text`. Plain-text files (any other suffix) and
the rows of the WikiText hub dataset are lines: one paragraph per non-blank line (the WikiText
layout), CRLF turned into LF, a heading line (`= Title =`) attached to the paragraph after it.

A failed hub load is a `DataSourceError` that names the dataset and says how to pass a local copy
or ask for generated data; nothing falls back on its own.

Simplification: generated math alternates one arithmetic and one word-problem document; hub/local
rows of CLRS-Text are taken whatever their `algo_name` (the report used all of CLRS-Text-train).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from looplm.tasks.datasource import (LINE_FIELD, DataFormatError, DataSourceError, is_hub, iter_rows,
                                     parse_spec)

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
    """Where one domain's documents come from. `kind` is hub | local | generated; `spec` is the
    canonical spec string (`generated`, `hub`, `hub:NAME...` or `local:PATH`)."""

    domain: str
    kind: str
    spec: str
    path: Path | None = None

    @property
    def finite(self) -> bool:
        return self.kind != "generated"


SPEC_FORMS = "hub, generated or local:PATH (a file or directory), or hub:NAME[:CONFIG][@SPLIT]"


def parse_source(domain: str, spec: str) -> Source:
    """A `Source` for `domain` (see the module docstring); anything else is a clear error."""
    if domain not in DOMAINS:
        raise DataSourceError(f"unknown domain {domain!r}; domains are {', '.join(DOMAINS)}")
    if spec == "generated":
        if domain not in GENERATORS:
            raise DataSourceError(f"domain {domain!r} has no generator; pass --source "
                                  f"{domain}=local:PATH (e.g. ../shared/data/wikitext2/wiki.test.raw) "
                                  f"or --source {domain}=hub")
        return Source(domain, "generated", spec)
    if is_hub(spec):
        parse_spec(spec, HUB_DATASETS[domain][:2])  # a malformed hub spec fails here, before any build
        return Source(domain, "hub", spec)
    local = spec.startswith("local:")
    path = Path(spec[len("local:"):]) if local else Path(spec)
    if local and len(spec) > len("local:") or not local and spec and path.exists():
        if not path.exists():
            raise DataSourceError(f"--source {domain}={spec}: no such file or directory {path}")
        return Source(domain, "local", f"local:{path}", path)
    raise DataSourceError(f"--source {domain}={spec!r}: expected {SPEC_FORMS}")


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


class QADoc(str):
    """A question + answer document: the text, plus `answer_start`, the index of the answer's first
    character (pre-training can score the answer only: `looplm pretrain --loss-on answers`). Any
    other document is a plain `str`, which `answer_start` treats as all answer."""

    answer_start: int

    def __new__(cls, text: str, answer_start: int) -> "QADoc":
        if not 0 <= answer_start <= len(text):
            raise ValueError(f"answer_start {answer_start} outside a document of {len(text)} characters")
        doc = super().__new__(cls, text)
        doc.answer_start = answer_start
        return doc


def answer_start(doc: str) -> int:
    """Where the scored part of a document begins: a QADoc's answer, the whole of any other text."""
    return doc.answer_start if isinstance(doc, QADoc) else 0


def join_qa(question: str, answer: str) -> QADoc:
    """`question` + newline (unless it ends with one) + `answer`, remembering where the answer starts."""
    q = question if question.endswith("\n") else question + "\n"
    return QADoc(q + answer, len(q))


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


def _docs(rows: Iterator[tuple[dict[str, Any], str]], text_is_lines: bool) -> Iterator[str]:
    """Documents of a row stream: runs of line rows grouped by `paragraphs`, every other row by
    `row_doc`. `text_is_lines`: the rows' `text` fields are lines (the WikiText hub dataset)."""
    def is_line(item: tuple[dict[str, Any], str]) -> bool:
        row = item[0]
        return isinstance(row.get(LINE_FIELD), str) or (text_is_lines and isinstance(row.get("text"), str))

    for lines, group in itertools.groupby(rows, key=is_line):
        if lines:
            yield from paragraphs(row.get(LINE_FIELD, row.get("text")) for row, _ in group)
        else:
            for row, where in group:
                yield row_doc(row, where)


def local_docs(path: Path) -> Iterator[str]:
    """Documents of a local file or directory (see the module docstring), streamed."""
    return _docs(iter_rows(str(path), "train", text=True), text_is_lines=False)


def hub_docs(domain: str, spec: str = "hub") -> Iterator[str]:
    """Documents of a hub spec (`hub` = the domain's dataset); a failed load names the dataset and
    the remedies."""
    name, config, split = HUB_DATASETS[domain]
    parsed = parse_spec(spec, (name, config))
    rows = iter_rows(spec, split, default_hub=(name, config), task=domain)
    try:
        first = next(rows, None)
    except DataFormatError:
        raise
    except DataSourceError as e:
        cause = e.__cause__ or e
        gen = f", or ask for generated data with --source {domain}=generated" if domain in GENERATORS else ""
        raise DataSourceError(f"domain {domain!r}: could not load hub dataset {parsed} "
                              f"({type(cause).__name__}: {cause}); pass a local copy with "
                              f"--source {domain}=local:PATH{gen}") from e
    if first is not None:
        yield from _docs(itertools.chain([first], rows), text_is_lines=parsed.name == HUB_DATASETS["text"][0])


def finite_docs(src: Source) -> Iterator[str]:
    """One pass over a hub or local source."""
    return hub_docs(src.domain, src.spec) if src.kind == "hub" else local_docs(src.path)


def _local_size(path: Path) -> dict[str, int]:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}


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
        parsed = parse_spec(src.spec, (name, config))
        out.update(dataset=parsed.name, config=parsed.config, split=parsed.split or split)
    else:
        out.update(path=str(src.path), **_local_size(src.path))
    return out
