"""CoreGQA: grouped-query attention for the recurrent core, the alternative to CART-MLA.

Each token caches full keys and values, `k_j = RoPE(W_K · norm(x_j))` and `v_j = W_V · norm(x_j)`
(n_kv_heads heads of head_dim, the whole head rotated), concatenated as one "latent"
[2 · n_kv_heads · head_dim] so that the same two KV sources as CART-MLA's serve it unchanged
(`looplm.model.mla`: anchored = keys from the prelude output once per token, per_step = keys from each
step's block input). The query and output projections carry the Ouroboros step/input modulation; the
key/value projection is a plain linear (as CART-MLA's down-projection), since the per-step cache holds
its output.

Why it exists: in the `tiny` trials (`benchmarks/LEARNING_LOG.md`) the core's only path between
tokens, multi-query attention over one 32-dim latent and a 16-dim RoPE key shared by all heads, was
what the loop lacked to learn CLRS-DFS, which needs exact positional reads; this block gives the core
the prelude/coda blocks' attention. It caches 2 · n_kv_heads · head_dim numbers per token and core
block (128 at `tiny`'s widths, against CART-MLA's 48).

Simplification: no absorbed form (keys and values are materialised per head; at these widths the
matmuls are small either way).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from looplm.config import ModelConfig
from looplm.model.layers import RMSNorm, apply_rope, attend
from looplm.model.modulation import ModulatedLinear, NormedInputModulatedLinear


class CoreGQA(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.H, self.Hkv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.kv_norm = RMSNorm(d, cfg.norm_eps)
        self.w_kv = nn.Linear(d, 2 * self.Hkv * self.hd, bias=False)  # [W_K ; W_V]
        self.w_q = NormedInputModulatedLinear(d, self.H * self.hd, cfg.mod_rank, d)
        self.w_o = ModulatedLinear(self.H * self.hd, d, cfg.mod_rank, d)

    def latents(self, x: torch.Tensor, rope) -> torch.Tensor:
        """x [B, T, d] -> [B, T, 2·Hkv·hd]: the rotated keys and the values of every KV head."""
        B, T, _ = x.shape
        kv = self.w_kv(self.kv_norm(x)).view(B, T, 2 * self.Hkv, self.hd).transpose(1, 2)  # [B, 2Hkv, T, hd]
        k, v = kv.split_with_sizes([self.Hkv, self.Hkv], dim=1)
        k = apply_rope(k, *rope)
        return torch.cat([k, v], dim=1).transpose(1, 2).reshape(B, T, -1)  # [B, T, 2Hkv·hd]

    def forward(self, x, terms, t, lat, rope, mask, bt):
        # x [B*T, d] (normed rows), bt = (B, T); lat [B, L, 2·Hkv·hd] (every visible key/value)
        B, T = bt
        L = lat.shape[1]
        q = self.w_q(x, terms[self.w_q][t]).view(B, T, self.H, self.hd).transpose(1, 2)  # [B, H, T, hd]
        q = apply_rope(q, *rope)
        k, v = lat.view(B, L, 2 * self.Hkv, self.hd).transpose(1, 2).split_with_sizes([self.Hkv, self.Hkv], dim=1)
        y = attend(q, k, v, mask)  # [B, H, T, hd]
        return self.w_o(y.transpose(1, 2).reshape(B * T, self.H * self.hd), terms[self.w_o][t])

    def modulated(self):
        return [self.w_q, self.w_o]

    def step_terms(self, vec: torch.Tensor) -> dict:
        return {self.w_q: self.w_q.step_terms(vec), self.w_o: self.w_o.step_terms(vec)}
