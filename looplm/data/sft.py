"""SFT chat sets: rows `{"prompt", "response", "domain"}` plus `FILE.manifest.json`.

Recipes (sizes LOGIC, MATH, CHAT): `three-domain` = 10,000 / 1,000 / 10,000 and `math-heavy` =
1,000 / 333 / 333; `sizes` overrides them. Domains:
- logic: generated verbal DFS traces (`dfs_verbal`, tasks' "train" split, nodes `logic_nodes`);
- math: exactly the source asked for (`math_source`): `gsm8k` (train split from `gsm8k_source`, any
  source spec of `looplm.tasks.datasource`: a file, a hub-layout or `save_to_disk` directory, `hub`
  or `hub:NAME[:CONFIG][@SPLIT]`), `word-problems` or `arith` (generated, "train" split). No
  default: the report's silent swap of GSM8K for arithmetic cannot happen here;
- chat: Alpaca-format (or TRL `messages` / `prompt`+`completion`) rows from `alpaca_source`: any
  source spec, or `generated` (synthetic
  English instructions from the `synth_chat` task, "train" split; only when asked for; a local file
  literally named `generated` is passed as `local:generated`). No default;
- replay (optional, share `replay` of the final set): CLRS-Text DFS question/answer records in the
  pre-training format, `domain = "replay"` (trainers may skip the chat template for them).
A domain of size 0 needs no source. Loaded rows are shuffled with the seed and the first N taken;
asking for more rows than the source has is an error (no oversampling). Generated rows are checked to
lie in the tasks' train split; GSM8K rows are checked against GSM8K test when it can be found (the
hub spec's test split, a directory's test split, or a sibling file named with `test` for `train`
or `test.jsonl`);
`exclude` files (JSONL with a `prompt` field) are checked too. An overlap is an error unless
`drop_overlap`, which drops those rows and records how many.

Simplification: prompts are compared by exact text; duplicate prompts inside the set are counted in
the manifest, not removed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from looplm.data.jsonl import check_overlap, count_duplicates, read_jsonl, write_json, write_jsonl
from looplm.data.mixture import DataBuildError
from looplm.data.shards import file_sha256
from looplm.data.sources import derive_seed
from looplm.tasks import get_task
from looplm.tasks.base import DataSourceError, Example, in_split
from looplm.tasks.datasource import (data_files, has_split, is_hub, is_saved_dataset, parse_spec, remedy_text,
                                     with_split)

RECIPES: dict[str, tuple[int, int, int]] = {"three-domain": (10_000, 1_000, 10_000),
                                            "math-heavy": (1_000, 333, 333)}
MATH_SOURCES: dict[str, str] = {"gsm8k": "gsm8k", "word-problems": "word_problems", "arith": "arith"}


@dataclass
class SFTConfig:
    """What `looplm data sft` builds."""

    recipe: str
    out: str | Path
    sizes: tuple[int, int, int] | None = None
    math_source: str | None = None
    gsm8k_source: str | None = None
    alpaca_source: str | None = None
    seed: int = 0
    replay: float = 0.0
    logic_nodes: tuple[int, int] = (4, 8)
    clrs_nodes: tuple[int, ...] = (4, 5)
    exclude: list[str] = field(default_factory=list)
    drop_overlap: bool = False


def manifest_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name[: -len(".jsonl")] + ".manifest.json" if out.name.endswith(".jsonl")
                         else out.name + ".manifest.json")


def sizes_for(cfg: SFTConfig) -> tuple[int, int, int]:
    if cfg.recipe not in RECIPES:
        raise DataBuildError(f"unknown --recipe {cfg.recipe!r}; recipes: {', '.join(RECIPES)}")
    sizes = cfg.sizes if cfg.sizes is not None else RECIPES[cfg.recipe]
    if len(sizes) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in sizes):
        raise DataBuildError(f"--sizes must be three non-negative integers LOGIC,MATH,CHAT, got {sizes}")
    return tuple(sizes)


def sample_loaded(examples: list[Example], n: int, seed: int, label: str) -> list[Example]:
    """`n` rows chosen by a seeded shuffle; more than available is an error (no oversampling)."""
    if n > len(examples):
        raise DataBuildError(f"{label}: asked for {n} rows but the source has {len(examples)}; ask for "
                             f"fewer (--sizes) or give a larger source")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in sorted(order[:n])]


def check_generated_split(examples: list[Example], label: str) -> None:
    """Hash check: every generated training row lies in the tasks' train split (never eval)."""
    bad = sum(not in_split(e.prompt, "train") for e in examples)
    if bad:
        raise DataBuildError(f"{label}: {bad} generated rows fall in the eval split")


