"""KV caches for incremental decoding: per-layer GQA buffers, anchored core latents, per-step latents.

One `ModelCache` holds preallocated buffers for a batch and a maximum length, a shared fill length
`pos` (sequences are left-padded, so every row has the same length) and a `valid` mask of real
(non-pad) key positions. Rolling back (speculative decoding) is `truncate(n)`: buffers past `n` are
simply overwritten later.

Core layouts (per core block, E = `ModelConfig.core_cache_width`: kv_latent_dim + rope_dim for CART-MLA,
2 · n_kv_heads · head_dim for the core GQA):
- anchored: `[B, L, E]`, computed once per token from the prelude output; independent of steps.
- per_step: `[B, S, L, E]`, one latent per step; a token that exited early lends its last computed
  latent to every later step (filled in by `fill_lent`).

A batch shrinks with `keep_rows(rows)` (decoding drops the rows that have finished).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from looplm.config import ModelConfig


@dataclass
class ModelCache:
    config: ModelConfig
    batch: int
    max_len: int
    n_steps: int
    prelude: list[tuple[torch.Tensor, torch.Tensor]]
    coda: list[tuple[torch.Tensor, torch.Tensor]]
    core: list[torch.Tensor]
    valid: torch.Tensor
    pos: int = 0
    has_padding: bool = False

    @classmethod
    def allocate(cls, config: ModelConfig, batch: int, max_len: int, n_steps: int,
                 device=None, dtype=torch.float32) -> "ModelCache":
        if max_len > config.max_seq_len:
            raise ValueError(f"cache length {max_len} exceeds the model context max_seq_len={config.max_seq_len}")
        if not 1 <= n_steps <= config.max_steps:
            raise ValueError(f"n_steps={n_steps} must be in [1, max_steps={config.max_steps}]")

        def kv():
            shape = (batch, config.n_kv_heads, max_len, config.head_dim)
            return torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)

        E = config.core_cache_width
        core_shape = (batch, max_len, E) if config.core_kv == "anchored" else (batch, n_steps, max_len, E)
        return cls(
            config=config, batch=batch, max_len=max_len, n_steps=n_steps,
            prelude=[kv() for _ in range(config.n_prelude)],
            coda=[kv() for _ in range(config.n_coda)],
            core=[torch.zeros(core_shape, device=device, dtype=dtype) for _ in range(config.n_core)],
            valid=torch.zeros(batch, max_len, dtype=torch.bool, device=device),
        )

    def truncate(self, n: int) -> None:
        """Forget everything from position n on (speculative rollback)."""
        if not 0 <= n <= self.pos:
            raise ValueError(f"cannot truncate a cache of length {self.pos} to {n}")
        self.pos = n

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` (a 1-D index tensor, in that order), e.g. the unfinished ones."""
        def take(t: torch.Tensor) -> torch.Tensor:
            return t.index_select(0, rows)

        self.prelude = [(take(k), take(v)) for k, v in self.prelude]
        self.coda = [(take(k), take(v)) for k, v in self.coda]
        self.core = [take(c) for c in self.core]
        self.valid = take(self.valid)
        self.batch = int(rows.numel())

    def nbytes(self) -> int:
        tensors = [t for kv in self.prelude + self.coda for t in kv] + list(self.core)
        return sum(t.numel() * t.element_size() for t in tensors)


def kv_bytes_per_token(config: ModelConfig, steps: int, bytes_per_elem: int = 4) -> dict[str, int]:
    """Cache bytes one token occupies: prelude and coda GQA keys/values, and the core latents."""
    gqa = 2 * config.n_kv_heads * config.head_dim * bytes_per_elem
    E = config.core_cache_width * bytes_per_elem
    core = config.n_core * E * (1 if config.core_kv == "anchored" else steps)
    out = {"prelude": config.n_prelude * gqa, "core": core, "coda": config.n_coda * gqa}
    out["total"] = sum(out.values())
    return out
