"""Generation: KV-cached batched decoding, sampling, adaptive exit and lossless speculative decoding.

`generate(model, prompts, cfg)` takes token-id prompts of unequal lengths, left-pads them (explicit
position ids and a padding mask, so every row decodes exactly as it would alone), prefills the cache
in one pass and then decodes one token per row per forward. Options:

- sampling: greedy (`temperature=0`), temperature, top-k, top-p, seeded;
- stop tokens: a row stops after emitting one (the stop token is included in its output);
- `use_cache=False`: re-runs the whole sequence for every token (the reference for tests/benchmarks);
- adaptive exit (`halt_threshold`, `min_steps`): each generated token leaves the core at its own step;
  the prompt runs at full depth unless `adaptive_prefill=True` (its states are the context of every
  later token: early-exited prompt states cost more agreement than they save at decode). The exit step
  of the position that produced every new token is returned (the first comes from the prompt's last
  position);
- `compile=True` (fixed depth, cached): every decode forward runs as one `torch.compile`d graph
  (`looplm/compiled_decode.py`; the first call of a new shape compiles);
- `speculative=True` (greedy only): the model's next token plus K draft tokens from the speculative
  heads are verified in one forward pass; the longest prefix equal to the model's own greedy choice is
  kept, the cache is rolled back past the rest, and the model's token at the first mismatch becomes
  the next certain token. Output equals plain greedy token for token. Sequences are decoded one at a
  time in this mode (ragged acceptance would otherwise desynchronise the shared cache length).

Finished rows leave the batch (their cache rows are dropped) once they are an eighth of it; until
then they are fed a pad token and their outputs are cut at the stop token. Sampling draws from one
generator for the whole batch, so a seeded sampled row depends on its batch companions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from looplm.compiled_decode import decode_compiled
from looplm.model import RecursiveCausalLM


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    steps: int | None = None  # recurrence steps per token; None = model.config.recurrence
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    stop_tokens: tuple[int, ...] = ()
    use_cache: bool = True
    speculative: bool = False
    halt_threshold: float | None = None  # None = fixed depth
    min_steps: int = 1
    adaptive_prefill: bool = False  # with halt_threshold: let prompt tokens exit early too
    seed: int | None = None
    pad_id: int = 0
    compile: bool = False  # torch.compile the decode step (fixed depth; see looplm/compiled_decode.py)

    def validate(self, model: RecursiveCausalLM) -> None:
        cfg = model.config
        if self.max_new_tokens < 0:
            raise ValueError(f"GenerationConfig.max_new_tokens={self.max_new_tokens} must be >= 0")
        if self.steps is not None and not 1 <= self.steps <= cfg.max_steps:
            raise ValueError(f"GenerationConfig.steps={self.steps} must be in [1, max_steps={cfg.max_steps}]")
        if self.temperature < 0:
            raise ValueError(f"GenerationConfig.temperature={self.temperature} must be >= 0")
        if self.top_k < 0:
            raise ValueError(f"GenerationConfig.top_k={self.top_k} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"GenerationConfig.top_p={self.top_p} must be in (0, 1]")
        if self.halt_threshold is not None and not 0 < self.halt_threshold <= 1:
            raise ValueError(f"GenerationConfig.halt_threshold={self.halt_threshold} must be in (0, 1]")
        if self.min_steps < 1:
            raise ValueError(f"GenerationConfig.min_steps={self.min_steps} must be >= 1")
        if self.speculative and self.temperature > 0:
            raise ValueError("GenerationConfig.speculative=True is lossless for greedy decoding only: set temperature=0")
        if self.speculative and cfg.n_spec_heads == 0:
            raise ValueError("GenerationConfig.speculative=True needs a model with n_spec_heads > 0")
        if self.speculative and not self.use_cache:
            raise ValueError("GenerationConfig.speculative=True needs use_cache=True")
        if self.compile and (self.speculative or self.halt_threshold is not None or not self.use_cache):
            raise ValueError("GenerationConfig.compile=True decodes at a fixed depth with the cache: it excludes "
                             "speculative=True, halt_threshold and use_cache=False")


@dataclass
class GenerationOutput:
    tokens: list[list[int]]  # new tokens per prompt (a stop token, if hit, is the last one)
    exit_steps: list[list[int]]  # per new token: core steps run at the position that produced it
    accept_counts: list[list[int]] = field(default_factory=list)  # per verify pass: tokens emitted
    finished: list[bool] = field(default_factory=list)  # True if the row stopped on a stop token
    forward_passes: int = 0
    seconds: float = 0.0

    @property
    def new_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)


def sample(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, gen: torch.Generator | None):
    """logits [B, V] -> token ids [B]. Greedy when temperature == 0."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix with mass >= top_p
        logits = logits.scatter(-1, idx, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(-1)


def _check_prompts(model, prompts, cfg) -> None:
    if not prompts:
        raise ValueError("generate: no prompts given")
    limit = model.config.max_seq_len
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"generate: prompt {i} is empty")
        need = len(p) + cfg.max_new_tokens + (model.config.n_spec_heads + 1 if cfg.speculative else 0)
        if need > limit:
            raise ValueError(f"generate: prompt {i} has {len(p)} tokens; with max_new_tokens={cfg.max_new_tokens} "
                             f"it needs {need} positions but the model context is max_seq_len={limit}")


