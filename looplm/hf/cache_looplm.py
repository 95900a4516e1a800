"""`LoopLMCache`: a transformers `Cache` whose storage is one looplm `ModelCache` (looplm/model/cache.py).

transformers' generation loop keeps the cache object it gets back from `forward` and asks it for its
length (`get_seq_length`), to reorder or select batch rows (beam search, `batch_select_indices`,
`batch_repeat_interleave`) and to roll back (`crop`, assisted decoding). Each is one call on the
looplm cache: the fill length `pos`, `keep_rows(index)` and `truncate(n)`. The looplm model itself reads
and writes `.inner` (prelude/coda GQA keys and values, anchored or per-step core latents, the mask of
real key positions), so decoding through transformers computes exactly what `looplm.generate` does.

Growth: a `ModelCache` is preallocated, while `generate` does not tell the model its final length, so
`ensure(n)` reallocates at twice the length (at most `max_seq_len`) when n more tokens do not fit and
copies what is cached. The copy needs no knowledge of the layout: every tensor of the new cache is the
old one's shape except along the length axis, found as the one axis whose size changed.

It also keeps, per depth, the decoding tables `looplm.generate` computes once per call (the step table
and the transposed prelude/coda weights), when gradients are off: the weights cannot change while a
cache is being filled.

Simplifications: no offloading, not compileable (the model's own `looplm generate --compile` is the
compiled path); `crop(n)` takes a negative n (remove |n| tokens) or n >= 0 (keep the first n tokens).
"""

from __future__ import annotations

import dataclasses
import inspect

import torch
from transformers.cache_utils import Cache

from looplm.model.cache import ModelCache
from looplm.model.recursive import RecursiveCausalLM


class LoopLMCache(Cache):
    def __init__(self, model: RecursiveCausalLM, batch: int, max_len: int, steps: int):
        if "layers" in inspect.signature(Cache.__init__).parameters:
            super().__init__(layers=[])
        else:  # transformers < 4.54: Cache takes no arguments
            super().__init__()
        self.max_seq_len = model.config.max_seq_len
        self.steps = steps
        self.inner: ModelCache = model.new_cache(batch, min(max_len, self.max_seq_len), steps)
        self._tables: dict[int, dict] = {}

    # ------------------------------------------------------------------ what the model uses
    def ensure(self, n_new: int) -> None:
        """Make room for n_new more tokens (up to max_seq_len; the model names a longer request)."""
        need = self.inner.pos + n_new
        if need <= self.inner.max_len or self.inner.max_len >= self.max_seq_len:
            return
        self.inner = grown(self.inner, min(self.max_seq_len, max(need, 2 * self.inner.max_len)))

    def tables(self, model: RecursiveCausalLM, steps: int) -> dict:
        """`step_table` and `weights_t` for `RecursiveCausalLM.forward` at `steps`, computed once per
        cache and depth; empty while gradients are on (training reads the live weights)."""
        if torch.is_grad_enabled():
            return {}
        if steps not in self._tables:
            self._tables[steps] = {"step_table": model.core.step_table(steps), "weights_t": model.transposed_weights()}
        return self._tables[steps]

    # ------------------------------------------------------------------ the transformers Cache API
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.inner.pos

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return self.max_seq_len

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.inner.pos + query_length, 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.inner.keep_rows(beam_idx.to(self.inner.valid.device))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.inner.keep_rows(indices.to(self.inner.valid.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        rows = torch.arange(self.inner.batch, device=self.inner.valid.device).repeat_interleave(repeats)
        self.inner.keep_rows(rows)

    def crop(self, max_length: int) -> None:
        keep = self.inner.pos + max_length if max_length < 0 else max_length
        if keep < self.inner.pos:
            self.inner.truncate(max(keep, 0))

    def reset(self) -> None:
        self.inner.pos = 0
        self.inner.valid.zero_()
        self.inner.has_padding = False

    @property
    def batch_size(self) -> int:
        return self.inner.batch

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_initialized(self) -> bool:
        return True

    @property
    def is_croppable(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"LoopLMCache(batch={self.inner.batch}, pos={self.inner.pos}, max_len={self.inner.max_len})"


def grown(old: ModelCache, new_len: int) -> ModelCache:
    """A copy of `old` with room for `new_len` positions (the first `old.max_len` copied)."""
    ref = old.valid
    sample = next(t for t in _tensors(old) if t.is_floating_point())
    new = ModelCache.allocate(old.config, old.batch, new_len, old.n_steps, ref.device, sample.dtype)
    for f in dataclasses.fields(ModelCache):
        if f.name == "max_len":
            continue
        setattr(new, f.name, _copy_prefix(getattr(old, f.name), getattr(new, f.name), f.name))
    return new


def _tensors(cache: ModelCache):
    for f in dataclasses.fields(ModelCache):
        stack = [getattr(cache, f.name)]
        while stack:
            x = stack.pop()
            if isinstance(x, torch.Tensor):
                yield x
            elif isinstance(x, (list, tuple)):
                stack.extend(x)


def _copy_prefix(old, new, name: str):
    if isinstance(old, torch.Tensor):
        if old.shape == new.shape:
            return old.clone()
        axes = [i for i, (a, b) in enumerate(zip(old.shape, new.shape)) if a != b]
        if old.dim() != new.dim() or len(axes) != 1:
            raise RuntimeError(f"LoopLMCache: ModelCache.{name} of shape {tuple(old.shape)} reallocated as "
                               f"{tuple(new.shape)}: expected the two to differ along one (length) axis")
        new.narrow(axes[0], 0, old.shape[axes[0]]).copy_(old)
        return new
    if isinstance(old, (list, tuple)):
        if len(old) != len(new):
            raise RuntimeError(f"LoopLMCache: ModelCache.{name} has {len(old)} entries, reallocated with {len(new)}")
        return type(old)(_copy_prefix(a, b, name) for a, b in zip(old, new))
    return old  # config, batch, n_steps, pos, has_padding: unchanged
