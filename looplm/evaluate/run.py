"""`run_eval(config)`: every requested task on one checkpoint, at one depth or over a depth sweep.

Order of work, so that bad input fails before anything slow runs: validate the config (each error
names the field) -> check the checkpoint directory (it must hold `tokenizer.json`; `--steps` must fit
its `max_steps`) -> load every task's items (a malformed GSM8K line fails here, naming `file:line`)
and check them against `exclude` files -> load the model -> evaluate -> print the table -> write
`eval.json` (config, checkpoint, item sources, per-depth metrics and per-sample records) and, for a
sweep, `accuracy_vs_steps.png`.

Output directory: `config.out`, default `<checkpoint>-eval` next to the checkpoint directory (the
checkpoint itself is never written to).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from looplm.config import ConfigError
from looplm.evaluate.items import (DEFAULT_TASKS, EVAL_TASKS, FORMATS, TaskItems, answer_budget, canonical_task,
                                   check_overlap_with, load_items, prompt_format)
from looplm.evaluate.scoring import GenSpec, eval_chat, eval_generation, no_progress, tqdm_progress

EVAL_JSON = "eval.json"
SWEEP_PNG = "accuracy_vs_steps.png"


@dataclass
class EvalConfig:
    """What `looplm eval --ckpt` runs. Defaults are documented per field."""

    ckpt: str
    tasks: tuple[str, ...] = DEFAULT_TASKS  # eval task names (items.EVAL_TASKS); gsm8k/chat need a source
    n: int = 100  # items per task
    steps: int | None = None  # recurrence steps; None = the model's training depth R
    steps_sweep: tuple[int, ...] | None = None  # evaluate at each of these depths instead of `steps`
    halt_threshold: float | None = None  # AdaExit threshold in (0, 1]; None = fixed depth
    min_steps: int = 1  # AdaExit: no exit before this step
    adaptive: bool = False  # AdaExit with the checkpoint's calibration (`looplm calibrate-halt`'s meta.json)
    speculative: bool = False  # lossless speculative decoding (greedy; one sequence at a time)
    batch_size: int = 32  # prompts decoded together
    max_new_tokens: int | None = None  # None = per task, longest reference answer + items.ANSWER_SLACK
    format: str = "auto"  # prompt format: auto | chat | raw (see looplm.evaluate.items)
    gsm8k: str | None = None  # GSM8K source: a JSONL file, a directory with test.jsonl, or "hub"
    alpaca: str | None = None  # Alpaca-format source for `chat`: a .json/.jsonl/.parquet file, or "hub"
    exclude: tuple[str, ...] = ()  # JSONL files (a "prompt" field per row, e.g. the SFT set): overlap = error
    out: str | None = None  # output directory; None = "<ckpt>-eval" next to the checkpoint
    seed: int = 0  # seed of the generated items
    device: str = "cpu"
    progress: bool = True  # progress bars (stderr)
    plots: bool = True  # write PNGs
    write: bool = True  # write eval.json (and plots) to `out`
    print_table: bool = True

    def validate(self) -> "EvalConfig":
        """Check every field (errors name it); returns a copy with canonical task names and tuples."""
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"EvalConfig.{name}={getattr(self, name)!r}: {why}")

        if not isinstance(self.ckpt, (str, Path)) or not str(self.ckpt):
            raise bad("ckpt", "must be a checkpoint directory")
        tasks = tuple(self.tasks.split(",")) if isinstance(self.tasks, str) else tuple(self.tasks)
        if not tasks:
            raise bad("tasks", f"give at least one task ({', '.join(EVAL_TASKS)})")
        tasks = tuple(dict.fromkeys(canonical_task(t) for t in tasks))
        for name in ("n", "batch_size", "min_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(name, "must be an integer >= 1")
        for name in ("steps", "max_new_tokens"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise bad(name, "must be an integer >= 1 (or None)")
        sweep = None
        if self.steps_sweep is not None:
            sweep = tuple(self.steps_sweep)
            if not sweep or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sweep):
                raise bad("steps_sweep", "must be a non-empty list of integers >= 1")
            if len(set(sweep)) != len(sweep):
                raise bad("steps_sweep", "has repeated depths")
            if self.steps is not None:
                raise bad("steps_sweep", "give either steps or steps_sweep, not both")
        if self.halt_threshold is not None:
            h = self.halt_threshold
            if isinstance(h, bool) or not isinstance(h, (int, float)) or not 0.0 < h <= 1.0:
                raise bad("halt_threshold", "must be in (0, 1]")
        if self.adaptive and self.halt_threshold is not None:
            raise bad("adaptive", "give adaptive (the checkpoint's calibrated threshold) or halt_threshold, not both")
        if self.format not in FORMATS:
            raise bad("format", f"must be one of {', '.join(FORMATS)}")
        if "gsm8k" in tasks and not self.gsm8k:
            raise bad("gsm8k", "task gsm8k needs a source: a JSONL file, a directory holding test.jsonl, or 'hub'")
        if "chat" in tasks and not self.alpaca:
            raise bad("alpaca", "task chat needs Alpaca-format pairs: a .json/.jsonl file or 'hub'")
        return dataclasses.replace(self, tasks=tasks, steps_sweep=sweep, exclude=tuple(self.exclude))

    def depths(self, recurrence: int) -> list[int]:
        if self.steps_sweep:
            return list(self.steps_sweep)
        return [self.steps or recurrence]


def default_out(ckpt: str | Path, suffix: str) -> Path:
    p = Path(ckpt).absolute()
    return p.parent / f"{p.name}-{suffix}"


def check_checkpoint_dir(ckpt: str | Path, purpose: str) -> Any:
    """Fail fast on a missing directory or tokenizer; return its (validated) ModelConfig."""
    from looplm.checkpoint import CheckpointError, load_config

    root = Path(ckpt)
    if not root.is_dir():
        raise CheckpointError(f"{root}: no checkpoint directory")
    if not (root / "tokenizer.json").is_file():
        raise CheckpointError(f"{root}: the checkpoint has no tokenizer.json; {purpose} needs the tokenizer the "
                              f"model was trained with (save_checkpoint(dir, model, tokenizer) writes it)")
    return load_config(root)


def calibrated_exit(ckpt: str | Path) -> dict[str, Any]:
    """The AdaExit threshold and minimum steps that `looplm calibrate-halt` stored in the checkpoint's meta."""
    from looplm.calibrate.configs import META_MIN_STEPS, META_THRESHOLD
    from looplm.checkpoint import verify_checkpoint

    meta = verify_checkpoint(ckpt)
    if meta.get(META_THRESHOLD) is None:
        raise ConfigError(f"EvalConfig.adaptive: {ckpt} has no calibrated halt_threshold in its meta.json; run "
                          f"`looplm calibrate-halt --init {ckpt} ...` first, or pass --halt-threshold X")
    return {"halt_threshold": float(meta[META_THRESHOLD]), "min_steps": int(meta.get(META_MIN_STEPS, 1))}


