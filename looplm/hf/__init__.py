"""looplm in the Hugging Face stack: a transformers model class, its export, and an lm-eval model.

- `LoopLMConfig`, `LoopLMForCausalLM`, `LoopLMCache` (configuration_looplm.py, modeling_looplm.py,
  cache_looplm.py): `RecursiveCausalLM` as a transformers `PreTrainedModel` with `generate()`;
- `export_hf` (export.py, CLI `looplm export-hf`): a checkpoint as a directory that
  `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` loads without looplm, its model
  code generated from looplm's source (bundle.py);
- lm_eval_adapter.py: the lm-evaluation-harness model `looplm` (`python -m looplm.hf.lm_eval_cli`).

Names resolve lazily (PEP 562), so `import looplm.hf` imports neither torch nor transformers; the
classes need `pip install "looplm[hf]"`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LoopLMConfig": "looplm.hf.configuration_looplm",
    "LoopLMForCausalLM": "looplm.hf.modeling_looplm",
    "LoopLMCache": "looplm.hf.cache_looplm",
    "export_hf": "looplm.hf.export",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'looplm.hf' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
