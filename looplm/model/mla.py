"""CART-MLA: context-anchored multi-head latent attention for the recurrent core, and its two KV sources.

Each key/value comes from a per-token latent `c_j = W_DKV · norm(x_j)` (kv_latent_dim) plus a shared
RoPE key `k^R_j = RoPE(W_KR · norm(x_j))` (rope_dim). Per step, `k = [W_UK^(t) c ; k^R]` and
`v = W_UV^(t) c` with step-modulated up-projections. The attention is computed in the *absorbed*
form (DeepSeek-V2): the query's no-RoPE part is mapped into latent space, `q_lat = W_UK^(t)ᵀ q_nope`,
so the scores are `q_lat · c_j + q_rope · k^R_j` and the output is `W_UV^(t) Σ_j p_j c_j`. That is
multi-query attention over the cached latents themselves: nothing per step or per head is cached.

Where `x_j` comes from is the variant, chosen by `ModelConfig.core_kv`:
- `AnchoredLatents`: x = the prelude output e (computed once per token; exact under adaptive exit,
  batching and parallel verification, and the cache does not grow with steps);
- `PerStepLatents`: x = the block's input at the current step (Huginn-style); cached per step, and a
  token that exited early lends its last latent to later steps.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from looplm.config import ModelConfig
from looplm.model.layers import RMSNorm, apply_rope, attend
from looplm.model.modulation import ModulatedLinear, NormedInputModulatedLinear, StepModulatedLinear


FEW_QUERIES = 16  # up to this many queries per row with a cache, CART-MLA runs as plain bmm's, not SDPA


def per_head(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, i] @ w [H, i, o] -> [B, H, T, o] with batch and time folded into one matmul per head.

    `x @ w` would broadcast w to [B, H, i, o] (a copy of the weights per row: 4x slower at B = 8,
    T = 256, and the main cost of batched decoding); einsum runs H matmuls of [B·T, i] @ [i, o].
    A single row (batch-1 decoding and speculative verification) is a single bmm, [H, T, i] @ [H, i, o]."""
    if x.shape[0] == 1:
        return torch.bmm(x[0], w)[None]
    return torch.einsum("bhti,hio->bhto", x, w)


