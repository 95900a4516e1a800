"""`LoopLMForCausalLM`: a transformers `PreTrainedModel` + `GenerationMixin` around `RecursiveCausalLM`.

The wrapped model is `self.model` (so the weights are `model.<looplm name>`); the wrapper computes
nothing itself:

- `forward(input_ids, attention_mask, ...)`: `steps` (default: the config's recurrence R),
  `halt_threshold` / `min_steps` (AdaExit; default: the config's `halt_threshold` / `halt_min_steps`)
  are passed to `RecursiveCausalLM.forward`. `attention_mask` is transformers' 2-D mask over the
  past and new tokens; positions are counted over real tokens (`cumsum - 1`), so a left-padded row
  computes what it computes alone, as in `looplm.generate`. `labels` gives the shifted LM loss
  (mean cross-entropy of token t+1 given tokens <= t over labels != -100, or the sum divided by
  `num_items_in_batch` when the Trainer passes it). `logits_to_keep=1` computes the last position only.
- the KV cache is a `LoopLMCache` (looplm/hf/cache_looplm.py): created by the first forward with
  `use_cache`, returned as `cache` (and `past_key_values`) and fed back by `generate`.
- `generate(..., steps=S, halt_threshold=X, min_steps=M)`: these are generation options, passed to
  every forward of the call. As `looplm.generate`, the prompt runs at full depth and only generated
  tokens exit early: `generate` passes `prompt_len` (the prompt's width) to every forward, which lets
  only the positions at or after it exit (a plain `forward` without `prompt_len` lets every position
  exit).

Loading (`from_pretrained`) builds the model on the meta device and then loads the weights; buffers
that are not saved (RoPE angles, RMSNorm floors) are recomputed in `_init_weights` from a freshly
built reference model, and a weight missing from the file is an error naming it (never left
uninitialised).

Simplifications: no `inputs_embeds`, attention maps or per-layer hidden states; not for
`torch.compile` through transformers (looplm's compiled decoder is `looplm generate --compile`).

This file is also copied, with its `looplm.` imports rewritten, into every `looplm export-hf`
directory (looplm/hf/bundle.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput

from looplm.hf.cache_looplm import LoopLMCache
from looplm.hf.configuration_looplm import LoopLMConfig
from looplm.model.recursive import RecursiveCausalLM

IGNORE_INDEX = -100
# generation-loop bookkeeping that transformers may pass and this model does not need
_UNUSED_KWARGS = ("cache_position", "next_sequence_length", "is_first_iteration", "return_dict")
_CACHE_SLACK = 64  # a new cache holds the prompt plus this many tokens before it first grows


@dataclass
class LoopLMCausalLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Cache | None = None
    past_key_values: Cache | None = None  # the same object as `cache` (the name before transformers 5)
    exit_steps: torch.Tensor | None = None  # [B, T] core steps each token ran (AdaExit), else None


class LoopLMForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = LoopLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _tied_weights_keys = {"model.lm_head.weight": "model.embed.weight"}
    _supports_cache_class = True  # transformers 4.x

    def __init__(self, config: LoopLMConfig):
        super().__init__(config)
        self.model = RecursiveCausalLM(config.to_model_config())
        self.post_init()
        self._constructed = True  # later `_init_weights` calls are from loading: see there

    # ------------------------------------------------------------------ transformers hooks
    def get_input_embeddings(self):
        return self.model.embed

    def get_output_embeddings(self):
        return self.model.lm_head

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # forward makes its own LoopLMCache

    @torch.no_grad()
    def _init_weights(self, module: torch.nn.Module) -> None:
        """Weights come from RecursiveCausalLM's own init (construction, where this does nothing) or from
        the file (loading): then refill the buffers that are not saved and refuse weights the file lacks."""
        if not getattr(self, "_constructed", False):
            return
        missing = [n for n, p in module.named_parameters(recurse=False) if not getattr(p, "_is_hf_initialized", False)]
        prefix = next(name for name, m in self.named_modules() if m is module)
        if missing:
            raise ValueError("LoopLMForCausalLM: weights missing from the checkpoint: "
                             + ", ".join(f"{prefix}.{n}" if prefix else n for n in missing))
        for n in module._non_persistent_buffers_set:
            if module._buffers.get(n) is not None:
                module._buffers[n].copy_(self._reference_buffers()[f"{prefix}.{n}" if prefix else n])

    def _reference_buffers(self) -> dict[str, torch.Tensor]:
        """The non-persistent buffers of a freshly built model, by name (built once per instance)."""
        if "_looplm_reference_buffers" not in self.__dict__:
            with torch.device("cpu"), torch.random.fork_rng(devices=[]):
                ref = RecursiveCausalLM(self.config.to_model_config())
            self.__dict__["_looplm_reference_buffers"] = {
                f"{self.base_model_prefix}.{name}.{b}".replace("..", "."): m._buffers[b]
                for name, m in ref.named_modules() for b in m._non_persistent_buffers_set if m._buffers.get(b) is not None}
        return self.__dict__["_looplm_reference_buffers"]

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Cache | None = None,
                past_key_values: Cache | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, steps: int | None = None, halt_threshold: float | None = None,
                min_steps: int | None = None, prompt_len: int | None = None, logits_to_keep: int = 0,
                num_items_in_batch: int | None = None,
                inputs_embeds: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None, **kwargs):
        self._check_unsupported(input_ids, inputs_embeds, output_attentions, output_hidden_states, kwargs)
        cfg = self.config
        B, T = input_ids.shape
        steps = cfg.recurrence if steps is None else steps
        halt_threshold = cfg.halt_threshold if halt_threshold is None else halt_threshold
        min_steps = cfg.halt_min_steps if min_steps is None else min_steps
        use_cache = (cfg.use_cache and labels is None) if use_cache is None else use_cache
        cache = self._cache_for(cache if cache is not None else past_key_values, use_cache, B, T, steps)
        past = cache.get_seq_length() if cache is not None else 0
        position_ids, new_mask = self._positions(attention_mask, position_ids, B, T, past, input_ids.device)
        tables = {}
        if cache is not None:
            cache.ensure(T)
            tables = cache.tables(self.model, steps)
        exit_mask = None
        if halt_threshold is not None and prompt_len is not None:  # the prompt at full depth (module docstring)
            exit_mask = (torch.arange(past, past + T, device=input_ids.device) >= prompt_len).expand(B, T)
            if not bool(exit_mask.any()):
                halt_threshold, exit_mask = None, None
        if not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"LoopLMForCausalLM: logits_to_keep={logits_to_keep!r} must be an integer >= 0")
        out = self.model(input_ids, steps, cache=cache.inner if cache is not None else None,
                         attention_mask=new_mask, position_ids=position_ids, halt_threshold=halt_threshold,
                         min_steps=min_steps, exit_mask=exit_mask, last_only=logits_to_keep == 1 and labels is None,
                         **tables)
        logits = out.logits
        loss = None if labels is None else shifted_lm_loss(logits, labels, num_items_in_batch)
        if logits_to_keep > 1:
            logits = logits[:, -logits_to_keep:]
        result = LoopLMCausalLMOutput(loss=loss, logits=logits, cache=cache, past_key_values=cache,
                                      exit_steps=out.exit_steps)
        return result if return_dict is not False else result.to_tuple()

    def _check_unsupported(self, input_ids, inputs_embeds, output_attentions, output_hidden_states, kwargs):
        if inputs_embeds is not None or input_ids is None:
            raise ValueError("LoopLMForCausalLM.forward takes input_ids (inputs_embeds are not supported)")
        if output_attentions or output_hidden_states:
            raise ValueError("LoopLMForCausalLM.forward does not return attention maps or per-layer hidden states")
        unknown = sorted(k for k in kwargs if k not in _UNUSED_KWARGS)
        if unknown:
            raise TypeError(f"LoopLMForCausalLM.forward got unexpected argument(s): {', '.join(unknown)}")

    def _cache_for(self, cache, use_cache: bool, B: int, T: int, steps: int) -> LoopLMCache | None:
        if isinstance(cache, LoopLMCache):
            return cache
        if cache is not None and cache.get_seq_length() > 0:
            raise TypeError(f"LoopLMForCausalLM needs a LoopLMCache (the looplm KV layout), got a filled "
                            f"{type(cache).__name__}")
        if not use_cache:
            return None
        return LoopLMCache(self.model, B, T + _CACHE_SLACK, steps)

    def _positions(self, attention_mask, position_ids, B, T, past, device):
        """(position ids [B, T], mask of the T new tokens or None). transformers' mask covers past + new."""
        new_mask = None
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape != (B, past + T):
                raise ValueError(f"LoopLMForCausalLM: attention_mask of shape {tuple(attention_mask.shape)}; expected "
                                 f"[batch, past + new tokens] = [{B}, {past + T}] (a 2-D mask of real tokens)")
            mask = attention_mask.to(torch.bool)
            new_mask = mask[:, past:]
            if position_ids is None:
                position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=device).expand(B, T)
        elif position_ids.shape[-1] != T:
            position_ids = position_ids[..., -T:]
        return position_ids, new_mask

    # ------------------------------------------------------------------ generation
    def generate(self, inputs: torch.LongTensor | None = None, **kwargs):
        """transformers' `generate`, telling every forward where the prompt ends (module docstring)."""
        ids = inputs if inputs is not None else kwargs.get("input_ids")
        if ids is not None and "prompt_len" not in kwargs:
            kwargs["prompt_len"] = int(ids.shape[1])
        return super().generate(inputs, **kwargs)

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, cache: Cache | None = None,
                                      past_key_values: Cache | None = None,
                                      attention_mask: torch.Tensor | None = None, use_cache: bool = True, **kwargs):
        """The tokens the cache has not seen, with the full attention mask; generation options pass through."""
        cache = cache if cache is not None else past_key_values
        past = cache.get_seq_length() if cache is not None else 0
        inputs = {"input_ids": input_ids[:, past:], "attention_mask": attention_mask, "cache": cache,
                  "use_cache": use_cache}
        for k, v in kwargs.items():
            if k not in _UNUSED_KWARGS and k not in inputs:
                inputs[k] = v
        return inputs


def shifted_lm_loss(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | None = None) -> torch.Tensor:
    """Cross-entropy of labels[:, 1:] under logits[:, :-1] (float32), ignoring IGNORE_INDEX: the mean over
    counted tokens, or their sum / num_items_in_batch (gradient accumulation in the Trainer)."""
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels of shape {tuple(labels.shape)} do not match the logits' [batch, seq] = "
                         f"{list(logits.shape[:2])}")
    pred = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    target = labels[:, 1:].reshape(-1).to(pred.device)
    if num_items_in_batch is None:
        return F.cross_entropy(pred, target, ignore_index=IGNORE_INDEX)
    return F.cross_entropy(pred, target, ignore_index=IGNORE_INDEX, reduction="sum") / num_items_in_batch
