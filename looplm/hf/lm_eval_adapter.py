"""The lm-evaluation-harness model `looplm`: a checkpoint scored by lm-eval's tasks.

    python -m looplm.hf.lm_eval_cli --model looplm --model_args ckpt=DIR,steps=8,adaptive=true --tasks gsm8k
    # or, in Python: import looplm.hf.lm_eval_adapter; lm_eval.simple_evaluate(model="looplm", ...)

Importing this module registers the class under the name `looplm` (lm-eval finds models only in
its registry, so `lm_eval` itself cannot see it: `looplm.hf.lm_eval_cli` is lm-eval's own command line
with this module imported first).

Model arguments (`--model_args`):
    ckpt=DIR            looplm checkpoint (loaded with `load_checkpoint`: sha256 verified)
    steps=R             recurrence steps per token (default: the config's recurrence)
    adaptive=true       AdaExit with the threshold calibrated by `looplm calibrate-halt` (from meta.json)
    halt_threshold=X, min_steps=M   AdaExit with an explicit threshold (instead of adaptive)
    seed=S              for sampled generation (default 1234)
and lm-eval's own options: --batch_size N (requests per forward / per generate call; 8 from Python,
lm-eval's CLI default is 1), --device cpu|cuda (the CLI default is cuda:0; an error if CUDA is absent).

Requests:
- `loglikelihood` / `loglikelihood_rolling`: one forward per batch of token sequences, right-padded
  (causal attention: padding after a token never reaches it), log-softmax summed over the
  continuation; `is_greedy` = every continuation token is the argmax. A sequence longer than the
  context keeps its last max_seq_len tokens (lm-eval's convention), with a warning counting them.
  Rolling windows come from lm-eval's `get_rolling_token_windows` (EOS as the prefix token).
- `generate_until`: requests with equal generation arguments go together, `batch_size` at a time, to
  `looplm.generate.generate` (cached, batched, left-padded decoding; EOS stops a row); the text is cut
  at the first `until` string. Rows run to `max_gen_toks` (or EOS): stop strings are applied after
  decoding, not during it. A context longer than max_seq_len - max_gen_toks keeps its last tokens
  (warned). Greedy unless `do_sample` (temperature, top_k, top_p honoured).
- `apply_chat_template` renders the checkpoint's own chat template (tokenizer_config.json) with
  transformers' tokenizer.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

log = logging.getLogger(__name__)

GEN_KEYS = ("until", "max_gen_toks", "max_new_tokens", "do_sample", "temperature", "top_k", "top_p")
DEFAULT_MAX_GEN_TOKS = 256


@register_model("looplm")
class LoopLMEval(TemplateLM):
    def __init__(self, ckpt: str, steps: int | None = None, adaptive: bool = False,
                 halt_threshold: float | None = None, min_steps: int | None = None, batch_size: int | str = 8,
                 device: str = "cpu", seed: int = 1234, max_batch_size: int | None = None, **unknown: Any):
        super().__init__()
        if unknown:
            raise ValueError(f"looplm model: unknown model_args {', '.join(sorted(unknown))} (valid: ckpt, steps, "
                             "adaptive, halt_threshold, min_steps, batch_size, device, seed)")
        from looplm.checkpoint import load_checkpoint

        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"looplm model: device {device!r} (lm-eval's default --device is cuda:0) but CUDA is not "
                             "available: pass --device cpu")
        self.ckpt = str(ckpt)
        self.model, self.tok, meta = load_checkpoint(self.ckpt, map_location=device)
        cfg = self.model.config
        self.steps = cfg.recurrence if steps is None else _int("steps", steps)
        if adaptive and halt_threshold is not None:
            raise ValueError("looplm model: give adaptive=true (the calibrated threshold) or halt_threshold=X, not both")
        if adaptive:
            if meta.get("halt_threshold") is None:
                raise ValueError(f"looplm model: adaptive=true but {self.ckpt} has no calibrated halt threshold "
                                 "(run looplm calibrate-halt, or pass halt_threshold=X)")
            halt_threshold = float(meta["halt_threshold"])
            min_steps = int(meta.get("halt_min_steps", 1)) if min_steps is None else min_steps
        self.halt_threshold = None if halt_threshold is None else float(halt_threshold)
        self.min_steps = 1 if min_steps is None else _int("min_steps", min_steps)
        if isinstance(batch_size, str) and not batch_size.isdigit():
            raise ValueError(f"looplm model: batch_size={batch_size!r} must be an integer ('auto' is not supported)")
        self.batch_size = _int("batch_size", int(batch_size))
        self.seed = seed
        self._device = torch.device(device)
        self._hf_tokenizer = None
        if not self.steps <= cfg.max_steps:
            raise ValueError(f"looplm model: steps={self.steps} exceeds the model's max_steps={cfg.max_steps}")
        if self.halt_threshold is not None and not 0 < self.halt_threshold <= 1:
            raise ValueError(f"looplm model: halt_threshold={self.halt_threshold} must be in (0, 1]")

    # ------------------------------------------------------------------ TemplateLM plumbing
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def max_length(self) -> int:
        return self.model.config.max_seq_len

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return f"looplm:{self.ckpt}:{self.tok.sha256()}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tok.encode(string)

    def tok_decode(self, tokens: list[int], **kwargs) -> str:
        return self.tok.decode(tokens)

    # ------------------------------------------------------------------ loglikelihood
    @torch.inference_mode()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: (cache key, context ids, continuation ids); one forward per batch."""
        rows = []
        cut = 0
        for i, (_, ctx, cont) in enumerate(requests):
            if not cont:
                raise ValueError(f"looplm model: request {i} has an empty continuation")
            if len(cont) > self.max_length:
                raise ValueError(f"looplm model: request {i}: a continuation of {len(cont)} tokens exceeds the "
                                 f"context max_seq_len={self.max_length}")
            full = (ctx + cont)[-(self.max_length + 1):]
            cut += len(ctx) + len(cont) > self.max_length + 1
            rows.append((full[:-1], full[-len(cont):]))
        if cut:
            log.warning("looplm model: %d request(s) longer than max_seq_len=%d kept their last tokens", cut,
                        self.max_length)
        results: list[tuple[float, bool] | None] = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            width = len(rows[batch[0]][0])
            ids = torch.full((len(batch), width), self.tok.pad_id, dtype=torch.long)
            for j, i in enumerate(batch):
                ids[j, :len(rows[i][0])] = torch.tensor(rows[i][0])
            logp = self._forward(ids.to(self._device)).log_softmax(-1)
            for j, i in enumerate(batch):
                inp, cont = rows[i]
                span = logp[j, len(inp) - len(cont):len(inp)]  # [len(cont), V]: the positions predicting cont
                target = torch.tensor(cont, device=span.device)
                ll = float(span.gather(-1, target[:, None]).sum())
                greedy = bool((span.argmax(-1) == target).all())
                results[i] = (ll, greedy)
                key = requests[i][0]
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, (ll, greedy))
        return results  # type: ignore[return-value]

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.model(ids, self.steps, halt_threshold=self.halt_threshold, min_steps=self.min_steps)
        return out.logits.float()

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for r, (string,) in enumerate(req.args for req in requests):
            for ctx, cont in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(r)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for r, (ll, _) in zip(owner, scores):
            totals[r] += ll
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from looplm.generate import GenerationConfig, generate

        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        out: list[str | None] = [None] * len(requests)
        for key, idx in groups.items():
            until, cfg = self._gen_config(requests[idx[0]].args[1], GenerationConfig)
            keep = self.max_length - cfg.max_new_tokens
            prompts, cut = {}, 0
            for i in idx:
                ids = self.tok_encode(requests[i].args[0]) or [self.prefix_token_id]
                cut += len(ids) > keep
                prompts[i] = ids[-keep:]
            if cut:
                log.warning("looplm model: %d prompt(s) longer than max_seq_len - max_gen_toks = %d kept their last "
                            "tokens", cut, keep)
            order = sorted(idx, key=lambda i: -len(prompts[i]))
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                res = generate(self.model, [prompts[i] for i in batch], cfg)
                for i, toks in zip(batch, res.tokens):
                    if toks and toks[-1] == self.eot_token_id:
                        toks = toks[:-1]
                    text = _cut(self.tok_decode(toks), until)
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out  # type: ignore[return-value]

    def _gen_config(self, gen_kwargs: dict, GenerationConfig):
        if not isinstance(gen_kwargs, dict):
            raise ValueError(f"looplm model: generation kwargs must be a dict, got {gen_kwargs!r}")
        unknown = sorted(set(gen_kwargs) - set(GEN_KEYS))
        if unknown:
            raise ValueError(f"looplm model: unsupported generation kwargs {', '.join(unknown)} "
                             f"(supported: {', '.join(GEN_KEYS)})")
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(gen_kwargs.get("max_gen_toks", gen_kwargs.get("max_new_tokens", DEFAULT_MAX_GEN_TOKS)))
        if not 1 <= max_new < self.max_length:
            raise ValueError(f"looplm model: max_gen_toks={max_new} must be in [1, max_seq_len={self.max_length})")
        sample = bool(gen_kwargs.get("do_sample", False))
        temperature = float(gen_kwargs.get("temperature", 1.0 if sample else 0.0)) if sample else 0.0
        cfg = GenerationConfig(max_new_tokens=max_new, steps=self.steps, temperature=temperature,
                               top_k=int(gen_kwargs.get("top_k", 0) or 0), top_p=float(gen_kwargs.get("top_p", 1.0)),
                               stop_tokens=(self.eot_token_id,), halt_threshold=self.halt_threshold,
                               min_steps=self.min_steps, seed=self.seed if sample else None, pad_id=self.tok.pad_id)
        return until, cfg

    # ------------------------------------------------------------------ chat
    def _transformers_tokenizer(self):
        """transformers' tokenizer of the checkpoint (tokenizer.json + tokenizer_config.json, chat template)."""
        if self._hf_tokenizer is None:
            from transformers import AutoTokenizer

            self._hf_tokenizer = AutoTokenizer.from_pretrained(self.ckpt)
        return self._hf_tokenizer

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self._transformers_tokenizer().chat_template if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self._transformers_tokenizer().apply_chat_template(chat_history, tokenize=False,
                                                                 add_generation_prompt=add_generation_prompt)


def _cut(text: str, until: list[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    end = min((p for p in (text.find(s) for s in until if s) if p >= 0), default=len(text))
    return text[:end]


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"looplm model: {name}={value!r} must be an integer >= 1")
    return value