def _load_task(task: str, source: str, split: str, flag: str, alt: str) -> list[Example]:
    """`task.load(source, split)`; a failed hub load says which flag takes a local copy."""
    try:
        return get_task(task).load(source, split=split)
    except DataSourceError as e:
        if not is_hub(source):
            raise  # local errors already name the file (and line)
        raise DataSourceError(hub_failure(task, e, f"pass a local copy with {flag} PATH{alt}")) from e


def hub_failure(task: str, err: BaseException, remedy: str) -> str:
    """The tasks' hub error (dataset name and cause) with this command's remedy instead of theirs."""
    msg, theirs = str(err), "; " + remedy_text(task)
    return f"{msg[: -len(theirs)] if msg.endswith(theirs) else msg}; {remedy}"


def _sibling_test_file(path: Path) -> Path | None:
    """The test file next to a train file: `train` replaced by `test` in its name, else `test.jsonl`."""
    named = path.with_name(re.sub(r"(?<![a-z])train(?![a-z])", "test", path.name))
    for cand in (named, path.with_name("test.jsonl")):
        if cand.is_file() and cand.resolve() != path.resolve():
            return cand
    return None


def gsm8k_eval_rows(source: str) -> tuple[list[Example], str | None]:
    """The GSM8K test split belonging to `source` (see the module docstring); ([], None) if none."""
    from looplm.tasks import gsm8k

    spec = parse_spec(source, (gsm8k.HUB_NAME, gsm8k.HUB_CONFIG))
    if spec.kind == "hub":
        test = with_split(source, "test")
        return _load_task("gsm8k", test, "test", "--gsm8k", ""), f"{test}{'' if '@' in test else ' (test)'}"
    if spec.path.is_dir():
        if not has_split(spec.path, "test", gsm8k.HUB_CONFIG):
            return [], None
        where = (f"{spec.path}[test]" if is_saved_dataset(spec.path) else
                 ", ".join(map(str, data_files(spec.path, "test", gsm8k.HUB_CONFIG))))
        return gsm8k.load(source, split="test"), where
    test_file = _sibling_test_file(spec.path)
    return (gsm8k.load(str(test_file), split="test"), str(test_file)) if test_file else ([], None)


def logic_rows(cfg: SFTConfig, n: int) -> tuple[list[Example], dict[str, Any]]:
    lo, hi = cfg.logic_nodes
    exs = get_task("dfs_verbal").generate(n, seed=derive_seed(cfg.seed, "sft", "logic"),
                                          min_nodes=lo, max_nodes=hi, split="train")
    check_generated_split(exs, "logic")
    return exs, {"kind": "generated", "task": "dfs_verbal", "nodes": [lo, hi]}


def math_rows(cfg: SFTConfig, n: int) -> tuple[list[Example], dict[str, Any]]:
    if cfg.math_source not in MATH_SOURCES:
        raise DataBuildError(f"the math domain needs --math-source gsm8k|word-problems|arith "
                             f"(got {cfg.math_source!r}); nothing is chosen for you")
    task = MATH_SOURCES[cfg.math_source]
    if task != "gsm8k":
        exs = get_task(task).generate(n, seed=derive_seed(cfg.seed, "sft", task), split="train")
        check_generated_split(exs, f"math ({task})")
        return exs, {"kind": "generated", "task": task}
    if not cfg.gsm8k_source:
        raise DataBuildError("--math-source gsm8k needs --gsm8k PATH (e.g. ../shared/data/gsm8k) or "
                             "--gsm8k hub; or choose --math-source word-problems|arith explicitly")
    alt = " (e.g. ../shared/data/gsm8k) or --math-source word-problems|arith for generated maths"
    pool = _load_task("gsm8k", cfg.gsm8k_source, "train", "--gsm8k", alt)
    exs = sample_loaded(pool, n, derive_seed(cfg.seed, "sft", "gsm8k"), f"gsm8k ({cfg.gsm8k_source})")
    test, where = gsm8k_eval_rows(cfg.gsm8k_source)
    overlap = check_overlap(exs, test) if test else []
    if overlap:
        raise DataBuildError(f"gsm8k: {len(overlap)} selected train rows also occur in the test split "
                             f"{where} (first: {exs[overlap[0]].prompt[:80]!r})")
    return exs, {"kind": "loaded", "task": "gsm8k", "source": cfg.gsm8k_source, "available": len(pool),
                 "checked_against_test": where}


