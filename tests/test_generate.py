"""Generation: cached = uncached, batches = singles, adaptive, speculative = greedy, sampling."""

from __future__ import annotations

import pytest
import torch

from looplm.config import get_preset
from looplm.generate import GenerationConfig, generate, sample
from looplm.model import RecursiveCausalLM

MODES = ["anchored", "per_step"]
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [1, 2, 3, 4, 5, 6, 7, 8, 9], [42]]


def make(mode="anchored", seed=0, mixed_halt=False):
    torch.manual_seed(seed)
    m = RecursiveCausalLM(get_preset("tiny", core_kv=mode, vocab_size=256, max_seq_len=96, n_prelude=4, n_core=2,
                                     n_coda=4, recurrence=8, core_attn="cart_mla", adapter_state_gain=0.0,
                                     depth_gate_bias=0.0, e_scale=1.0, step_emb_out_gain=1.0)).double()  # the report's
    # 4/2/4 layout, core and init
    with torch.no_grad():
        for n, p in m.named_parameters():
            if any(k in n for k in ("g_step", "gate_proj")):
                p.normal_(std=0.05)
        for mod in m.core.modulated():
            if hasattr(mod, "G_x"):
                mod.G_x.normal_(std=0.05)
        if mixed_halt:
            m.core.halt.weight.normal_(std=3.0)
            m.core.halt.bias.fill_(0.0)
    return m.eval()


