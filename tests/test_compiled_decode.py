"""Compiled decoding (`GenerationConfig(compile=True)`) against eager decoding, and the static-shape
decode step it compiles against the plain forward."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from looplm.compiled_decode import LENGTH_BUCKET, bucketed_length
from looplm.generate import GenerationConfig, generate
from looplm.model import RecursiveCausalLM

PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [1, 2, 3, 4, 5, 6, 7, 8, 9], [42, 43]]  # left-padded in a batch


def make(micro_config, mode="anchored", seed=0):
    torch.manual_seed(seed)
    m = RecursiveCausalLM(dataclasses.replace(micro_config, core_kv=mode)).double()
    with torch.no_grad():  # make the step- and input-conditioned modulation matter
        for n, p in m.named_parameters():
            if any(k in n for k in ("g_step", "gate_proj")):
                p.normal_(std=0.3)
        m.embed.weight.normal_(std=1.0)  # sharp output distributions: greedy choices far from ties
    return m.eval()


@pytest.mark.parametrize("mode", ["anchored", "per_step"])
def test_decode_step_equals_forward(micro_config, mode):
    """The static-shape step (writes at a tensor position, reads the whole cache under a mask) gives the
    logits of the plain forward over the whole sequence, token after token, with padded prompts."""
    m = make(micro_config, mode)
    steps = 3
    from looplm.generate import _left_pad

    ids, mask, pos = _left_pad(PROMPTS, 0, None)
    B, P = ids.shape
    L = 32
    cache = m.new_cache(B, L, m.config.max_steps)
    tbl = {"step_table": m.core.step_table(steps), "weights_t": m.transposed_weights()}
    with torch.no_grad():
        m(ids, steps, cache=cache, attention_mask=mask, position_ids=pos, **tbl)
        seq, seq_mask = ids, mask
        for i in range(5):
            new = torch.tensor([[7 + i + r] for r in range(B)])
            p = pos[:, -1:] + 1 + i
            cache.valid[:, cache.pos] = True
            got = m.decode_step(new, p, torch.tensor([cache.pos]), cache.valid.view(B, 1, 1, L), cache, steps,
                                **tbl)
            cache.pos += 1
            seq, seq_mask = torch.cat([seq, new], 1), torch.cat([seq_mask, torch.ones_like(new, dtype=torch.bool)], 1)
            full_pos = (seq_mask.long().cumsum(-1) - 1).clamp(min=0)
            want = m(seq, steps, attention_mask=seq_mask, position_ids=full_pos).logits[:, -1:]
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_bucketed_length():
    assert bucketed_length(1, 512) == LENGTH_BUCKET
    assert bucketed_length(LENGTH_BUCKET, 512) == LENGTH_BUCKET
    assert bucketed_length(LENGTH_BUCKET + 1, 512) == 2 * LENGTH_BUCKET
    assert bucketed_length(500, 512) == 512  # capped at the context


def test_compile_refuses_what_it_cannot_do(micro_config):
    m = make(micro_config)
    for bad in (dict(speculative=True), dict(halt_threshold=0.5), dict(use_cache=False)):
        with pytest.raises(ValueError, match="compile=True"):
            GenerationConfig(compile=True, **bad).validate(m)


@pytest.mark.parametrize("mode", ["anchored", "per_step"])
def test_compiled_generate_equals_eager(micro_config, mode, cpp_compiler):
    """Greedy with stop tokens (rows finish at different times: eager drops them, compiled keeps them),
    seeded sampling without stops, and again after an in-place weight update (weights are graph inputs,
    so the compiled graph must see the new values)."""
    m = make(micro_config, mode)
    stop = (11,)

    def both(**kw):
        return [generate(m, PROMPTS, GenerationConfig(max_new_tokens=12, steps=3, compile=c, **kw)) for c in (False, True)]

    eager, comp = both(stop_tokens=stop)
    assert comp.tokens == eager.tokens and comp.finished == eager.finished
    assert comp.exit_steps == [[3] * len(t) for t in comp.tokens]
    eager_s, comp_s = both(temperature=1.0, seed=5)
    assert comp_s.tokens == eager_s.tokens
    with torch.no_grad():  # an optimizer-like in-place update between calls
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    eager2, comp2 = both()
    assert comp2.tokens == eager2.tokens
    assert comp2.tokens != comp.tokens or eager2.tokens != eager.tokens  # the update changed the output


def test_batch_buckets():
    from looplm.compiled_decode import batch_bucket

    assert [batch_bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 16, 17)] == [1, 2, 4, 4, 8, 8, 16, 16, 32]


def test_finished_rows_leave_in_power_of_two_buckets(micro_config, cpp_compiler, monkeypatch):
    """Rows that stop early shrink the compiled batch (4 -> 2 -> 1 here) and every row still decodes
    exactly as in eager decoding."""
    from looplm.model.cache import ModelCache

    m = make(micro_config)
    free = generate(m, PROMPTS, GenerationConfig(max_new_tokens=10, steps=3)).tokens
    stops = (free[0][0], free[1][1])  # rows 0 and 1 stop within two tokens (others may too)
    eager = generate(m, PROMPTS, GenerationConfig(max_new_tokens=10, steps=3, stop_tokens=stops))
    assert sum(len(t) < 10 for t in eager.tokens) >= 2 and max(len(t) for t in eager.tokens) > 2
    sizes = []
    real = ModelCache.keep_rows
    monkeypatch.setattr(ModelCache, "keep_rows", lambda self, rows: sizes.append(len(rows)) or real(self, rows))
    comp = generate(m, PROMPTS, GenerationConfig(max_new_tokens=10, steps=3, stop_tokens=stops, compile=True))
    assert comp.tokens == eager.tokens and comp.finished == eager.finished
    assert sizes and all(n in (1, 2) for n in sizes), sizes  # shrank to a power of two below 4


def test_one_graph_serves_every_cache_length(micro_config, cpp_compiler):
    """The cache length is dynamic: prompts that need a longer cache reuse the compiled graph."""
    from torch._dynamo.utils import counters

    m = make(micro_config)
    short, long = [[5, 6, 7]] * 2, [list(range(3, 43))] * 2  # caches of 32 and 64 positions
    cfg = GenerationConfig(max_new_tokens=6, steps=3, compile=True)
    assert generate(m, short, cfg).tokens == generate(m, short, dataclasses.replace(cfg, compile=False)).tokens
    graphs = counters["stats"]["unique_graphs"]
    assert generate(m, long, cfg).tokens == generate(m, long, dataclasses.replace(cfg, compile=False)).tokens
    assert counters["stats"]["unique_graphs"] == graphs
