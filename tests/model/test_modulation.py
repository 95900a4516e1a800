"""Ouroboros modulation: identity at init, SVD factors, step-only weights."""

import torch
import torch.nn.functional as F

from looplm.model.modulation import ModulatedLinear, StepModulatedLinear, svd_factors


def test_svd_factors_reproduce_top_r_part():
    torch.manual_seed(0)
    W = torch.randn(24, 16, dtype=torch.float64)
    U, V = svd_factors(W, 5)
    u, s, vh = torch.linalg.svd(W, full_matrices=False)
    top = u[:, :5] @ torch.diag(s[:5]) @ vh[:5]
    torch.testing.assert_close(U @ V.T, top)
    # and it is the best rank-5 approximation: residual norm = tail singular values
    torch.testing.assert_close(torch.linalg.matrix_norm(W - U @ V.T), s[5:].norm())


def _init(m):
    with torch.no_grad():
        if hasattr(m, "fused"):
            m.fused.zero_()
        torch.nn.init.normal_(m.weight, std=0.1)
    m.reinit_from_weight()
    torch.nn.init.zeros_(m.g_step.weight)


def test_modulated_linear_at_init_equals_plain_linear():
    torch.manual_seed(0)
    m = ModulatedLinear(16, 24, 4, 8).double()
    _init(m)
    x, sv = torch.randn(3, 5, 16, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    y = m(x, m.step_terms(sv[None])[0])
    torch.testing.assert_close(y, x @ m.weight.T.contiguous(), rtol=0, atol=0)  # the modulation adds exactly 0
    torch.testing.assert_close(y, F.linear(x, m.weight))  # (the module multiplies by Wᵀ stored [in, out])
    s = StepModulatedLinear(16, 24, 4, 8).double()
    _init(s)
    torch.testing.assert_close(s.effective_weight(sv), s.weight, rtol=0, atol=0)


def test_modulation_rescales_top_directions():
    torch.manual_seed(0)
    m = StepModulatedLinear(16, 24, 4, 8).double()
    _init(m)
    torch.nn.init.normal_(m.g_step.weight)
    sv = torch.randn(8, dtype=torch.float64)
    g = torch.tanh(m.g_step(sv))
    u, s, vh = torch.linalg.svd(m.weight.detach(), full_matrices=False)
    expect = m.weight + u[:, :4] @ torch.diag(s[:4] * g) @ vh[:4]
    torch.testing.assert_close(m.effective_weight(sv), expect)


def test_rank_zero_is_plain():
    m = ModulatedLinear(8, 8, 0, 4)
    torch.nn.init.normal_(m.fused)
    x = torch.randn(2, 8)
    torch.testing.assert_close(m(x, m.step_terms(torch.randn(1, 4))[0]), F.linear(x, m.weight))


def test_modulated_linear_matches_formula():
    torch.manual_seed(1)
    m = ModulatedLinear(16, 24, 4, 8).double()
    torch.nn.init.normal_(m.fused, std=0.3)
    torch.nn.init.normal_(m.U, std=0.3)
    torch.nn.init.normal_(m.g_step.weight, std=0.3)
    x, sv = torch.randn(5, 16, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    rms = x / torch.sqrt(x.square().mean(-1, keepdim=True) + 1e-5)
    g = torch.tanh(sv @ m.g_step.weight.T + rms @ m.G_x.T)  # [5, r]
    expect = torch.stack([(m.weight + m.U @ torch.diag(g[i]) @ m.V.T) @ x[i] for i in range(5)])
    torch.testing.assert_close(m(x, m.step_terms(sv[None])[0]), expect)
