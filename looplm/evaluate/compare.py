"""`run_compare(config)`: the alignment-tax table over several checkpoints or eval results.

Sources, one column each, in the order given (`--compare SRC...`) or discovered (`--run-dir DIR`):
- a checkpoint directory: evaluated with `run_eval` (the template `EvalConfig` with `ckpt` replaced,
  results written to `<out>/<label>-eval/`, so no earlier eval is overwritten) unless
  `<checkpoint>-eval/` or `<out>/<label>-eval/` already holds an `eval.json` made with the same tasks,
  n, seed, format, depths, budget and sources, which is then reused;
- an `eval.json` file, or a directory holding one: read as is.
`--run-dir DIR` takes every checkpoint directory directly under DIR (a directory with `config.json`
and `meta.json`) plus every eval directory whose checkpoint is absent, ordered by pipeline phase
(`PHASE_ORDER`, matched on the directory name or the checkpoint's `meta["stage"]`), unknown names
last, alphabetically. Labels default to the directory names.

Each column shows a task's headline number at one depth: the checkpoint's training depth R when it
was evaluated there, else the first depth evaluated (the depth used is listed under the table).
Every accuracy cell also carries its number of items and a Wilson 95% interval (JSON keys `n`,
`correct`, `ci95` next to the original `labels`, `steps`, `rows`, `sources`).
Outputs in `out` (default `<run-dir>/alignment-tax`, or `./alignment-tax`): `alignment_tax.md`,
`alignment_tax.png`, `alignment_tax.json`; the markdown is also printed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from looplm.config import ConfigError
from looplm.evaluate.items import EVAL_TASKS
from looplm.evaluate.run import EVAL_JSON, EvalConfig, default_out, run_eval
from looplm.evaluate.stats import wilson_interval

PHASE_ORDER = ("pretrain", "sft", "grpo-outcome", "grpo-process", "grpo", "calibrate-halt", "train-spec")
REUSE_KEYS = ("tasks", "n", "seed", "format", "steps", "steps_sweep", "max_new_tokens", "gsm8k", "alpaca")


@dataclass
class CompareConfig:
    """What `looplm eval --compare / --run-dir` runs."""

    sources: tuple[str, ...] = ()  # checkpoint dirs, eval.json files or eval output dirs
    labels: tuple[str, ...] | None = None  # column names; default: directory names
    run_dir: str | None = None  # discover the sources in a run directory instead
    out: str | None = None  # output directory (see the module docstring)
    template: EvalConfig | None = None  # eval settings for checkpoints (ckpt is replaced)
    reuse: bool = True  # reuse a matching <ckpt>-eval/eval.json instead of re-evaluating
    plots: bool = True
    print_table: bool = True

    def validate(self) -> "CompareConfig":
        if bool(self.sources) == bool(self.run_dir):
            raise ConfigError("CompareConfig.sources / run_dir: give either sources (--compare) or run_dir "
                              "(--run-dir), exactly one of them")
        if self.labels is not None:
            if self.run_dir:
                raise ConfigError("CompareConfig.labels: labels go with sources (--compare), not with run_dir")
            if len(self.labels) != len(self.sources):
                raise ConfigError(f"CompareConfig.labels: {len(self.labels)} labels for {len(self.sources)} sources")
            if len(set(self.labels)) != len(self.labels):
                raise ConfigError(f"CompareConfig.labels={list(self.labels)!r}: labels must be distinct")
        return self


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and (path / "meta.json").is_file()


def _eval_json(path: Path) -> Path | None:
    if path.is_file() and path.suffix == ".json":
        return path
    if path.is_dir() and (path / EVAL_JSON).is_file() and not is_checkpoint(path):
        return path / EVAL_JSON
    return None


def _phase_key(path: Path) -> tuple[int, str]:
    names = [path.name.replace("_", "-").lower()]
    ckpt = path if is_checkpoint(path) else None
    if ckpt is not None:
        try:
            stage = json.loads((ckpt / "meta.json").read_text()).get("stage")
        except (OSError, json.JSONDecodeError):
            stage = None
        if isinstance(stage, str):
            names.append(stage.replace("_", "-").lower())
    for i, phase in enumerate(PHASE_ORDER):
        if any(n.startswith(phase) for n in names):
            return i, path.name
    return len(PHASE_ORDER), path.name


def discover(run_dir: Path) -> list[Path]:
    """Checkpoints (and orphan eval dirs) directly under `run_dir`, in phase order."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    subdirs = [p for p in sorted(run_dir.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    ckpts = [p for p in subdirs if is_checkpoint(p)]
    names = {p.name for p in ckpts}
    evals = [p for p in subdirs if _eval_json(p) and not (p.name.endswith("-eval") and p.name[:-5] in names)]
    found = sorted(ckpts + evals, key=_phase_key)
    if not found:
        raise FileNotFoundError(f"{run_dir}: no checkpoint directories (config.json + meta.json) or eval "
                                f"results ({EVAL_JSON}) directly under it")
    return found


