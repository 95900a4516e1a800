"""A training run directory: step checkpoints, keep-last-K, resume, config compatibility, signals.

Layout of `--out DIR`:

    DIR/step_0000500/   checkpoint after 500 updates (weights, tokenizer, meta, train_state/)
    DIR/step_0001000/   ...; only the newest `--keep` step checkpoints are kept
    DIR/final/          the end-of-run weights (no train_state), for the next stage's `--init`
    DIR/metrics.jsonl   one JSON record per logged step / evaluation
    DIR/run_config.json the stage config of the latest start or resume

Every checkpoint is written by `looplm.checkpoint.save_checkpoint` (atomic: a kill at any instant
leaves the previous checkpoint intact). Old checkpoints are first renamed to a hidden `.trash-*`
name and then deleted, so a kill while pruning never leaves a half-deleted `step_*` directory.
`--resume` takes the newest `step_*` that verifies (hashes) and holds a train state; damaged ones
are reported and skipped.

Signals: `StopSignals` turns SIGTERM/SIGINT into a flag the loop polls once per update (it then
saves and exits); a second SIGINT raises KeyboardInterrupt at once. Test hook: env
`LOOPLM_TEST_SAVE_SLEEP=STEP:SECONDS` sleeps inside the save of step STEP (after the weights are
written, before the checkpoint is complete), so a test can kill the process mid-save.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from looplm.checkpoint import CheckpointError, TRAIN_JSON_FILE, save_checkpoint, verify_checkpoint

STEP_PREFIX = "step_"
FINAL = "final"
METRICS = "metrics.jsonl"
RUN_CONFIG = "run_config.json"


class ResumeError(ValueError):
    """`--resume` cannot continue this run (no checkpoint, or a different config)."""


def step_dir(out: Path, step: int) -> Path:
    return Path(out) / f"{STEP_PREFIX}{step:07d}"


def list_step_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """(step, path) of every `step_*` directory, oldest first."""
    found = []
    for p in Path(out).glob(f"{STEP_PREFIX}*"):
        tail = p.name[len(STEP_PREFIX):]
        if p.is_dir() and tail.isdigit():
            found.append((int(tail), p))
    return sorted(found)


def newest_resumable(out: Path, log=print) -> Path:
    """The newest step checkpoint that verifies and carries a train state."""
    problems = []
    for step, path in reversed(list_step_checkpoints(out)):
        try:
            meta = verify_checkpoint(path)
            if TRAIN_JSON_FILE not in meta.get("files", {}):
                raise CheckpointError(f"{path}: saved without a train state")
            if problems:
                log(f"resume: skipped damaged checkpoint(s): {'; '.join(problems)}")
            return path
        except CheckpointError as e:
            problems.append(str(e))
    detail = f" (damaged: {'; '.join(problems)})" if problems else ""
    raise ResumeError(f"--resume: no resumable checkpoint in {out}{detail}; start without --resume")


def check_fresh_out(out: Path) -> None:
    """Refuse to start a new run over an existing one (its checkpoints would be overwritten)."""
    if list_step_checkpoints(out):
        raise ResumeError(f"{out} already holds checkpoints; pass --resume to continue that run "
                          f"or choose a new --out")


def resolve_init(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (its `final/`, else its newest step checkpoint)."""
    p = Path(path)
    if (p / "meta.json").is_file() or not p.is_dir():
        return p
    if (p / FINAL / "meta.json").is_file():
        return p / FINAL
    steps = list_step_checkpoints(p)
    if steps:
        return steps[-1][1]
    return p  # load_checkpoint reports what is missing


def config_differences(saved: dict[str, Any], current: dict[str, Any], free: frozenset[str]) -> list[str]:
    """Fields (outside `free`) whose values differ between a saved run config and the current one."""
    keys = (set(saved) | set(current)) - free
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731 - JSON round-trip turns tuples into lists
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in sorted(keys)
            if norm(saved.get(k)) != norm(current.get(k))]


def check_same_data(meta: dict[str, Any], fingerprint: str, ckpt: Path) -> None:
    """Refuse to resume on different training data (the checkpoint's meta records a fingerprint)."""
    saved = meta.get("data_fingerprint")
    if saved is not None and saved != fingerprint:
        raise ResumeError(f"--resume: {ckpt} was trained on different data (fingerprint {saved[:12]}... vs "
                          f"{fingerprint[:12]}... now); resume with the same data or start a new --out")


class _SlowSaveTokenizer:
    """Test hook: a tokenizer whose `save` (called mid-checkpoint) first sleeps."""

    def __init__(self, tok: Any, seconds: float):
        self._tok, self._seconds = tok, seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)

    def save(self, dir: Any) -> Path:
        print(f"[test hook] sleeping {self._seconds}s inside the checkpoint save", flush=True)
        time.sleep(self._seconds)
        return self._tok.save(dir)


def _save(path: Path, model: Any, tokenizer: Any, meta: dict, train_state: Any) -> Path:
    hook_step, _, seconds = os.environ.get("LOOPLM_TEST_SAVE_SLEEP", "").partition(":")
    slow = bool(seconds) and train_state is not None and meta.get("step") == int(hook_step)
    tok = _SlowSaveTokenizer(tokenizer, float(seconds)) if slow else tokenizer
    return save_checkpoint(path, model, tok, meta=meta, train_state=train_state)


def save_step(out: Path, step: int, model: Any, tokenizer: Any, meta: dict, train_state: Any, keep: int) -> Path:
    """Save `step_{step}` atomically, then delete all but the newest `keep` step checkpoints."""
    path = _save(step_dir(out, step), model, tokenizer, meta, train_state)
    prune(out, keep)
    return path


def save_final(out: Path, model: Any, tokenizer: Any, meta: dict) -> Path:
    return _save(Path(out) / FINAL, model, tokenizer, meta, None)


def prune(out: Path, keep: int) -> None:
    for _, old in list_step_checkpoints(out)[:-keep]:
        trash = old.parent / f".trash-{old.name}-{uuid.uuid4().hex[:8]}"
        os.rename(old, trash)  # atomic: the step_* name is gone before anything is deleted
        shutil.rmtree(trash, ignore_errors=True)
    for trash in Path(out).glob(".trash-*"):  # leftovers of a kill while pruning
        shutil.rmtree(trash, ignore_errors=True)


def write_run_config(out: Path, cfg: dict[str, Any]) -> None:
    tmp = Path(out) / f".{RUN_CONFIG}.tmp"
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, Path(out) / RUN_CONFIG)


class StopSignals:
    """Context manager: SIGTERM/SIGINT set `.signum` instead of killing the process."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now (the last checkpoint stays intact)
        self.signum = signum
        print(f"\nreceived {signal.Signals(signum).name}: saving a checkpoint after this step, then exiting",
              flush=True)

    def __enter__(self) -> "StopSignals":
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