def chat_rows(cfg: SFTConfig, n: int) -> tuple[list[Example], dict[str, Any]]:
    if not cfg.alpaca_source:
        raise DataBuildError("the chat domain needs --alpaca PATH (e.g. ../shared/data/alpaca/"
                             "alpaca_en_demo.json), --alpaca hub or --alpaca generated (synthetic "
                             "English instructions); or set its size to 0 in --sizes")
    if cfg.alpaca_source == "generated":
        exs = get_task("synth_chat").generate(n, seed=derive_seed(cfg.seed, "sft", "chat"), split="train")
        check_generated_split(exs, "chat (synth_chat)")
        return exs, {"kind": "generated", "task": "synth_chat", "split": "train"}
    loaded = _load_task("alpaca", cfg.alpaca_source, "train", "--alpaca", "")
    # keep the rows whose prompt hashes into the train split: `looplm eval --tasks chat` scores the eval-split
    # rows of the same file, so SFT never sees them (the manifest records how many were held out)
    pool = [e for e in loaded if in_split(e.prompt, "train")]
    exs = sample_loaded(pool, n, derive_seed(cfg.seed, "sft", "chat"), f"alpaca ({cfg.alpaca_source}, train split)")
    return exs, {"kind": "loaded", "task": "alpaca", "source": cfg.alpaca_source, "available": len(pool),
                 "held_out_for_eval": len(loaded) - len(pool)}


def replay_count(base: int, share: float) -> int:
    """Rows r so that r / (base + r) is `share` (rounded)."""
    if not 0.0 <= share < 1.0:
        raise DataBuildError(f"--replay must be in [0, 1), got {share}")
    return round(share * base / (1.0 - share))


def _apply_exclusions(rows: list[dict[str, Any]], cfg: SFTConfig) -> dict[str, int]:
    """Check `rows` against each exclude file; error on overlap unless `drop_overlap` (rows then
    dropped in place). Returns the number of overlapping rows per file."""
    found: dict[str, int] = {}
    for path in cfg.exclude:
        hits = check_overlap(rows, read_jsonl(path, required=("prompt",)))
        found[str(path)] = len(hits)
        if hits and not cfg.drop_overlap:
            raise DataBuildError(f"{len(hits)} rows overlap {path} by prompt (first: "
                                 f"{rows[hits[0]]['prompt'][:80]!r}); pass --drop-overlap to drop them")
        for i in reversed(hits):
            del rows[i]
    return found


def build_sft(cfg: SFTConfig, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Write the SFT JSONL and its manifest; returns the manifest."""
    n_logic, n_math, n_chat = sizes_for(cfg)
    parts: dict[str, tuple[list[Example], dict[str, Any]]] = {}
    if n_logic:
        parts["logic"] = logic_rows(cfg, n_logic)
    if n_math:
        parts["math"] = math_rows(cfg, n_math)
    if n_chat:
        parts["chat"] = chat_rows(cfg, n_chat)
    n_replay = replay_count(n_logic + n_math + n_chat, cfg.replay)
    if n_replay:
        exs = get_task("clrs_dfs").generate(n_replay, seed=derive_seed(cfg.seed, "sft", "replay"),
                                            node_counts=tuple(cfg.clrs_nodes), split="train")
        check_generated_split(exs, "replay")
        parts["replay"] = (exs, {"kind": "generated", "task": "clrs_dfs", "node_counts": list(cfg.clrs_nodes),
                                 "format": "pretrain (question/answer, no chat template intended)"})
    rows = [{"prompt": e.prompt, "response": e.answer, "domain": d} for d, (exs, _) in parts.items() for e in exs]
    if not rows:
        raise DataBuildError("every domain has size 0: nothing to build")
    random.Random(derive_seed(cfg.seed, "sft", "order")).shuffle(rows)
    overlaps = _apply_exclusions(rows, cfg)
    n = write_jsonl(cfg.out, rows)
    counts = {d: sum(r["domain"] == d for r in rows) for d in parts}
    manifest = {
        "kind": "sft", "recipe": cfg.recipe, "seed": cfg.seed, "rows": n,
        "sizes_requested": {"logic": n_logic, "math": n_math, "chat": n_chat, "replay": n_replay},
        "counts": counts, "replay_share": cfg.replay,
        "sources": {d: info for d, (_, info) in parts.items()},
        "duplicate_prompts": {d: count_duplicates([r for r in rows if r["domain"] == d]) for d in parts},
        "exclude_overlaps": overlaps, "dropped_overlaps": sum(overlaps.values()) if cfg.drop_overlap else 0,
        "file": Path(cfg.out).name, "sha256": file_sha256(Path(cfg.out)),
    }
    write_json(manifest_path(cfg.out), manifest)
    log(f"wrote {n} rows {counts} to {cfg.out}")
    return manifest