def _label(path: Path) -> str:
    name = path.parent.name if path.is_file() else path.name
    return name[:-5] if name.endswith("-eval") else name


def _reusable(candidates: list[Path], template: EvalConfig) -> dict[str, Any] | None:
    want = json.loads(json.dumps(dataclasses.asdict(template.validate()), default=str))
    for existing in candidates:
        if existing.is_file():
            result = json.loads(existing.read_text(encoding="utf-8"))
            have = result.get("config", {})
            if all(have.get(k) == want.get(k) for k in REUSE_KEYS):
                return result
    return None


def load_or_run(path: Path, template: EvalConfig, reuse: bool, dest: Path) -> dict[str, Any]:
    """The eval result of one source (see the module docstring)."""
    js = _eval_json(path)
    if js is not None:
        result = json.loads(js.read_text(encoding="utf-8"))
        if result.get("kind") != "looplm-eval":
            raise ValueError(f"{js}: not a looplm eval result (no \"kind\": \"looplm-eval\")")
        return result
    if not is_checkpoint(path):
        raise FileNotFoundError(f"{path}: neither a checkpoint directory nor an eval result ({EVAL_JSON})")
    template = dataclasses.replace(template, ckpt=str(path), out=str(dest))
    if reuse:
        found = _reusable([default_out(path, "eval") / EVAL_JSON, dest / EVAL_JSON], template)
        if found is not None:
            return found
    return run_eval(template)


def _column(result: dict[str, Any]) -> tuple[int, dict[str, float]]:
    depths = result["depths"]
    R = result["checkpoint"].get("recurrence")
    steps = R if R in depths else depths[0]
    return steps, {task: by_steps[str(steps)] for task, by_steps in result["summary"].items()
                   if str(steps) in by_steps}


def _items(result: dict[str, Any], steps: int) -> dict[str, int]:
    """task -> number of items scored at `steps` (from the per-run metrics; `gsm8k (strict)` too)."""
    out = {}
    for r in result.get("runs", []):
        n = (r.get("metrics") or {}).get("n")
        if r.get("steps") == steps and isinstance(n, int):
            out[r["task"]] = n
            if r["task"] == "gsm8k":
                out["gsm8k (strict)"] = n
    return out


def _interval(value: float | None, n: int | None, task: str) -> tuple[int | None, list[float] | None]:
    """(items correct, Wilson 95% interval) of an accuracy cell; (None, None) for chat or unknown n.
    Every accuracy task scores each item 0 or 1, so correct = value x n exactly."""
    if task == "chat" or value is None or not n:
        return None, None
    k = round(value * n)
    return k, list(wilson_interval(k, n))


def build_table(results: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    """{"labels", "steps" (per column), "rows": task -> [value or None per column]}, plus per cell
    "n" (items scored), "correct" (items right) and "ci95" (Wilson 95% interval [low, high]); the last
    three are None where unknown (chat is a loss: n only)."""
    cols = [_column(r) for r in results]
    items = [_items(r, s) for r, (s, _) in zip(results, cols)]
    order = [t for t in EVAL_TASKS if t != "chat"]
    order = [x for t in order for x in ((t, "gsm8k (strict)") if t == "gsm8k" else (t,))] + ["chat"]
    present = {t for _, values in cols for t in values}
    rows = {t: [values.get(t) for _, values in cols] for t in order if t in present}
    n = {t: [it.get(t) for it in items] for t in rows}
    cells = {t: [_interval(v, k, t) for v, k in zip(rows[t], n[t])] for t in rows}
    return {"labels": labels, "steps": [s for s, _ in cols], "rows": rows, "n": n,
            "correct": {t: [c[0] for c in cs] for t, cs in cells.items()},
            "ci95": {t: [c[1] for c in cs] for t, cs in cells.items()}}


def run_compare(cfg: CompareConfig) -> dict[str, Any]:
    """Build the alignment-tax table (see the module docstring); returns it."""
    from looplm.evaluate.report import plot_tax, tax_markdown

    cfg = cfg.validate()
    template = (cfg.template or EvalConfig(ckpt="-")).validate()
    paths = discover(Path(cfg.run_dir)) if cfg.run_dir else [Path(s) for s in cfg.sources]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such checkpoint or eval result")
    labels = list(cfg.labels) if cfg.labels else [_label(p) for p in paths]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"CompareConfig.labels: the default labels {labels} repeat; pass --labels")
    out = Path(cfg.out) if cfg.out else (Path(cfg.run_dir) if cfg.run_dir else Path(".")) / "alignment-tax"
    results = [load_or_run(p, template, cfg.reuse, out / f"{label}-eval") for p, label in zip(paths, labels)]
    table = build_table(results, labels)
    table["sources"] = [r["checkpoint"]["path"] for r in results]
    md = tax_markdown(table)
    if cfg.print_table:
        print(md, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "alignment_tax.md").write_text(md, encoding="utf-8")
    (out / "alignment_tax.json").write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    if cfg.plots:
        plot_tax(table, out / "alignment_tax.png")
    table["out"] = str(out)
    return table