class CartMLA(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, H = cfg.d_model, cfg.n_heads
        self.H, self.dn, self.dr, self.lat = H, cfg.head_dim, cfg.rope_dim, cfg.kv_latent_dim
        self.kv_norm = RMSNorm(d, cfg.norm_eps)
        self.w_dkv = nn.Linear(d, self.lat, bias=False)
        self.w_kr = nn.Linear(d, self.dr, bias=False)
        self.w_q = NormedInputModulatedLinear(d, H * (self.dn + self.dr), cfg.mod_rank, d)
        self.w_uk = StepModulatedLinear(self.lat, H * self.dn, cfg.mod_rank, d)
        self.w_uv = StepModulatedLinear(self.lat, H * self.dn, cfg.mod_rank, d)
        self.w_o = ModulatedLinear(H * self.dn, d, cfg.mod_rank, d)
        self.scale = 1.0 / math.sqrt(self.dn + self.dr)

    def latents(self, x: torch.Tensor, rope) -> torch.Tensor:
        """x [B, T, d] -> [B, T, lat + dr]: the latent and the rotated shared RoPE key."""
        h = self.kv_norm(x)
        kr = apply_rope(self.w_kr(h).unsqueeze(1), *rope).squeeze(1)  # [B, T, dr]
        return torch.cat([self.w_dkv(h), kr], dim=-1)

    def forward(self, x, terms, t, lat, rope, mask, bt):
        # x [B*T, d] (normed rows), bt = (B, T); lat [B, L, lat + dr] (every visible key), rope for the
        # T queries; terms: the step table's per-module step terms (see RecurrentCore.step_table)
        B, T = bt
        q = self.w_q(x, terms[self.w_q][t]).view(B, T, self.H, self.dn + self.dr).transpose(1, 2)  # [B, H, T, dn+dr]
        q_nope, q_rope = q.split_with_sizes([self.dn, self.dr], dim=-1)
        q_lat = per_head(q_nope, terms[self.w_uk][t])  # [B, H, T, dn] @ [H, dn, lat] -> [B, H, T, lat]
        query = torch.cat([q_lat, apply_rope(q_rope, *rope)], dim=-1)  # [B, H, T, lat + dr]
        if T <= FEW_QUERIES and mask is not None:  # decoding (or verifying a few drafts) with a cache: MQA as
            q2 = query.reshape(B, self.H * T, -1)  # two bmm's over the H·T query rows (fewer ops than SDPA)
            scores = torch.baddbmm(q2.new_empty(()), q2, lat.transpose(1, 2), beta=0.0, alpha=self.scale)  # [B, H*T, L]
            if not isinstance(mask, str):  # mask [B, 1, T, L]
                scores = scores.view(B, self.H, T, -1).masked_fill(~mask, float("-inf")).view(B, self.H * T, -1)
            o = torch.bmm(scores.softmax(-1), lat[..., : self.lat]).view(B, self.H, T, self.lat)
        else:  # keys double as values (one shared KV head): equal q/k/v widths let SDPA use its fused kernel;
            kv = lat.unsqueeze(1)  # [B, 1, L, lat + dr]; the RoPE part of the output is dropped
            o = attend(query, kv, kv, mask, scale=self.scale)[..., : self.lat]  # [B, H, T, lat]
        o = per_head(o, terms[self.w_uv][t]).transpose(1, 2).reshape(B * T, self.H * self.dn)  # [B, H, T, dn] -> [B*T, H*dn]
        return self.w_o(o, terms[self.w_o][t])

    def modulated(self):
        return [self.w_q, self.w_uk, self.w_uv, self.w_o]

    def step_terms(self, vec: torch.Tensor) -> dict:
        """Step terms of the four modulated projections for steps vec [S, d], in the shapes forward uses:
        W_UK(t) as [H, dn, lat] and W_UV(t)ᵀ as [H, lat, dn] per step."""
        shape = (vec.shape[0], self.H, self.dn, self.lat)
        return {self.w_q: self.w_q.step_terms(vec),
                self.w_uk: self.w_uk.step_terms(vec).view(shape).unbind(0),
                self.w_uv: self.w_uv.step_terms(vec).view(shape).transpose(2, 3).unbind(0),
                self.w_o: self.w_o.step_terms(vec)}


def _take(x: torch.Tensor, rows):
    return x if rows is None else x[rows]


class AnchoredLatents:
    """Latents from the prelude output, computed once per call and written to the cache."""

    def __init__(self, attns, e, rope, cache, pos: int):
        self.lat = []
        for b, attn in enumerate(attns):
            new = attn.latents(e, rope)  # [B, T, E]
            if cache is not None and isinstance(pos, torch.Tensor):  # static shapes: write at pos [T], read all
                new = cache.core[b].index_copy_(1, pos, new)
            elif cache is not None:
                cache.core[b][:, pos:pos + e.shape[1]] = new
                new = cache.core[b][:, :pos + e.shape[1]]
            self.lat.append(new)

    def at_step(self, b: int, t: int, z, rope, rows, exited):
        return _take(self.lat[b], rows)

    def finish(self, exit_steps) -> None:  # the anchored cache does not depend on steps
        pass


class PerStepLatents:
    """Latents from each step's block input; cached per step; exited tokens lend their last latent."""

    def __init__(self, attns, e, rope, cache, pos: int):
        self.attns, self.cache, self.pos, self.T = attns, cache, pos, e.shape[1]
        self.last: list[torch.Tensor | None] = [None] * len(attns)

    def at_step(self, b: int, t: int, z, rope, rows, exited):
        new = self.attns[b].latents(z, rope)  # [R, T, E]
        last = self.last[b]
        if last is not None and exited is not None:
            new = torch.where(exited.unsqueeze(-1), _take(last, rows), new)
        self.last[b] = new if rows is None else (last.index_copy(0, rows, new) if last is not None else None)
        if self.last[b] is None:  # first step ran on a subset: cannot happen (all rows run at t = 0)
            raise RuntimeError("per-step latents: first step must run on every row")
        if self.cache is None:
            return new
        buf, p, T = self.cache.core[b], self.pos, self.T
        if isinstance(p, torch.Tensor):  # static shapes (compiled fixed-depth decoding): write at p [T], read all
            return buf[:, t].index_copy_(1, p, new)
        if rows is None:
            buf[:, t, p:p + T] = new
            return buf[:, t, :p + T]
        buf[rows, t, p:p + T] = new
        return buf[rows, t, :p + T]

    def finish(self, exit_steps: torch.Tensor | int) -> None:
        """Every step at or after a token's exit holds its last latent: exit_steps [B, T] (or one int)."""
        if self.cache is None:
            return
        p, T = self.pos, self.T
        S = self.cache.n_steps
        if isinstance(p, torch.Tensor):  # static shapes: fixed depth only; later steps hold the last latent
            if not isinstance(exit_steps, int):
                raise ValueError("static-shape decoding runs at a fixed depth (no adaptive exit)")
            for b, buf in enumerate(self.cache.core):
                for t in range(exit_steps, S):
                    buf[:, t].index_copy_(1, p, self.last[b])
            return
        last = self.last[0]
        if isinstance(exit_steps, int):
            exit_steps = torch.full(last.shape[:2], exit_steps, dtype=torch.long, device=last.device)
        later = torch.arange(S, device=exit_steps.device)[None, :, None] >= exit_steps[:, None, :]  # [B, S, T]
        for b, buf in enumerate(self.cache.core):
            buf[:, :, p:p + T] = torch.where(later.unsqueeze(-1), self.last[b].unsqueeze(1), buf[:, :, p:p + T])


LATENT_SOURCES = {"anchored": AnchoredLatents, "per_step": PerStepLatents}
