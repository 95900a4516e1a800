"""Ouroboros weight modulation: a low-rank, step- and input-conditioned correction of a core linear.

    W_eff(t, x) · x = W x + U · diag(g(t, x)) · Vᵀ x
    U = U_r Σ_r^½,  V = V_r Σ_r^½        (truncated SVD of W at init, rank r)
    g(t, x) = tanh(G_e · step_emb(t) + G_x · rms(x))     (G_e, G_x start at zero)

At init g = 0, so the layer is exactly the plain linear; training learns to rescale W's top-r singular
directions per step and per input. `StepModulatedLinear` conditions g on the step only, so its
effective weight is materialised once per step (used for CART-MLA's up-projections, whose latent
cache must stay valid across steps). `reinit_from_weight()` recomputes U, V from the current W (the
optional "re-initialise after warm-up" of docs/model.md).

Speed: the step-only part `G_e · step_emb(t)` (and a StepModulatedLinear's whole weight) is computed
for all steps at once by `step_terms` (see `RecurrentCore.step_table`). In `ModulatedLinear`, W, Vᵀ
and G_x live in one parameter `fused = [W ; Vᵀ ; G_x]` so a single matmul gives W x, Vᵀ x and G_x x
(G_x · rms(x) = (G_x · x) / rms-scale(x)); a second, rank-r matmul applies U and adds W x (addmm).
`step_terms` also hands out `fused` and U transposed into contiguous [in, out] copies, once per call:
a row times a contiguous [in, out] matrix streams the weights, while the transposed view of the
[out, in] layout is 2-3x slower once the weights are out of cache (decoding reads every weight once
per token).
Inputs are taken as rows [N, d_in] (other shapes are flattened and restored): on CPU a 2-D matmul
dispatches half the ops of a batched one, and decoding is dispatch-bound.

Simplification: U and V are ordinary trainable parameters after init (not re-orthogonalised).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from looplm.model.layers import rms_denominator


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """U [out, r], V [in, r] with U Vᵀ = the best rank-r approximation of weight [out, in]."""
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(weight.dtype), (vh[:rank].T * root).to(weight.dtype)


class ModulatedLinear(nn.Module):
    """y = W x + U (g ⊙ Vᵀ x), g = tanh(step_term + G_x rms(x)); x [..., d_in], step_term [r]."""

    def __init__(self, d_in: int, d_out: int, rank: int, d_step: int, eps: float = 1e-5):
        super().__init__()
        self.d_out, self.rank, self.eps, self.root_d = d_out, rank, eps, math.sqrt(d_in)
        self.register_buffer("floor", torch.tensor(math.sqrt(d_in * eps)), persistent=False)  # see RMSNorm
        self.fused = nn.Parameter(torch.empty(d_out + 2 * rank, d_in))  # [W ; Vᵀ ; G_x]
        self.U = nn.Parameter(torch.zeros(d_out, rank))
        self.g_step = nn.Linear(d_step, rank, bias=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.fused[: self.d_out]

    @property
    def V(self) -> torch.Tensor:  # [in, r]
        return self.fused[self.d_out: self.d_out + self.rank].T

    @property
    def G_x(self) -> torch.Tensor:  # [r, in]
        return self.fused[self.d_out + self.rank:]

    @torch.no_grad()
    def reinit_from_weight(self) -> None:
        """U, V <- SVD factors of the current W; the gate projections are left as they are."""
        if self.rank:
            u, v = svd_factors(self.weight, self.rank)
            self.U.copy_(u)
            self.fused[self.d_out: self.d_out + self.rank] = v.T

    def step_terms(self, step_vecs: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per step t of step_vecs [S, d_step]: (G_e step_emb(t) [r], [W ; Vᵀ ; G_x]ᵀ, Uᵀ). The transposed
        weights are taken once per call, so each use dispatches a bare mm/addmm (no transpose per use)."""
        wt, ut = self.fused.t().contiguous(), self.U.t().contiguous()
        return [(st, wt, ut) for st in self.g_step(step_vecs).unbind(0)]

    def forward(self, x: torch.Tensor, term: tuple) -> torch.Tensor:
        if x.dim() != 2:  # [..., d_in]: as rows [N, d_in] (2-D matmuls dispatch the fewest ops)
            return self.forward(x.reshape(-1, x.shape[-1]), term).view(*x.shape[:-1], self.d_out)
        step_term, wt, ut = term
        if not self.rank:
            return torch.mm(x, wt)
        y, vx, gx = torch.mm(x, wt).split_with_sizes([self.d_out, self.rank, self.rank], dim=-1)
        rd = rms_denominator(x, self.floor)  # √d · rms_ε(x), [N, 1]
        g = torch.tanh(torch.addcdiv(step_term, gx, rd, value=self.root_d))  # step_term + G_x rms(x), [N, r]
        return torch.addmm(y, g * vx, ut)  # y + U (g ⊙ Vᵀx)


class NormedInputModulatedLinear(ModulatedLinear):
    """A ModulatedLinear whose input already comes out of an RMSNorm: g = tanh(step_term + G_x x).

    norm(x) is taken to be x itself (exact while the norm's weight is 1, as at init); this saves the
    per-token RMS of the input for the query and MLP-input projections of the core blocks."""

    def forward(self, x: torch.Tensor, term: tuple) -> torch.Tensor:
        if x.dim() != 2:
            return self.forward(x.reshape(-1, x.shape[-1]), term).view(*x.shape[:-1], self.d_out)
        step_term, wt, ut = term
        if not self.rank:
            return torch.mm(x, wt)
        y, vx, gx = torch.mm(x, wt).split_with_sizes([self.d_out, self.rank, self.rank], dim=-1)
        return torch.addmm(y, torch.tanh(step_term + gx) * vx, ut)


class StepModulatedLinear(nn.Module):
    """W_eff(t) = W + U diag(g(t)) Vᵀ with g(t) = tanh(G_e step_emb(t)); `step_terms` gives W_eff per step."""

    def __init__(self, d_in: int, d_out: int, rank: int, d_step: int):
        super().__init__()
        self.rank = rank
        self.weight = nn.Parameter(torch.empty(d_out, d_in))
        self.U = nn.Parameter(torch.zeros(d_out, rank))
        self.V = nn.Parameter(torch.zeros(d_in, rank))
        self.g_step = nn.Linear(d_step, rank, bias=False)

    @torch.no_grad()
    def reinit_from_weight(self) -> None:
        if self.rank:
            u, v = svd_factors(self.weight, self.rank)
            self.U.copy_(u)
            self.V.copy_(v)

    def step_terms(self, step_vecs: torch.Tensor) -> torch.Tensor:
        """W_eff for every step: [S, d_step] -> [S, out, in]."""
        if not self.rank:
            return self.weight.expand(step_vecs.shape[0], *self.weight.shape)
        g = torch.tanh(self.g_step(step_vecs))  # [S, r]
        return self.weight + (self.U * g[:, None, :]) @ self.V.T

    def effective_weight(self, step_vec: torch.Tensor) -> torch.Tensor:
        return self.step_terms(step_vec[None])[0]

    def forward(self, x: torch.Tensor, w_eff: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w_eff)
