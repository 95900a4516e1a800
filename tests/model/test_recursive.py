"""RecursiveCausalLM against a naive explicit unroll, causality, truncation, adaptive exit, counts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from looplm.config import ConfigError, get_preset
from looplm.model import RecursiveCausalLM, kv_bytes_per_token
from looplm.model.layers import sinusoidal
from looplm.model.modulation import NormedInputModulatedLinear

MODES = ["anchored", "per_step"]
ATTNS = ["cart_mla", "gqa"]


def make(mode="anchored", seed=0, core_attn="cart_mla", **kw):
    torch.manual_seed(seed)
    cfg = get_preset("tiny", core_kv=mode, core_attn=core_attn, vocab_size=256, max_seq_len=64, **kw)
    m = RecursiveCausalLM(cfg).double()
    # move modulation and gates off their zero init so the test exercises every term
    with torch.no_grad():
        for n, p in m.named_parameters():
            if any(k in n for k in ("g_step", "gate_proj", "speculative", "halt")):
                p.normal_(std=0.05)
        for mod in m.core.modulated():
            if hasattr(mod, "G_x"):
                mod.G_x.normal_(std=0.05)
    return m.eval()


# ---------------------------------------------------------------- naive reference, straight from docs/model.md
def naive_rope(x, pos, theta):
    # x [T, dim] at integer positions pos [T]; pair k = (x[2k], x[2k+1]) rotated by pos * theta^(-2k/dim)
    dim = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    ang = pos[:, None].double() * inv[None]
    x1, x2 = x[:, 0::2], x[:, 1::2]
    out = torch.empty_like(x)
    out[:, 0::2] = x1 * ang.cos() - x2 * ang.sin()
    out[:, 1::2] = x1 * ang.sin() + x2 * ang.cos()
    return out


def rmsn(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * (w if w is not None else 1.0)


def naive_lin(mod, x, se):
    """W_eff(t, x) x = W x + U diag(g) V^T x, g = tanh(G_e se + G_x norm(x)) written out per token;
    norm(x) = x for the projections whose input comes straight out of an RMSNorm (w_q, gate_up)."""
    out = []
    normed_input = isinstance(mod, NormedInputModulatedLinear)
    for xi in x:
        g = torch.tanh(mod.g_step.weight @ se + mod.G_x @ (xi if normed_input else rmsn(xi, None, 1e-5)))
        W = mod.weight + mod.U @ torch.diag(g) @ mod.V.T
        out.append(W @ xi)
    return torch.stack(out)


def naive_gqa(blk, x, cfg, pos):
    T = x.shape[0]
    h = rmsn(x, blk.attn_norm.weight, cfg.norm_eps)
    a = blk.attn
    H, Hkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    wq, wk, wv = a.wqkv.weight.split([H * hd, Hkv * hd, Hkv * hd])
    q = (h @ wq.T).view(T, H, hd)
    k = (h @ wk.T).view(T, Hkv, hd)
    v = (h @ wv.T).view(T, Hkv, hd)
    rep = cfg.n_heads // cfg.n_kv_heads
    heads = []
    for hh in range(cfg.n_heads):
        qh = naive_rope(q[:, hh], pos, cfg.rope_theta)
        kh = naive_rope(k[:, hh // rep], pos, cfg.rope_theta)
        sc = qh @ kh.T / math.sqrt(cfg.head_dim)
        sc = sc.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        heads.append(sc.softmax(-1) @ v[:, hh // rep])
    x = x + torch.cat(heads, -1) @ a.wo.weight.T
    h = rmsn(x, blk.mlp_norm.weight, cfg.norm_eps)
    wg, wu = blk.mlp.gate_up.weight.chunk(2)
    return x + (F.silu(h @ wg.T) * (h @ wu.T)) @ blk.mlp.down.weight.T


def naive_core_gqa_block(blk, z, kv_src, se, cfg, pos):
    """Core GQA: keys/values from norm(kv_src) per KV head, the whole head rotated; modulated q and o."""
    T, H, Hkv, hd = z.shape[0], cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    a = blk.attn
    hkv = rmsn(kv_src, a.kv_norm.weight, cfg.norm_eps)
    wk, wv = a.w_kv.weight.chunk(2)
    k, v = (hkv @ wk.T).view(T, Hkv, hd), (hkv @ wv.T).view(T, Hkv, hd)
    h = rmsn(z, blk.attn_norm.weight, cfg.norm_eps)
    q = naive_lin(a.w_q, h, se).view(T, H, hd)
    heads = []
    for hh in range(H):
        kh = naive_rope(k[:, hh // (H // Hkv)], pos, cfg.rope_theta)
        sc = naive_rope(q[:, hh], pos, cfg.rope_theta) @ kh.T / math.sqrt(hd)
        sc = sc.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        heads.append(sc.softmax(-1) @ v[:, hh // (H // Hkv)])
    z = z + naive_lin(a.w_o, torch.cat(heads, -1), se)
    h = rmsn(z, blk.mlp_norm.weight, cfg.norm_eps)
    gate, up = naive_lin(blk.mlp.gate_up, h, se).chunk(2, dim=-1)
    return z + naive_lin(blk.mlp.down, F.silu(gate) * up, se)


def naive_core_block(blk, z, kv_src, se, cfg, pos):
    """Non-absorbed CART-MLA: explicit per-head keys k = [W_UK(t) c ; k^R] and values W_UV(t) c."""
    if cfg.core_attn == "gqa":
        return naive_core_gqa_block(blk, z, kv_src, se, cfg, pos)
    T, H, dn, dr = z.shape[0], cfg.n_heads, cfg.head_dim, cfg.rope_dim
    a = blk.attn
    hkv = rmsn(kv_src, a.kv_norm.weight, cfg.norm_eps)
    c = hkv @ a.w_dkv.weight.T  # [T, lat]
    kr = naive_rope(hkv @ a.w_kr.weight.T, pos, cfg.rope_theta)  # [T, dr]
    Wuk = a.w_uk.weight + a.w_uk.U @ torch.diag(torch.tanh(a.w_uk.g_step.weight @ se)) @ a.w_uk.V.T
    Wuv = a.w_uv.weight + a.w_uv.U @ torch.diag(torch.tanh(a.w_uv.g_step.weight @ se)) @ a.w_uv.V.T
    k_nope = (c @ Wuk.T).view(T, H, dn)
    v = (c @ Wuv.T).view(T, H, dn)
    h = rmsn(z, blk.attn_norm.weight, cfg.norm_eps)
    q = naive_lin(a.w_q, h, se).view(T, H, dn + dr)
    heads = []
    for hh in range(H):
        qn, qr = q[:, hh, :dn], naive_rope(q[:, hh, dn:], pos, cfg.rope_theta)
        key = torch.cat([k_nope[:, hh], kr], -1)
        sc = torch.cat([qn, qr], -1) @ key.T / math.sqrt(dn + dr)
        sc = sc.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        heads.append(sc.softmax(-1) @ v[:, hh])
    z = z + naive_lin(a.w_o, torch.cat(heads, -1), se)
    h = rmsn(z, blk.mlp_norm.weight, cfg.norm_eps)
    gate, up = naive_lin(blk.mlp.gate_up, h, se).chunk(2, dim=-1)
    return z + naive_lin(blk.mlp.down, F.silu(gate) * up, se)


def naive_forward(m, ids, n):
    cfg = m.config
    pos = torch.arange(ids.shape[0])
    x = m.embed.weight[ids]
    for blk in m.prelude:
        x = naive_gqa(blk, x, cfg, pos)
    e = rmsn(x, m.prelude_norm.weight, cfg.norm_eps)
    s = torch.zeros_like(e)
    core = m.core
    for t in range(n):
        enc = sinusoidal(t, cfg.step_emb_dim).double()
        se = core.step_emb.fc2.weight @ F.silu(core.step_emb.fc1.weight @ enc + core.step_emb.fc1.bias) + core.step_emb.fc2.bias
        z = torch.cat([s, e], -1) @ core.adapter.weight.T + se
        for blk in core.blocks:
            src = e if cfg.core_kv == "anchored" else z
            z = naive_core_block(blk, z, src, se, cfg, pos)
        alpha = torch.sigmoid(cfg.depth_gate_scale * (core.gate_bias + core.gate_proj.weight @ se))
        s = s + alpha * (z - s)
    x = s
    for blk in m.coda:
        x = naive_gqa(blk, x, cfg, pos)
    return rmsn(x, m.norm.weight, cfg.norm_eps) @ m.embed.weight.T


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("attn", ATTNS)
def test_forward_equals_naive_unroll(mode, n, attn):
    m = make(mode, core_attn=attn)
    ids = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        got = m(ids, n).logits[0]
    ref = naive_forward(m, ids[0], n)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("attn", ATTNS)
def test_causality(mode, attn):
    m = make(mode, core_attn=attn)
    ids = torch.randint(0, 256, (2, 12))
    j = 7
    ids2 = ids.clone()
    ids2[:, j] = (ids2[:, j] + 1) % 256
    with torch.no_grad():
        a, b = m(ids, 4), m(ids2, 4)
        ah, bh = m(ids, 4, halt_threshold=0.5), m(ids2, 4, halt_threshold=0.5)
    assert torch.equal(a.logits[:, :j], b.logits[:, :j])
    assert not torch.allclose(a.logits[:, j:], b.logits[:, j:])
    assert torch.equal(ah.logits[:, :j], bh.logits[:, :j])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("attn", ATTNS)
def test_chunked_cache_equals_full_forward(mode, attn):
    m = make(mode, core_attn=attn)
    ids = torch.randint(0, 256, (2, 15))
    with torch.no_grad():
        full = m(ids, 3).logits
        cache = m.new_cache(2, 20, 3)
        parts = [m(ids[:, a:b], 3, cache=cache).logits for a, b in [(0, 6), (6, 7), (7, 15)]]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-10, atol=1e-10)


def test_truncated_backprop_zero_gradient_before_window():
    m = make()
    m.train()
    ids = torch.randint(0, 256, (2, 8))
    out = m(ids, 6, grad_steps=2, return_states=True)
    for s in out.states:
        if s.requires_grad:
            s.retain_grad()
    out.logits.sum().backward()
    assert [s.requires_grad for s in out.states] == [False] * 5 + [True, True]  # s_5, s_6 come from grad steps
    assert out.states[5].grad.abs().sum() > 0


def test_adaptive_never_firing_equals_fixed_depth():
    m = make()
    ids = torch.randint(0, 256, (3, 10))
    with torch.no_grad():
        fixed = m(ids, 5).logits
        ada = m(ids, 5, halt_threshold=1.0)  # sigmoid < 1: never fires
    assert torch.equal(ada.logits, fixed)
    assert bool((ada.exit_steps == 5).all())


def _mixed_halt(m):
    # a halt head whose decisions vary across tokens and steps
    with torch.no_grad():
        m.core.halt.weight.normal_(std=3.0)
        m.core.halt.bias.fill_(0.0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("attn", ATTNS)
def test_adaptive_exit_freezes_state(mode, attn):
    m = make(mode, core_attn=attn)
    _mixed_halt(m)
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        out = m(ids, 8, halt_threshold=0.6, min_steps=2, return_states=True)
    ex = out.exit_steps
    assert ex.min() >= 2 and len(set(ex.flatten().tolist())) > 1, "test needs mixed exits"
    final = out.states[-1]
    for b in range(2):
        for t in range(16):
            k = int(ex[b, t])
            torch.testing.assert_close(out.states[k][b, t], final[b, t], rtol=0, atol=0)


@pytest.mark.parametrize("attn", ATTNS)
def test_anchored_adaptive_batch_equals_each_alone(attn):
    m = make("anchored", core_attn=attn)
    _mixed_halt(m)
    ids = torch.randint(0, 256, (4, 11))
    with torch.no_grad():
        batch = m(ids, 8, halt_threshold=0.6, min_steps=1)
        for i in range(4):
            one = m(ids[i:i + 1], 8, halt_threshold=0.6, min_steps=1)
            torch.testing.assert_close(one.logits[0], batch.logits[i], rtol=1e-10, atol=1e-10)
            assert torch.equal(one.exit_steps[0], batch.exit_steps[i])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("attn", ATTNS)
def test_adaptive_cached_equals_uncached(mode, attn):
    m = make(mode, core_attn=attn)
    _mixed_halt(m)
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        full = m(ids, 6, halt_threshold=0.6)
        cache = m.new_cache(2, 12, 6)
        parts = [m(ids[:, t:t + 1], 6, cache=cache, halt_threshold=0.6) for t in range(12)]
    torch.testing.assert_close(torch.cat([p.logits for p in parts], 1), full.logits, rtol=1e-9, atol=1e-9)
    assert torch.equal(torch.cat([p.exit_steps for p in parts], 1), full.exit_steps)


@pytest.mark.parametrize("mode", MODES)
def test_exit_mask_keeps_masked_positions_at_full_depth(mode):
    m = make(mode)
    _mixed_halt(m)
    ids = torch.randint(0, 256, (2, 12))
    may = torch.zeros(2, 12, dtype=torch.bool)
    may[:, 7:] = True  # a 7-token "prompt" that never exits
    with torch.no_grad():
        out = m(ids, 6, halt_threshold=0.6, exit_mask=may)
        free = m(ids, 6, halt_threshold=0.6)
    assert bool((out.exit_steps[:, :7] == 6).all())
    assert bool((free.exit_steps[:, :7] < 6).any()), "test needs exits among the masked positions"
    with torch.no_grad():  # nothing allowed to exit: the fixed-depth forward exactly
        none = m(ids, 6, halt_threshold=0.6, exit_mask=torch.zeros(2, 12, dtype=torch.bool))
    assert torch.equal(none.logits, m(ids, 6).logits)


@pytest.mark.parametrize("mode", MODES)
def test_force_exit_freezes_the_chosen_positions_after_min_steps(mode):
    m = make(mode)
    ids = torch.randint(0, 256, (2, 10))
    force = torch.rand(2, 10, generator=torch.Generator().manual_seed(1)) < 0.4
    with torch.no_grad():
        out = m(ids, 5, min_steps=1, force_exit=force, return_states=True)
        full = m(ids, 5, return_states=True)
    assert torch.equal(out.exit_steps, torch.where(force, 1, 5))
    torch.testing.assert_close(out.states[-1][force], full.states[1][force], rtol=0, atol=0)
    if mode == "anchored":  # keys from e: the core of the other positions is untouched
        torch.testing.assert_close(out.states[-1][~force], full.states[-1][~force], rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        assert torch.equal(m(ids, 5, force_exit=torch.zeros_like(force)).logits, full.logits)
    m(ids, 3, min_steps=1, force_exit=force, grad_steps=3).logits.square().mean().backward()  # training uses it
    grads = [p.grad for p in m.core.parameters() if p.grad is not None]
    assert grads and any(bool(g.abs().sum() > 0) for g in grads)
    with pytest.raises(ValueError, match="force_exit"):
        m(ids, 3, force_exit=force[:, :4])


def test_outputs_and_shapes():
    m = make()
    ids = torch.randint(0, 256, (2, 5))
    with torch.no_grad():
        out = m(ids, 3, return_states=True, return_halt=True, return_spec=True)
    K, V = m.config.n_spec_heads, m.config.vocab_size
    assert out.logits.shape == (2, 5, V) and out.spec_logits.shape == (2, 5, K, V)
    assert len(out.states) == 4 and out.halt_probs.shape == (3, 2, 5)
    assert bool(((out.halt_probs > 0) & (out.halt_probs < 1)).all())


def test_speculative_heads_follow_the_per_head_formula():
    """draft_k = lm_head(h + SiLU(P_k h + b_k)) head by head (make() moves P_k and b_k off zero)."""
    m = make()
    with torch.no_grad():
        out = m(torch.randint(0, 256, (2, 5)), 3, return_spec=True)
        for k, (p, b) in enumerate(zip(m.speculative_projs, m.speculative_biases)):
            draft = (out.hidden + F.silu(out.hidden @ p.weight.T + b)) @ m.embed.weight.T
            torch.testing.assert_close(out.spec_logits[:, :, k], draft, rtol=1e-10, atol=1e-12)
    m0 = RecursiveCausalLM(get_preset("tiny", vocab_size=256, max_seq_len=64, n_spec_heads=0))
    assert m0(torch.randint(0, 256, (1, 3)), 2, return_spec=True).spec_logits.shape == (1, 3, 0, 256)


def test_steps_beyond_training_depth_are_defined():
    m = make()
    ids = torch.randint(0, 256, (1, 4))
    with torch.no_grad():
        out = m(ids, 32)
    assert torch.isfinite(out.logits).all()


def test_bad_arguments_are_clear_errors():
    m = make()
    ids = torch.randint(0, 256, (1, 4))
    with pytest.raises(ValueError, match="steps"):
        m(ids, 0)
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.zeros(1, 65, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="halt_threshold"):
        m(ids, 2, halt_threshold=1.5)


def test_config_validation_names_field():
    with pytest.raises(ConfigError, match="n_kv_heads"):
        get_preset("tiny", n_kv_heads=3)
    with pytest.raises(ConfigError, match="core_kv.*anchored"):
        get_preset("tiny", core_kv="bogus")
    with pytest.raises(ConfigError, match="tiny, small, report-200m"):
        get_preset("huge")


def test_init_scale_of_e_and_of_the_step_signal():
    """e_scale sets the RMS of e = norm(prelude(x)) at init; step_emb_out_gain = 0 starts step_emb(t) at
    zero for every t, and a gain of 1 leaves the init (and its random draws) as before the field existed."""
    base = dict(vocab_size=256, max_seq_len=64)
    torch.manual_seed(0)
    small = RecursiveCausalLM(get_preset("tiny", **base, e_scale=0.1, step_emb_out_gain=0.0))
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        x = small.embed(ids)
        for blk in small.prelude:
            x = blk(x, small.rope(torch.arange(16).expand(2, 16), x.dtype), None)
        e = small.prelude_norm(x)
        assert e.pow(2).mean(-1).sqrt().allclose(torch.full((2, 16), 0.1), rtol=0.03)  # (RMSNorm eps)
        assert small.core.step_table(5).vec[3].abs().max() == 0
    torch.manual_seed(0)
    one = RecursiveCausalLM(get_preset("tiny", **base, e_scale=1.0, step_emb_out_gain=1.0))
    sd_small, sd_one = small.state_dict(), one.state_dict()
    differ = {k for k in sd_one if not torch.equal(sd_one[k], sd_small[k])}
    assert differ == {"prelude_norm.weight", "core.step_emb.fc2.weight"}  # the same draws otherwise
    assert float(one.core.step_emb.fc2.weight.detach().std()) == pytest.approx(one.config.init_std, rel=0.1)
    for field, bad in (("e_scale", 0.0), ("step_emb_out_gain", -1.0)):
        with pytest.raises(ConfigError, match=f"ModelConfig.{field}="):
            get_preset("tiny", **{field: bad})


def test_report_200m_parameter_counts_match_report():
    with torch.device("meta"):
        m = RecursiveCausalLM(get_preset("report-200m"))
    c = m.param_counts(8)
    assert abs(c["physical"] / 124.13e6 - 1) < 0.01, c
    assert abs(c["virtual"] / 176.29e6 - 1) < 0.01, c


@pytest.mark.parametrize("attn", ATTNS)
def test_cache_width_and_flops_follow_the_core_attention(attn):
    cfg = get_preset("tiny", core_attn=attn, core_kv="per_step")
    H, hd, lat, dr = cfg.n_heads, cfg.head_dim, cfg.kv_latent_dim, cfg.rope_dim
    width = 2 * cfg.n_kv_heads * hd if attn == "gqa" else lat + dr
    assert cfg.core_cache_width == width
    assert kv_bytes_per_token(cfg, 3)["core"] == cfg.n_core * 3 * width * 4
    m = RecursiveCausalLM(cfg)
    assert m.new_cache(1, 16, 3).core[0].shape == (1, 3, 16, width)
    # one more step costs 2 FLOPs per multiply-add of the core: every weight matrix used per token (the
    # low-rank U, V of CART-MLA's step-only up-projections are folded into W_eff once per call), the
    # adapter's s-half, and attention over the mean causal context
    skip = ("g_step.weight", "w_uk.U", "w_uk.V", "w_uv.U", "w_uv.V")
    madds = sum(p.numel() for n, p in m.core.blocks.named_parameters() if p.dim() == 2 and not n.endswith(skip))
    madds += cfg.d_model ** 2
    ctx = (100 + 1) / 2
    madds += 2 * H * hd * ctx if attn == "gqa" else H * (2 * lat + dr) * ctx
    assert m.flops_per_token(5, 100) - m.flops_per_token(4, 100) == pytest.approx(2 * madds, rel=1e-6)


def test_preset_sizes():
    tiny = RecursiveCausalLM(get_preset("tiny")).param_counts()["physical"]
    assert 0.5e6 <= tiny <= 3e6
    with torch.device("meta"):
        small = RecursiveCausalLM(get_preset("small")).param_counts()["physical"]
    assert 10e6 <= small <= 20e6


def test_anchored_core_kv_bytes_do_not_grow_with_steps():
    cfg = get_preset("tiny", core_kv="anchored")
    assert kv_bytes_per_token(cfg, 8)["core"] == kv_bytes_per_token(cfg, 32)["core"]
    per = cfg.replace(core_kv="per_step")
    assert kv_bytes_per_token(per, 32)["core"] == 4 * kv_bytes_per_token(per, 8)["core"]
    m = RecursiveCausalLM(cfg)
    assert m.new_cache(1, 64, 8).nbytes() == m.new_cache(1, 64, 32).nbytes()


def test_no_stale_step_terms_after_in_place_optimizer_steps():
    """Regression: fused AdamW updates weights without bumping tensor versions; every forward must see them."""
    m = make().float()
    ids = torch.randint(0, 256, (1, 6))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, fused=True)
    with torch.no_grad():
        m(ids, 3)
    m.train()
    m(ids, 3).logits.sum().backward()
    opt.step()
    m.eval()
    fresh = RecursiveCausalLM(m.config).float().eval()
    fresh.load_state_dict(m.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(m(ids, 3).logits, fresh(ids, 3).logits, rtol=0, atol=0)
