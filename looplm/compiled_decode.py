"""Compiled fixed-depth decoding: one `torch.compile`d graph per (batch, steps, dtype, model), any length.

Eager single-token decoding is dispatch-bound: about 1,500 aten ops per forward at R = 8, a few
microseconds each, while the matmul work of a small batch is far less. `decode_compiled` keeps the
eager prefill and replaces every decode forward by `RecursiveCausalLM.decode_step` under
`torch.compile(fullgraph=True, dynamic=False)`, which inductor fuses into a few hundred kernels and
matmul calls. One graph serves every position and every prompt length:

- the cache length is the one dynamic dimension (`torch._dynamo.mark_dynamic`; the cache is allocated
  at the prompt plus the new tokens rounded up to a multiple of `LENGTH_BUCKET`, so never below it);
- the new token's keys and latents are written at a position given as a tensor (`index_copy_`), and
  attention reads the whole cache under a bool mask of the positions written so far (`cache.valid`);
- finished rows are fed the pad token (their output cut at the stop token); once half the batch or more
  has finished, the batch continues at the next power of two that holds the live rows (one more graph
  per bucket: 8 -> 4 -> 2 -> 1), where eager decoding drops rows at every eighth.

Output: the same token ids as eager `generate` for greedy decoding (up to float reassociation in the
fused kernels, see the tests); for seeded sampling the same draws as eager as long as no row finishes
before the last one (eager decoding drops finished rows, which changes the draws of the others).
Fixed depth only: no adaptive exit, no speculative decoding (their control flow is per token).

Measured by `benchmarks/bench_compiled_decode.py` (the latest figures: its record in
`benchmarks/results/`, shown in `benchmarks/RESULTS.md`): faster than eager at every batch size, by
the most at batch 1 and by the least at batch 32, where the matmuls dominate either way.

Costs: it is opt-in (`generate(..., GenerationConfig(compile=True))`, `looplm grpo
--compile-rollouts`). Each batch bucket compiles once per process and model instance, about 60-90 s
for `tiny` on this 2-core CPU (inductor's on-disk cache makes a later process's first call a few
seconds). So it pays for long runs with a steady batch (GRPO), not for a one-off evaluation. On a CPU,
inductor needs a C++ compiler (g++ or $CXX). Weights are graph inputs, so an optimizer step between
calls needs no recompile. Dynamo's compile cache is per code object, so many batch sizes or model
instances in one process raise its recompile limit (`RECOMPILE_LIMIT`, applied during decoding); past
it decoding raises instead of silently running eager.
"""

from __future__ import annotations

import torch

LENGTH_BUCKET = 32  # cache lengths are multiples of this: never 0 or 1, sizes dynamo would specialise on
RECOMPILE_LIMIT = 64  # distinct (model instance, batch, steps, dtype) graphs per process

_compiled = {}  # device type -> the torch.compile wrapper of RecursiveCausalLM.decode_step (one per process)


def bucketed_length(need: int, limit: int) -> int:
    """Cache length for `need` positions: rounded up to a multiple of LENGTH_BUCKET, at most `limit`."""
    return min(limit, -(-need // LENGTH_BUCKET) * LENGTH_BUCKET)


def compiled_step(device_type: str = "cpu"):
    """The shared compiled decode step (`RecursiveCausalLM.decode_step` as a plain function of the model).
    On a CPU, inductor's C++ wrapper calls the kernels instead of generated Python: about 1.5x faster
    per step at batch 1 and 1.15x at batch 8 (a few hundred kernel and matmul calls per step)."""
    if device_type not in _compiled:
        from looplm.model.recursive import RecursiveCausalLM

        options = {"cpp_wrapper": True} if device_type == "cpu" else None
        _compiled[device_type] = torch.compile(RecursiveCausalLM.decode_step, fullgraph=True, dynamic=False,
                                               options=options)
    return _compiled[device_type]


def batch_bucket(live: int) -> int:
    """The batch a decode continues with when `live` rows are unfinished: the next power of two."""
    return 1 << max(0, live - 1).bit_length()


def _length_dynamic(cache) -> None:
    """Mark the cache length as a dynamic dimension of every cache buffer: one graph serves every length."""
    for k, v in cache.prelude + cache.coda:  # [B, Hkv, L, hd]
        torch._dynamo.mark_dynamic(k, 2)
        torch._dynamo.mark_dynamic(v, 2)
    for c in cache.core:  # anchored [B, L, E], per-step [B, S, L, E]
        torch._dynamo.mark_dynamic(c, c.dim() - 2)
    torch._dynamo.mark_dynamic(cache.valid, 1)  # [B, L]


def decode_compiled(model, ids, mask, pos, cfg, steps, tbl, sample_fn, gen, on_tokens=None):
    """Prefill left-padded ids [B, P] (mask, positions pos [B, P]) eagerly, then decode up to
    cfg.max_new_tokens tokens per row with the compiled step. Returns (tokens, passes): the new ids per
    prompt (a stop token, if hit, is the last one) and the number of forward passes."""
    device = ids.device
    B, P = ids.shape
    L = bucketed_length(P + cfg.max_new_tokens, model.config.max_seq_len)
    cache = model.new_cache(B, L, steps)
    out = model(ids, steps, cache=cache, attention_mask=mask, position_ids=pos, last_only=True, **tbl)
    logits, passes = out.logits[:, -1], 1
    _length_dynamic(cache)
    pos = pos[:, -1:]  # [b, 1] position of each row's last token
    stop_set = set(cfg.stop_tokens)
    tokens: list[list[int]] = [[] for _ in range(B)]
    rows = list(range(B))  # the prompt index of each batch row
    done = [False] * B
    step_fn = compiled_step(device.type)
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True):
        for i in range(cfg.max_new_tokens):
            nxt = sample_fn(logits, cfg.temperature, cfg.top_k, cfg.top_p, gen).tolist()  # b ids
            for j, r in enumerate(rows):
                if not done[j]:
                    tokens[r].append(nxt[j])
                    if on_tokens is not None:
                        on_tokens(r, [nxt[j]])
                    done[j] = nxt[j] in stop_set
            if all(done) or i == cfg.max_new_tokens - 1:
                break
            live = [j for j, d in enumerate(done) if not d]
            if batch_bucket(len(live)) < len(rows):  # half the batch or more finished: continue with a
                # power-of-two batch (live rows, topped up with finished ones), one graph per bucket
                keep = live + [j for j, d in enumerate(done) if d][: batch_bucket(len(live)) - len(live)]
                idx = torch.tensor(keep, device=device)
                cache.keep_rows(idx)
                _length_dynamic(cache)
                rows, nxt, done, pos = [rows[j] for j in keep], [nxt[j] for j in keep], [done[j] for j in keep], pos[idx]
            b = len(rows)
            feed = torch.tensor([[cfg.pad_id if d else t] for t, d in zip(nxt, done)], device=device)  # [b, 1]
            write = torch.tensor([cache.pos], device=device)
            cache.valid[:, cache.pos] = True
            pos = pos + 1
            visible = cache.valid.view(b, 1, 1, L)  # the attention mask
            torch._dynamo.mark_dynamic(visible, 3)
            logits = step_fn(model, feed, pos, write, visible, cache, steps, tbl["step_table"], tbl["weights_t"])[:, -1]
            cache.pos += 1
            passes += 1
    return tokens, passes