def _left_pad(prompts, pad_id, device):
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(len(prompts), L, dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, L - len(p):] = True
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


@torch.inference_mode()  # like no_grad, with less per-op bookkeeping (decoding is dispatch-bound)
def generate(model: RecursiveCausalLM, prompts: list[list[int]], cfg: GenerationConfig,
             on_tokens: Callable[[int, list[int]], None] | None = None) -> GenerationOutput:
    """Decode every prompt; `on_tokens(row, new_ids)` (optional) is called as tokens are accepted (streaming)."""
    cfg.validate(model)
    _check_prompts(model, prompts, cfg)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        if cfg.speculative:
            outs = [_speculative_one(model, p, cfg, _row(on_tokens, i)) for i, p in enumerate(prompts)]
            out = GenerationOutput(tokens=[o.tokens[0] for o in outs], exit_steps=[o.exit_steps[0] for o in outs],
                                   accept_counts=[o.accept_counts[0] for o in outs],
                                   finished=[o.finished[0] for o in outs],
                                   forward_passes=sum(o.forward_passes for o in outs))
        else:
            out = _decode(model, prompts, cfg, on_tokens)
    finally:
        model.train(was_training)
    out.seconds = time.perf_counter() - t0
    return out


def _forward(model, ids, cfg, steps, prompt_len: int = 0, **kw):
    """One forward under the config's exit rule. The first `prompt_len` columns of ids are prompt: at full
    depth unless `cfg.adaptive_prefill` (a prefill passes prompt_len = its width)."""
    if cfg.halt_threshold is None or cfg.adaptive_prefill or prompt_len == 0:
        return model(ids, steps, halt_threshold=cfg.halt_threshold, min_steps=cfg.min_steps, **kw)
    if prompt_len >= ids.shape[1]:
        return model(ids, steps, **kw)
    exit_mask = (torch.arange(ids.shape[1], device=ids.device) >= prompt_len).expand(ids.shape[0], -1)
    return model(ids, steps, halt_threshold=cfg.halt_threshold, min_steps=cfg.min_steps, exit_mask=exit_mask, **kw)


def _with_table(model, steps: int) -> dict:
    """The step table and the transposed outer weights, computed once per generate call (the weights
    cannot change during it)."""
    return {"step_table": model.core.step_table(steps), "weights_t": model.transposed_weights()}


def _exit_of(out, steps, col=-1) -> torch.Tensor:
    if out.exit_steps is None:
        return torch.full((out.logits.shape[0],), steps, dtype=torch.long)
    return out.exit_steps[:, col]


def _row(on_tokens, i):
    return None if on_tokens is None else (lambda row, ids: on_tokens(i, ids))


def _worth_dropping(done: list[bool]) -> bool:
    """Drop finished rows once they are at least an eighth of the batch (each drop copies the cache)."""
    n_done = sum(done)
    return n_done > 0 and 8 * n_done >= len(done)