def _check_depths(depths: list[int], model_cfg: Any, cfg: EvalConfig) -> None:
    field = "steps_sweep" if cfg.steps_sweep else "steps"
    for s in depths:
        if s > model_cfg.max_steps:
            raise ConfigError(f"EvalConfig.{field}: {s} steps exceed the model's max_steps={model_cfg.max_steps}")
    if cfg.min_steps > max(depths):
        raise ConfigError(f"EvalConfig.min_steps={cfg.min_steps} exceeds the depth {max(depths)}")
    if cfg.speculative and model_cfg.n_spec_heads == 0:
        raise ConfigError("EvalConfig.speculative=True: the checkpoint's model has no speculative heads")


def load_all_items(cfg: EvalConfig) -> dict[str, TaskItems]:
    from looplm.data.jsonl import read_jsonl

    items = {t: load_items(t, cfg.n, cfg.seed, cfg.gsm8k, cfg.alpaca) for t in cfg.tasks}
    for path in cfg.exclude:
        rows = read_jsonl(path, required=("prompt",))
        for it in items.values():
            check_overlap_with(it.examples, rows, str(path))
    return items


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate `cfg.ckpt` (see the module docstring); returns what `eval.json` holds."""
    from looplm.checkpoint import load_checkpoint

    cfg = cfg.validate()
    model_cfg = check_checkpoint_dir(cfg.ckpt, "eval")
    if cfg.adaptive:
        cfg = dataclasses.replace(cfg, **calibrated_exit(cfg.ckpt))  # recorded in eval.json
    depths = cfg.depths(model_cfg.recurrence)
    _check_depths(depths, model_cfg, cfg)
    items = load_all_items(cfg)
    model, tokenizer, meta = load_checkpoint(cfg.ckpt, map_location=cfg.device)
    progress = tqdm_progress if cfg.progress else no_progress
    budgets = {t: cfg.max_new_tokens or answer_budget(tokenizer, it.examples)
               for t, it in items.items() if t != "chat"}
    start = time.perf_counter()
    runs = []
    for steps in depths:
        for task, it in items.items():
            runs.append(_run_task(model, tokenizer, task, it, steps, budgets.get(task), cfg, progress))
    result = {
        "kind": "looplm-eval", "config": _jsonable(dataclasses.asdict(cfg)),
        "checkpoint": {"path": str(Path(cfg.ckpt).absolute()), "stage": meta.get("stage"),
                       "recurrence": model_cfg.recurrence, "meta": _jsonable(meta)},
        "tasks": {t: {"source": it.source, "n": len(it.examples), "format": _fmt(t, cfg),
                      "max_new_tokens": budgets.get(t), **it.notes} for t, it in items.items()},
        "depths": depths, "seconds": time.perf_counter() - start, "runs": runs,
        "summary": summary(runs),
    }
    if cfg.print_table:
        from looplm.evaluate.report import format_eval_table

        print(format_eval_table(result), flush=True)
    if cfg.write:
        path = write_outputs(result, Path(cfg.out) if cfg.out else default_out(cfg.ckpt, "eval"), cfg.plots)
        if cfg.print_table:
            print(f"wrote {path}", file=sys.stderr)
    return result


def _fmt(task: str, cfg: EvalConfig) -> str:
    return "chat" if task == "chat" else prompt_format(task, cfg.format)


def _run_task(model, tokenizer, task, it, steps, budget, cfg, progress) -> dict[str, Any]:
    if task == "chat":
        res = eval_chat(model, tokenizer, it.examples, steps, batch_size=cfg.batch_size, progress=progress)
    else:
        spec = GenSpec(steps=steps, max_new_tokens=budget, batch_size=cfg.batch_size, fmt=_fmt(task, cfg),
                       halt_threshold=cfg.halt_threshold, min_steps=cfg.min_steps, speculative=cfg.speculative)
        res = eval_generation(model, tokenizer, it.examples, task, spec, progress)
    return {"task": task, "steps": steps, **res}


def primary(task: str, metrics: dict[str, Any]) -> float:
    """The headline number of a task: accuracy (`score`) or, for chat, the response loss."""
    return metrics["loss"] if task == "chat" else metrics["score"]


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """task -> {str(steps): headline number} (see `primary`); gsm8k also gets `gsm8k (strict)`."""
    out: dict[str, dict[str, float]] = {}
    for r in runs:
        out.setdefault(r["task"], {})[str(r["steps"])] = primary(r["task"], r["metrics"])
        if r["task"] == "gsm8k":
            out.setdefault("gsm8k (strict)", {})[str(r["steps"])] = r["metrics"]["strict"]
    return out


def write_outputs(result: dict[str, Any], out: Path, plots: bool) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / EVAL_JSON
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    if plots and len(result["depths"]) > 1:
        from looplm.evaluate.report import plot_sweep

        plot_sweep(result, out / SWEEP_PNG)
    return path


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
