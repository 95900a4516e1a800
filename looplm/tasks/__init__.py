"""Task registry: `TASKS: dict[str, module]` keyed by task name, and `get_task(name)`.

Tasks (one module each): generated `clrs_dfs`, `dfs_verbal`, `arith`, `word_problems`, `synth_chat`
(Alpaca-style English instructions; also `iter_paragraphs` for generated pre-training text) expose
`generate(n, seed, **opts) -> list[Example]` and `iter_examples(seed, **opts)`; loaded `gsm8k`,
`alpaca`, `text`, `orca_math` expose `load(source, split=..., **opts) -> list[Example]` with
`source` = `"hub"` or a local path (`"local:PATH"` or a bare path). Every task exposes
`extract_answer(text) -> str | None` and `score(completion, example) -> dict[str, float]` with the
primary metric under key `"score"`. The shared record and helpers live in `looplm.tasks.base`.

Simplification: the task modules are imported on first access of `TASKS` (PEP 562 module
`__getattr__`), so importing `looplm.tasks.base` stays cheap and free of import cycles.
"""

from __future__ import annotations

import importlib
from types import ModuleType

TASK_NAMES: tuple[str, ...] = (
    "clrs_dfs", "dfs_verbal", "arith", "word_problems", "gsm8k", "alpaca", "text", "orca_math", "synth_chat",
)
GENERATED_TASKS: tuple[str, ...] = ("clrs_dfs", "dfs_verbal", "arith", "word_problems", "synth_chat")
LOADED_TASKS: tuple[str, ...] = ("gsm8k", "alpaca", "text", "orca_math")
ALIASES: dict[str, str] = {"clrs-dfs": "clrs_dfs", "dfs-verbal": "dfs_verbal",
                           "word-problems": "word_problems", "orca-math": "orca_math",
                           "synth-chat": "synth_chat"}


def get_task(name: str) -> ModuleType:
    """The task module for `name` (hyphenated aliases accepted); unknown names list the known ones."""
    key = ALIASES.get(name, name)
    if key not in TASK_NAMES:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    return importlib.import_module(f"{__name__}.{key}")


def __getattr__(attr: str):
    if attr == "TASKS":
        tasks = {name: get_task(name) for name in TASK_NAMES}
        globals()["TASKS"] = tasks
        return tasks
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = ["TASKS", "TASK_NAMES", "GENERATED_TASKS", "LOADED_TASKS", "get_task"]