def _decode(model, prompts, cfg, on_tokens=None) -> GenerationOutput:
    """Prefill, then one token per row per forward; per-token bookkeeping in Python lists (one tensor
    read per token), since single-token decoding is dispatch-bound."""
    device = model.embed.weight.device
    steps = cfg.steps or model.config.recurrence
    B = len(prompts)
    gen = torch.Generator(device=device).manual_seed(cfg.seed) if cfg.seed is not None else None
    ids, mask, pos = _left_pad(prompts, cfg.pad_id, device)
    stop_set = set(cfg.stop_tokens)
    tokens: list[list[int]] = [[] for _ in range(B)]
    exits: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    passes = 0
    tbl = _with_table(model, steps)
    if cfg.compile:
        tokens, passes = decode_compiled(model, ids, mask, pos, cfg, steps, tbl, sample, gen, on_tokens)
        return GenerationOutput(tokens=tokens, exit_steps=[[steps] * len(t) for t in tokens],
                                finished=[bool(t) and t[-1] in stop_set for t in tokens], forward_passes=passes)
    if cfg.use_cache:
        cache = model.new_cache(B, ids.shape[1] + cfg.max_new_tokens, steps)
        out = _forward(model, ids, cfg, steps, ids.shape[1], cache=cache, attention_mask=mask, position_ids=pos,
                       last_only=True, **tbl)
    else:  # the reference: the whole sequence again for every token (only the last position's logits)
        out = _forward(model, ids, cfg, steps, ids.shape[1], attention_mask=mask, position_ids=pos, last_only=True,
                       **tbl)
    prompt_len = ids.shape[1]
    passes += 1
    pos = pos[:, -1:]  # [b, 1] position of each row's last token
    rows = list(range(B))  # the prompt index of each row still in the batch
    for step in range(cfg.max_new_tokens):
        nxt = sample(out.logits[:, -1], cfg.temperature, cfg.top_k, cfg.top_p, gen).tolist()  # b ids
        ex = [steps] * len(rows) if out.exit_steps is None else out.exit_steps[:, -1].tolist()
        for j, i in enumerate(rows):
            if not done[j]:
                tokens[i].append(nxt[j])
                exits[i].append(ex[j])
                if on_tokens is not None:
                    on_tokens(i, [nxt[j]])
                done[j] = nxt[j] in stop_set
        if all(done) or step == cfg.max_new_tokens - 1:
            break
        if _worth_dropping(done):  # finished rows leave the batch: later forwards are smaller
            live = [j for j, d in enumerate(done) if not d]
            keep = torch.tensor(live, device=device)
            rows, nxt, done = [rows[j] for j in live], [nxt[j] for j in live], [False] * len(live)
            pos = pos[keep]
            if cfg.use_cache:
                cache.keep_rows(keep)
            else:
                ids, mask = ids[keep], mask[keep]
        feed = torch.tensor([[cfg.pad_id if d else t] for t, d in zip(nxt, done)], device=device)  # [b, 1]
        pos = pos + 1
        if cfg.use_cache:
            out = _forward(model, feed, cfg, steps, cache=cache, position_ids=pos, **tbl)
        else:
            ids = torch.cat([ids, feed], dim=1)
            mask = torch.cat([mask, torch.ones_like(feed, dtype=torch.bool)], dim=1)
            full_pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
            out = _forward(model, ids, cfg, steps, prompt_len, attention_mask=mask, position_ids=full_pos,
                           last_only=True, **tbl)
        passes += 1
    finished = [bool(t) and t[-1] in stop_set for t in tokens]
    return GenerationOutput(tokens=tokens, exit_steps=exits, finished=finished, forward_passes=passes)


def _speculative_one(model, prompt, cfg, on_tokens=None) -> GenerationOutput:
    device = model.embed.weight.device
    steps = cfg.steps or model.config.recurrence
    K = model.config.n_spec_heads
    stop_set = set(cfg.stop_tokens)
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    cache = model.new_cache(1, len(prompt) + cfg.max_new_tokens + K + 1, steps)
    tbl = _with_table(model, steps)
    out = _forward(model, ids, cfg, steps, len(prompt), cache=cache, last_only=True, **tbl)
    passes = 1
    nxt, nxt_exit = int(out.logits[0, -1].argmax()), int(_exit_of(out, steps)[0])
    drafts = model.spec_logits(out.hidden[0, -1], tbl["weights_t"]).argmax(-1).tolist()  # [K]
    tokens, exits, accepts = [], [], []
    while len(tokens) < cfg.max_new_tokens:
        tokens.append(nxt)
        exits.append(nxt_exit)
        if on_tokens is not None:
            on_tokens(0, [nxt])
        if nxt in stop_set or len(tokens) >= cfg.max_new_tokens:
            accepts.append(1)
            break
        n_draft = min(K, cfg.max_new_tokens - len(tokens))
        cand = [nxt] + drafts[:n_draft]
        start = cache.pos
        out = _forward(model, torch.tensor([cand], device=device), cfg, steps, cache=cache, **tbl)
        passes += 1
        preds = out.logits[0].argmax(-1).tolist()  # preds[i]: the model's token after cand[i]
        ex = _exit_of(out, steps, col=slice(None))[0].tolist() if out.exit_steps is not None else [steps] * len(cand)
        j = 0
        stopped = False
        while j < n_draft and cand[j + 1] == preds[j]:
            tokens.append(cand[j + 1])
            exits.append(ex[j])
            if on_tokens is not None:
                on_tokens(0, [cand[j + 1]])
            j += 1
            if cand[j] in stop_set or len(tokens) >= cfg.max_new_tokens:
                stopped = True
                break
        accepts.append(1 + j)
        if stopped:
            break
        cache.truncate(start + 1 + j)  # keep nxt and the j accepted drafts
        nxt, nxt_exit = preds[j], ex[j]
        drafts = model.spec_logits(out.hidden[0, j], tbl["weights_t"]).argmax(-1).tolist()
    finished = bool(tokens) and tokens[-1] in stop_set
    return GenerationOutput(tokens=[tokens], exit_steps=[exits], accept_counts=[accepts], finished=[finished],
                            forward_passes=passes)