def trained(mode="anchored"):
    """A model given a few optimizer steps (all parameters, speculative heads included)."""
    m = make(mode).float()
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    seq = torch.tensor([[3, 4, 5, 6, 7, 3, 4, 5, 6, 7, 3, 4, 5, 6, 7, 3, 4, 5, 6, 7]])
    for _ in range(40):
        out = m(seq, 2, return_spec=True)
        loss = torch.nn.functional.cross_entropy(out.logits[0, :-1], seq[0, 1:])
        for k in range(m.config.n_spec_heads):
            loss = loss + torch.nn.functional.cross_entropy(out.spec_logits[0, : -2 - k, k], seq[0, 2 + k:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.double().eval()


@pytest.mark.parametrize("mode", MODES)
def test_cached_equals_uncached_batched_with_padding(mode):
    m = make(mode)
    cfg = GenerationConfig(max_new_tokens=16, steps=3)
    a = generate(m, PROMPTS, cfg)
    b = generate(m, PROMPTS, GenerationConfig(max_new_tokens=16, steps=3, use_cache=False))
    assert a.tokens == b.tokens
    assert all(len(t) == 16 for t in a.tokens)


@pytest.mark.parametrize("mode", MODES)
def test_batch_equals_each_prompt_alone(mode):
    m = make(mode)
    cfg = GenerationConfig(max_new_tokens=12, steps=3)
    batch = generate(m, PROMPTS, cfg)
    assert batch.tokens == [generate(m, [p], cfg).tokens[0] for p in PROMPTS]


@pytest.mark.parametrize("mode", MODES)
def test_adaptive_exit_cached_uncached_and_alone(mode):
    m = make(mode, mixed_halt=True)
    cfg = GenerationConfig(max_new_tokens=12, steps=8, halt_threshold=0.6, min_steps=2)
    a = generate(m, PROMPTS, cfg)
    b = generate(m, PROMPTS, GenerationConfig(**{**cfg.__dict__, "use_cache": False}))
    assert a.tokens == b.tokens and a.exit_steps == b.exit_steps
    flat = [s for row in a.exit_steps for s in row]
    assert min(flat) >= 2 and len(set(flat)) > 1
    if mode == "anchored":
        assert a.tokens == [generate(m, [p], cfg).tokens[0] for p in PROMPTS]


@pytest.mark.parametrize("mode", MODES)
def test_adaptive_prompt_runs_full_depth_unless_adaptive_prefill(mode):
    m = make(mode, mixed_halt=True)
    cfg = GenerationConfig(max_new_tokens=8, steps=6, halt_threshold=0.6, min_steps=1)
    full_prompt = generate(m, PROMPTS, cfg)
    assert all(row[0] == 6 for row in full_prompt.exit_steps)  # the first token comes from the prompt's last
    assert min(s for row in full_prompt.exit_steps for s in row[1:]) < 6
    both = GenerationConfig(**{**cfg.__dict__, "adaptive_prefill": True})
    a, b = generate(m, PROMPTS, both), generate(m, PROMPTS, GenerationConfig(**{**both.__dict__, "use_cache": False}))
    assert a.tokens == b.tokens and a.exit_steps == b.exit_steps
    assert any(row[0] < 6 for row in a.exit_steps)
    with torch.no_grad():  # the prefill is the fixed-depth forward
        ids = torch.tensor([PROMPTS[0]])
        first = int(m(ids, 6).logits[0, -1].argmax())
    assert generate(m, [PROMPTS[0]], cfg).tokens[0][0] == first


def test_adaptive_never_firing_equals_fixed_depth():
    m = make()
    fixed = generate(m, PROMPTS, GenerationConfig(max_new_tokens=10, steps=4))
    never = generate(m, PROMPTS, GenerationConfig(max_new_tokens=10, steps=4, halt_threshold=1.0))
    assert fixed.tokens == never.tokens
    assert all(s == 4 for row in never.exit_steps for s in row)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("train", [False, True])
def test_speculative_equals_greedy(mode, train):
    m = trained(mode) if train else make(mode)
    cfg = GenerationConfig(max_new_tokens=24, steps=2)
    plain = generate(m, PROMPTS, cfg)
    spec = generate(m, PROMPTS, GenerationConfig(max_new_tokens=24, steps=2, speculative=True))
    assert spec.tokens == plain.tokens
    for row, acc in zip(spec.tokens, spec.accept_counts):
        assert sum(acc) == len(row) and all(1 <= a <= m.config.n_spec_heads + 1 for a in acc)
    if train:  # trained heads on a periodic sequence: drafts get accepted
        assert max(a for acc in spec.accept_counts for a in acc) > 1


def test_speculative_with_adaptive_exit_equals_adaptive_greedy():
    m = make(mixed_halt=True)
    cfg = dict(max_new_tokens=20, steps=6, halt_threshold=0.6, min_steps=1)
    plain = generate(m, PROMPTS, GenerationConfig(**cfg))
    spec = generate(m, PROMPTS, GenerationConfig(**cfg, speculative=True))
    assert spec.tokens == plain.tokens and spec.exit_steps == plain.exit_steps


def test_stop_tokens_end_rows():
    m = make()
    free = generate(m, PROMPTS, GenerationConfig(max_new_tokens=10, steps=2))
    stop = free.tokens[0][3]
    out = generate(m, PROMPTS, GenerationConfig(max_new_tokens=10, steps=2, stop_tokens=(stop,)))
    first = free.tokens[0].index(stop)
    assert out.tokens[0] == free.tokens[0][: first + 1] and out.finished[0]
    spec = generate(m, PROMPTS, GenerationConfig(max_new_tokens=10, steps=2, stop_tokens=(stop,), speculative=True))
    assert spec.tokens == out.tokens


@pytest.mark.parametrize("mode", MODES)
def test_finished_rows_leave_the_batch_without_changing_the_others(mode, monkeypatch):
    m = make(mode, mixed_halt=True)
    kw = dict(max_new_tokens=14, steps=6, halt_threshold=0.6, min_steps=2)
    free = [generate(m, [p], GenerationConfig(**kw)).tokens[0] for p in PROMPTS]
    stops = (free[0][2], free[2][6])  # rows 0 and 2 stop early (others may too): several drops
    cfg = GenerationConfig(**kw, stop_tokens=stops)
    alone = [generate(m, [p], cfg) for p in PROMPTS]
    kept = []
    real_keep = type(m.new_cache(1, 4)).keep_rows
    monkeypatch.setattr(type(m.new_cache(1, 4)), "keep_rows",
                        lambda self, rows: (kept.append(rows.tolist()), real_keep(self, rows))[1])
    for use_cache in (True, False):
        out = generate(m, PROMPTS, GenerationConfig(**{**cfg.__dict__, "use_cache": use_cache}))
        assert out.tokens == [a.tokens[0] for a in alone]
        assert out.exit_steps == [a.exit_steps[0] for a in alone]
        assert out.finished == [a.finished[0] for a in alone]
    assert kept and all(len(k) < len(PROMPTS) for k in kept)  # the cached run really shrank its batch


def test_sampling_is_seeded_and_filters():
    m = make()
    cfg = GenerationConfig(max_new_tokens=8, steps=2, temperature=1.0, top_k=20, top_p=0.9, seed=3)
    assert generate(m, PROMPTS, cfg).tokens == generate(m, PROMPTS, cfg).tokens
    logits = torch.tensor([[0.0, 1.0, 2.0, 10.0]])
    assert sample(logits, 0.0, 0, 1.0, None).item() == 3
    g = torch.Generator().manual_seed(0)
    assert all(sample(logits, 5.0, 1, 1.0, g).item() == 3 for _ in range(20))  # top-1 keeps the max
    probs = torch.tensor([[0.6, 0.3, 0.1]]).log()
    seen = {sample(probs, 1.0, 0, 0.5, g).item() for _ in range(50)}  # top-p 0.5 keeps only 0.6
    assert seen == {0}


def test_bad_generation_input_is_clear():
    m = make()
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(m, [[1] * 90], GenerationConfig(max_new_tokens=10))
    with pytest.raises(ValueError, match="greedy"):
        generate(m, [[1]], GenerationConfig(speculative=True, temperature=0.7))
    with pytest.raises(ValueError, match="empty"):
        generate(m, [[]], GenerationConfig())
    with pytest.raises(ValueError, match="halt_threshold"):
        generate(m, [[1]], GenerationConfig(halt_threshold=0.0))


def test_streaming_callback_sees_every_token_in_order():
    m = make()
    for spec in (False, True):
        seen: dict[int, list[int]] = {}
        out = generate(m, PROMPTS, GenerationConfig(max_new_tokens=9, steps=2, speculative=spec),
                       on_tokens=lambda row, ids: seen.setdefault(row, []).extend(ids))
        assert [seen[i] for i in range(len(PROMPTS))] == out.tokens
