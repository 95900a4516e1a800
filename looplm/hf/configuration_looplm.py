"""`LoopLMConfig`: the transformers `PretrainedConfig` of a looplm model (`model_type="looplm"`).

It holds every `looplm.config.ModelConfig` field under the same name (the field list is read from
the dataclass, so a field added to ModelConfig is carried without a change here), plus two
generation defaults of the wrapper: `halt_threshold` (AdaExit threshold, None = fixed depth) and
`halt_min_steps`, and `use_cache` (default True). `to_model_config()` rebuilds the ModelConfig and so validates every field, raising
`ConfigError` naming the bad one; the constructor calls it, so an invalid config.json fails on load.

transformers' standard names map onto looplm's (`hidden_size` -> `d_model`, `num_attention_heads` ->
`n_heads`, `num_key_value_heads` -> `n_kv_heads`, `max_position_embeddings` -> `max_seq_len`), and
`tie_word_embeddings` is always True (the LM head is the embedding).

This file is also copied, with its `looplm.` imports rewritten, into every `looplm export-hf`
directory (see looplm/hf/bundle.py): it must import nothing beyond torch, transformers and the
looplm model modules.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import PretrainedConfig

from looplm.config import ModelConfig

MODEL_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ModelConfig))


class LoopLMConfig(PretrainedConfig):
    model_type = "looplm"
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_key_value_heads": "n_kv_heads",
        "max_position_embeddings": "max_seq_len",
    }

    def __init__(self, halt_threshold: float | None = None, halt_min_steps: int = 1, **kwargs: Any):
        defaults = ModelConfig()
        for name in MODEL_FIELDS:
            setattr(self, name, kwargs.pop(name, getattr(defaults, name)))
        if halt_threshold is not None and not (isinstance(halt_threshold, (int, float)) and 0 < halt_threshold <= 1):
            raise ValueError(f"LoopLMConfig.halt_threshold={halt_threshold!r} must be None or in (0, 1]")
        if isinstance(halt_min_steps, bool) or not isinstance(halt_min_steps, int) or halt_min_steps < 1:
            raise ValueError(f"LoopLMConfig.halt_min_steps={halt_min_steps!r} must be an integer >= 1")
        self.halt_threshold = halt_threshold
        self.halt_min_steps = halt_min_steps
        self.use_cache = kwargs.pop("use_cache", True)
        if kwargs.pop("tie_word_embeddings", True) is not True:
            raise ValueError("LoopLMConfig.tie_word_embeddings must be True: the looplm LM head is the embedding")
        super().__init__(tie_word_embeddings=True, **kwargs)
        self.to_model_config()  # validate now: a bad field fails at load, naming the field

    def to_model_config(self) -> ModelConfig:
        """The looplm ModelConfig these fields describe (validated by its constructor)."""
        return ModelConfig(**{name: getattr(self, name) for name in MODEL_FIELDS})

    @classmethod
    def from_model_config(cls, config: ModelConfig, **kwargs: Any) -> "LoopLMConfig":
        """A LoopLMConfig holding `config`'s fields; `kwargs` are the other PretrainedConfig fields."""
        return cls(**config.to_dict(), **kwargs)
