"""The phase runner of `looplm reproduce`: order, skipping of finished phases, logs, failures.

A run directory holds `reproduce.json`, the manifest: for every phase its status, the hash of its
inputs (its own settings plus the hashes of the phases it reads from), wall time, outputs and log
path. Re-running skips a phase whose status is `done`, whose input hash is unchanged and whose outputs
still exist; any change upstream changes the hashes downstream, so exactly the stale phases re-run.
`--from`/`--until` select a contiguous range (phases before `--from` must already be done).

Every phase runs in this process with its stdout/stderr sent to `logs/PHASE.log`; the console gets
one line per phase. A phase that raises stops the run: the manifest records the failure and the
console names the log.

Simplification: phases run one after another (no parallelism); a phase is the unit of resumption
(a killed phase restarts from its beginning, except stages that resume themselves).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

MANIFEST = "reproduce.json"


class PhaseFailed(RuntimeError):
    """A phase raised; the message names the phase and its log."""


@dataclass
class Phase:
    name: str
    run: Callable[["Context"], dict[str, Any]]  # returns the phase's outputs (paths, headline numbers)
    deps: tuple[str, ...] = ()
    settings: Callable[["Context"], dict[str, Any]] = lambda ctx: {}
    always: bool = False  # cheap phases that re-run every time (the report)


@dataclass
class Context:
    cfg: Any  # ReproduceConfig
    budget: Any  # Budget of the preset
    out: Path
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # phase -> outputs (this run or manifest)

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_manifest(out: Path) -> dict[str, Any]:
    p = out / MANIFEST
    if not p.is_file():
        return {"phases": {}}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise PhaseFailed(f"{p}: corrupt manifest ({e}); delete it to start the run over") from e


def save_manifest(out: Path, manifest: dict[str, Any]) -> None:
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / MANIFEST)


def _outputs_exist(outputs: dict[str, Any]) -> bool:
    paths = [v for k, v in outputs.items() if k.endswith(("_dir", "_path", "_file")) and isinstance(v, str)]
    return all(Path(p).exists() for p in paths)


@contextlib.contextmanager
def _logged(log: Path):
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        print(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} =====", flush=True)
        yield f


def select(phases: list[Phase], start: str | None, stop: str | None) -> list[Phase]:
    names = [p.name for p in phases]
    for flag, v in (("--from", start), ("--until", stop)):
        if v is not None and v not in names:
            raise ValueError(f"{flag} {v!r} is not a phase; phases in order: {', '.join(names)}")
    i = names.index(start) if start else 0
    j = names.index(stop) + 1 if stop else len(names)
    if i >= j:
        raise ValueError(f"--from {start} comes after --until {stop}; phases in order: {', '.join(names)}")
    return phases[i:j]


def run_phases(ctx: Context, phases: list[Phase], start: str | None = None, stop: str | None = None,
               force: bool = False, echo: Callable[[str], None] = print) -> dict[str, Any]:
    out = ctx.out
    out.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(out)
    done = manifest["phases"]
    for name, rec in done.items():
        if rec.get("status") == "done":
            ctx.outputs[name] = rec.get("outputs", {})
    chosen = select(phases, start, stop)
    chosen_names = {p.name for p in chosen}
    for p in phases:
        if p.name in chosen_names:
            break
        if done.get(p.name, {}).get("status") != "done":
            raise PhaseFailed(f"--from {start}: earlier phase {p.name!r} has not completed in {out}; "
                              f"run without --from first")
    total = len(chosen)
    for k, phase in enumerate(chosen, 1):
        dep_hashes = {d: done.get(d, {}).get("input_hash") for d in phase.deps}
        h = _hash({"settings": phase.settings(ctx), "deps": dep_hashes, "phase": phase.name})
        rec = done.get(phase.name, {})
        log = out / "logs" / f"{phase.name}.log"
        if (not force and not phase.always and rec.get("status") == "done" and rec.get("input_hash") == h
                and _outputs_exist(rec.get("outputs", {}))):
            echo(f"[{k}/{total}] {phase.name}: up to date (skipped)")
            continue
        echo(f"[{k}/{total}] {phase.name}: running (log: {log})")
        done[phase.name] = {"status": "running", "input_hash": h, "log": str(log), "started": time.time()}
        save_manifest(out, manifest)
        t0 = time.time()
        try:
            with _logged(log):
                outputs = phase.run(ctx)
        except BaseException as e:  # noqa: BLE001 - recorded, then re-raised as a clear failure
            with log.open("a", encoding="utf-8") as f:
                traceback.print_exc(file=f)
            done[phase.name].update(status="failed", seconds=time.time() - t0, error=f"{type(e).__name__}: {e}")
            save_manifest(out, manifest)
            if isinstance(e, KeyboardInterrupt):
                raise
            raise PhaseFailed(f"phase {phase.name!r} failed: {type(e).__name__}: {e}\n  see {log}") from e
        secs = time.time() - t0
        ctx.outputs[phase.name] = outputs
        done[phase.name] = {"status": "done", "input_hash": h, "log": str(log), "seconds": secs,
                            "outputs": outputs, "finished": time.time()}
        save_manifest(out, manifest)
        echo(f"[{k}/{total}] {phase.name}: done in {secs / 60:.1f} min")
    return manifest
