"""looplm: train, align, speed up, audit and evaluate small recursive (depth-looped) causal LMs.

The public names are resolved lazily (PEP 562 `__getattr__`), so `import looplm` is cheap (no
torch import) and `looplm --help` stays fast; `from looplm import RecursiveCausalLM` imports the
model package on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "ModelConfig": "looplm.config",
    "ConfigError": "looplm.config",
    "get_preset": "looplm.config",
    "PRESETS": "looplm.config",
    "RecursiveCausalLM": "looplm.model",
    "load_checkpoint": "looplm.checkpoint",
    "save_checkpoint": "looplm.checkpoint",
    "load_train_state": "looplm.checkpoint",
    "CheckpointError": "looplm.checkpoint",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'looplm' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
