"""RL prompt sets: rows `{"prompt", "answer", "task"}` (`answer` = the gold final answer string that
the task's `score` compares against) plus `FILE.manifest.json`.

Generated tasks (`clrs_dfs`, `dfs_verbal`, `arith`, `word_problems`) draw from their "train" split
(or `split="eval"` for held-out prompt sets) with a seed derived from `seed`; loaded tasks (`gsm8k`,
`orca_math`, `alpaca`, `text`) need an explicit `source` (any spec of `looplm.tasks.datasource`:
`hub`, `hub:NAME[:CONFIG][@SPLIT]`, a file, a hub-layout or `save_to_disk` directory; TRL
`messages` / `prompt`+`completion` rows are read by the task loaders) and are sampled by a
seeded shuffle (asking for more rows than exist is an error). Rows whose gold answer is empty (e.g.
Orca solutions without a number) cannot be rewarded: they are left out and counted in the manifest.
`exclude` JSONL files are checked for prompt overlap (error unless `drop_overlap`).

Simplification: task options are passed through `opts` unchanged (e.g. `node_counts`, `min_nodes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from looplm.data.jsonl import check_overlap, count_duplicates, read_jsonl, write_json, write_jsonl
from looplm.data.mixture import DataBuildError
from looplm.data.sft import hub_failure, manifest_path, sample_loaded
from looplm.data.shards import file_sha256
from looplm.data.sources import derive_seed
from looplm.tasks import ALIASES, GENERATED_TASKS, get_task
from looplm.tasks.base import DataSourceError, Example
from looplm.tasks.datasource import is_hub


@dataclass
class RLConfig:
    """What `looplm data rl` builds."""

    task: str
    n: int
    out: str | Path
    seed: int = 0
    source: str | None = None
    split: str | None = None  # default: "train" for every task
    opts: dict[str, Any] = field(default_factory=dict)
    exclude: list[str] = field(default_factory=list)
    drop_overlap: bool = False


def rl_examples(cfg: RLConfig) -> tuple[list[Example], dict[str, Any]]:
    task = ALIASES.get(cfg.task, cfg.task)
    module = get_task(task)
    split = cfg.split or "train"
    seed = derive_seed(cfg.seed, "rl", task)
    if task in GENERATED_TASKS:
        if cfg.source not in (None, "generated"):
            raise DataBuildError(f"task {task!r} is generated; --source {cfg.source!r} does not apply")
        return module.generate(cfg.n, seed=seed, split=split, **cfg.opts), \
            {"kind": "generated", "split": split, "opts": dict(cfg.opts)}
    if not cfg.source or cfg.source == "generated":
        raise DataBuildError(f"task {task!r} is loaded from data: pass --source hub or --source PATH "
                             f"(a local file or directory), or pick a generated task "
                             f"({', '.join(GENERATED_TASKS)})")
    try:
        pool = module.load(cfg.source, split=split, **cfg.opts)
    except DataSourceError as e:
        if not is_hub(cfg.source):
            raise  # local errors already name the file (and line)
        raise DataSourceError(hub_failure(task, e, "pass a local copy with --source PATH, or pick a "
                                                   f"generated task ({', '.join(GENERATED_TASKS)})")) from e
    usable = [e for e in pool if e.gold.strip()]
    exs = sample_loaded(usable, cfg.n, seed, f"{task} ({cfg.source})")
    return exs, {"kind": "loaded", "source": cfg.source, "split": split, "available": len(pool),
                 "left_out_without_gold": len(pool) - len(usable)}


def build_rl(cfg: RLConfig, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Write the RL prompt JSONL and its manifest; returns the manifest."""
    if isinstance(cfg.n, bool) or not isinstance(cfg.n, int) or cfg.n < 1:
        raise DataBuildError(f"--n must be a positive integer, got {cfg.n!r}")
    exs, info = rl_examples(cfg)
    rows = [{"prompt": e.prompt, "answer": e.gold, "task": e.task} for e in exs]
    overlaps: dict[str, int] = {}
    for path in cfg.exclude:
        hits = check_overlap(rows, read_jsonl(path, required=("prompt",)))
        overlaps[str(path)] = len(hits)
        if hits and not cfg.drop_overlap:
            raise DataBuildError(f"{len(hits)} prompts overlap {path} (first: {rows[hits[0]]['prompt'][:80]!r}); "
                                 f"pass --drop-overlap to drop them")
        for i in reversed(hits):
            del rows[i]
    n = write_jsonl(cfg.out, rows)
    manifest = {"kind": "rl", "task": rows[0]["task"] if rows else cfg.task, "seed": cfg.seed,
                "rows": n, "requested": cfg.n, "source": info, "duplicate_prompts": count_duplicates(rows),
                "exclude_overlaps": overlaps, "file": Path(cfg.out).name, "sha256": file_sha256(Path(cfg.out))}
    write_json(manifest_path(cfg.out), manifest)
    log(f"wrote {n} {manifest['task']} prompts to {cfg.out}")
    return manifest
