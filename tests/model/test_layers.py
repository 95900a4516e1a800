"""RMSNorm against the textbook formula; decoding's transposed-weight tables against the plain forward."""

from __future__ import annotations

import pytest
import torch

from looplm.config import get_preset
from looplm.model import RecursiveCausalLM
from looplm.model.layers import RMSNorm


def textbook_rms_norm(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


@pytest.mark.parametrize("scale", [1e-6, 1e-3, 1.0, 1e4])  # from eps-dominated to huge activations
def test_rms_norm_equals_the_textbook_formula(scale):
    torch.manual_seed(0)
    norm = RMSNorm(48, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = (torch.randn(3, 7, 48, dtype=torch.float64) * scale).requires_grad_(True)
    y = norm(x)
    ref = textbook_rms_norm(x, norm.weight, 1e-5)
    torch.testing.assert_close(y, ref, rtol=1e-7, atol=0)  # √(d·ε) is a float32 constant: ε good to ~1e-7
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad((y * g).sum(), x)
    (rx,) = torch.autograd.grad((ref * g).sum(), x)
    torch.testing.assert_close(gx, rx, rtol=1e-6, atol=1e-12 / scale)


def test_rms_norm_zero_input_is_finite_with_finite_gradient():
    norm = RMSNorm(16).double()
    x = torch.zeros(2, 16, dtype=torch.float64, requires_grad=True)
    y = norm(x)
    y.sum().backward()
    assert torch.equal(y, torch.zeros_like(y)) and torch.isfinite(x.grad).all()


def test_rms_norm_low_precision_input_uses_float32_statistics():
    torch.manual_seed(0)
    norm = RMSNorm(64)
    x = torch.randn(4, 64) * 30
    y = norm(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), textbook_rms_norm(x.bfloat16().float(), norm.weight, 1e-5).bfloat16().float())


@pytest.mark.parametrize("mode", ["anchored", "per_step"])
def test_transposed_weight_tables_give_the_plain_forward(mode):
    torch.manual_seed(0)
    m = RecursiveCausalLM(get_preset("tiny", core_kv=mode, vocab_size=256, max_seq_len=64)).double().eval()
    with torch.no_grad():
        for p in m.speculative_projs:
            p.weight.normal_(std=0.05)
    ids = torch.randint(0, 256, (2, 9))
    plain = m(ids, 3, return_spec=True)
    tables = dict(step_table=m.core.step_table(5), weights_t=m.transposed_weights())
    fast = m(ids, 3, return_spec=True, **tables)
    torch.testing.assert_close(fast.logits, plain.logits, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.spec_logits, plain.spec_logits, rtol=1e-10, atol=1e-12)
    expected = {id(lin) for blk in (*m.prelude, *m.coda) for lin in blk.linears()} | {id(m.lm_head)}
    assert {id(k) for k in tables["weights_t"]} == expected
    assert all(w.is_contiguous() and w.shape == k.weight.T.shape for k, w in tables["weights_t"].items())


def test_transposed_weights_are_refreshed_from_the_current_weights():
    torch.manual_seed(0)
    m = RecursiveCausalLM(get_preset("tiny", vocab_size=256, max_seq_len=64))
    first = m.transposed_weights()
    with torch.no_grad():
        m.prelude[0].attn.wqkv.weight.mul_(2.0)
    second = m.transposed_weights()  # reuses the buffers of the first call, refreshed
    lin = m.prelude[0].attn.wqkv
    assert torch.equal(second[lin], lin.weight.T) and second[lin].data_ptr() == first[lin].data_ptr()
    m.double()  # new dtype: new buffers, never a stale or mistyped copy
    third = m.transposed_weights()
    assert third[lin].dtype == torch.float64 and torch.equal(third[lin], lin.weight.T)
    assert not any(w.requires_grad for w in third.values())
    with torch.inference_mode():
        assert torch.equal(m.transposed_weights()[lin], lin.weight.T)
    assert "_transposed_buffers" not in "".join(m.state_dict())
