"""Evaluation: held-out task items, batched greedy decoding, task scorers, depth sweeps and the
alignment-tax table.

- `items.py`: which items each eval task uses and how prompts are formatted (chat template vs raw);
- `scoring.py`: one task on a loaded model (`eval_generation`, `eval_chat`);
- `run.py`: `EvalConfig` + `run_eval(config)` over tasks and depths, writing `eval.json`;
- `compare.py`: `CompareConfig` + `run_compare(config)`, the tasks x phases table;
- `report.py`: text tables and PNG plots;
- `stats.py`: Wilson intervals of accuracies and intervals of differences;
- `cli.py`: the `looplm eval` subcommand.

Simplification: decoding is greedy only (evaluation is deterministic); sampling lives in
`looplm generate` and the RL trainer. The public names are imported lazily (PEP 562), so the CLI
can import `looplm.evaluate.cli` without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"EVAL_TASKS": "items", "EvalConfig": "run", "run_eval": "run", "CompareConfig": "compare",
            "run_compare": "compare"}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
