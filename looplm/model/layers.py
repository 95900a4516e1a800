"""Plain building blocks: RMSNorm, rotary embeddings, SwiGLU, grouped-query attention, the GQA block.

Prelude and coda are stacks of `Block` (pre-norm, residual, GQA + SwiGLU, RoPE, no biases). Attention
goes through PyTorch SDPA. Caching is explicit: a block receives the layer's key/value buffers and the
current cache length and writes its new keys/values in place (see `cache.py`).

Simplifications: no dropout (these models are small and data is plentiful); RoPE tables are built
once up to `max_seq_len` and indexed by explicit position ids, so left-padded batches rotate every
sequence exactly as if it were alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from looplm.config import ModelConfig


class RMSNorm(nn.Module):
    """x / rms_ε(x) · weight, rms_ε(x) = √(mean(x²) + ε), computed as √d · x / hypot(‖x‖₂, √(d·ε)).

    Written out in the fewest, cheapest CPU ops (decoding is dispatch-bound): one norm, one hypot, one
    addcdiv, one mul, about half the time of square-mean-add-rsqrt and of F.rms_norm at one token. The
    constants are 0-dim buffers because a Python float operand costs a tensor allocation per call
    (√(d·ε) is rounded to float32 at construction, so ε is exact to about 1e-7 relative even in a
    float64 model). Statistics in float32 for low-precision inputs."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps, self.root_d = eps, math.sqrt(dim)
        self.weight = nn.Parameter(torch.ones(dim))
        self.register_buffer("floor", torch.tensor(math.sqrt(dim * eps)), persistent=False)
        self.register_buffer("zero", torch.zeros(()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        y = torch.addcdiv(self.zero, xf, rms_denominator(xf, self.floor), value=self.root_d) * self.weight
        return y if y.dtype == x.dtype else y.to(x.dtype)


def rms_denominator(x: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """√d · rms_ε(x) = hypot(‖x‖₂, √(d·ε)) over the last dim, [..., 1]; floor = √(d·ε) as a tensor."""
    return torch.hypot(torch.linalg.vector_norm(x, dim=-1, keepdim=True), floor)


def rms(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Weightless RMS normalisation over the last dimension (written out, like RMSNorm.forward)."""
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)


class Rotary(nn.Module):
    """Rotary embeddings of one width as unit complex numbers e^{i·p·θ_k}; `forward(pos)` gathers them
    for [B, T] positions. Pairs are adjacent features (x[2k], x[2k+1]), rotated by angle p·θ_k."""

    def __init__(self, dim: int, max_len: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # [L, dim/2]
        # a real buffer (module.to(dtype) would cast a complex one to real); made complex per call
        self.register_buffer("angles", angles, persistent=False)

    def forward(self, pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor]:
        # pos [B, T] -> (freqs [B, 1, T, dim/2],) broadcast over heads; complex128 only for float64 models
        a = self.angles[pos].unsqueeze(1).to(torch.float64 if dtype == torch.float64 else torch.float32)
        if torch.compiler.is_compiling():  # inductor generates no code for complex ops: (cos, sin) stacked
            return (torch.stack((a.cos(), a.sin()), dim=-1),)
        return (torch.polar(torch.ones_like(a), a),)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of the last dim of x [..., T, dim] by complex multiplication (eager: fewest
    dispatched ops); under torch.compile the same rotation in real arithmetic, which inductor fuses."""
    if torch.compiler.is_compiling():
        x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
        cos, sin = (freqs.real, freqs.imag) if freqs.is_complex() else freqs.unbind(-1)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    xf = x if x.dtype in (torch.float32, torch.float64) else x.float()  # no complex bf16
    out = torch.view_as_real(torch.view_as_complex(xf.unflatten(-1, (-1, 2))) * freqs).flatten(-2)
    return out if out.dtype == x.dtype else out.to(x.dtype)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)  # [W_gate ; W_up]
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor, wt: dict | None = None) -> torch.Tensor:
        gate, up = project(x, self.gate_up, wt).chunk(2, dim=-1)
        return project(F.silu(gate) * up, self.down, wt)


@torch.no_grad()
def transposed_weights(modules, keep: dict | None = None) -> dict:
    """{linear: its weight as a contiguous [in, out] copy} for bias-free nn.Linear modules (inference
    only: no gradients). A single row times a contiguous [in, out] matrix streams the weights once; the
    [out, in] layout's transposed view runs 2-3x slower once the weights are out of cache (decoding a
    token reads every weight once). With `keep` (a dict owned by the caller), the copies are written
    into the buffers of the previous call when shape, dtype and device still match: always refreshed
    from the current weights, but without a fresh multi-MB allocation each call, whose page faults
    nearly double the cost (`tiny`: 4.6 ms per call with fresh copies, about 2.5 ms into kept buffers)."""
    out = {}
    for m in modules:
        w = m.weight
        buf = None if keep is None else keep.get(m)
        if buf is None or buf.shape != w.T.shape or buf.dtype != w.dtype or buf.device != w.device:
            with torch.inference_mode(False):  # a normal tensor: refreshable in and out of inference mode
                buf = torch.empty(w.shape[1], w.shape[0], dtype=w.dtype, device=w.device)
            if keep is not None:
                keep[m] = buf
        out[m] = buf.copy_(w.t())
    return out


def project(x: torch.Tensor, m: nn.Linear, wt: dict | None) -> torch.Tensor:
    """x [..., in] through the bias-free linear m: via wt[m] from `transposed_weights` when given."""
    return F.linear(x, m.weight) if wt is None else x @ wt[m]


def attend(q, k, v, mask, scale=None):
    """SDPA with shared KV heads (GQA/MQA). mask: None (plain causal over equal lengths), "none"
    (attend to everything given: one new token with an unpadded cache) or a bool [B, 1, T, L]."""
    if torch.compiler.is_compiling() and isinstance(mask, torch.Tensor) and q.shape[2] <= 16:
        return _attend_few(q, k, v, mask, scale)
    if isinstance(mask, str):
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)


def _attend_few(q, k, v, mask, scale=None):
    """Masked GQA for a few queries as two batched matmuls and a softmax (what torch.compile fuses best;
    its CPU SDPA kernel costs about 95 us per call at one query): q [B, H, T, hd], k, v [B, Hkv, L, hd],
    mask [B, 1, T, L]. Query head h reads KV head h // (H / Hkv)."""
    B, H, T, hd = q.shape
    Hkv = k.shape[1]
    q = q.reshape(B, Hkv, H // Hkv * T, hd)  # [B, Hkv, g*T, hd]: the g query heads of each KV head
    scores = (q @ k.transpose(-1, -2)) * (scale if scale is not None else hd ** -0.5)  # [B, Hkv, g*T, L]
    scores = scores.view(B, Hkv, H // Hkv, T, -1).masked_fill(~mask.unsqueeze(1), float("-inf"))
    return (scores.softmax(-1).view(B, Hkv, H // Hkv * T, -1) @ v).view(B, H, T, hd)


class GQAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        d = cfg.d_model
        self.wqkv = nn.Linear(d, (self.n_heads + 2 * self.n_kv) * self.hd, bias=False)  # [Wq ; Wk ; Wv]
        self.wo = nn.Linear(self.n_heads * self.hd, d, bias=False)

    def forward(self, x, rope, mask, bt, kv=None, pos: int = 0, wt=None):
        B, T = bt  # x [B*T, d] rows; wt: optional transposed weights (see `transposed_weights`)
        qkv = project(x, self.wqkv, wt).view(B, T, self.n_heads + 2 * self.n_kv, self.hd).transpose(1, 2)  # [B, H+2Hkv, T, hd]
        qk, v = qkv.split_with_sizes([self.n_heads + self.n_kv, self.n_kv], dim=1)
        q, k = apply_rope(qk, *rope).split_with_sizes([self.n_heads, self.n_kv], dim=1)  # [B, H, T, hd], [B, Hkv, T, hd]
        if kv is not None and isinstance(pos, torch.Tensor):  # static shapes (compiled decoding): write at
            kv[0].index_copy_(2, pos, k)  # positions pos [T], attend over the whole buffer (the mask hides the rest)
            kv[1].index_copy_(2, pos, v)
            k, v = kv
        elif kv is not None:  # write into the layer's cache buffers, then read everything so far
            kbuf, vbuf = kv
            kbuf[:, :, pos:pos + T] = k
            vbuf[:, :, pos:pos + T] = v
            k, v = kbuf[:, :, :pos + T], vbuf[:, :, :pos + T]
        y = attend(q, k, v, mask)  # [B, H, T, hd]
        return project(y.transpose(1, 2).reshape(B * T, self.n_heads * self.hd), self.wo, wt)  # [B*T, d]


class Block(nn.Module):
    """Pre-norm transformer block with GQA and SwiGLU (prelude and coda)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = GQAttention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.mlp_hidden)

    def forward(self, x, rope, mask, kv=None, pos: int = 0, wt=None):
        B, T, d = x.shape
        x = x.reshape(B * T, d)  # rows [N, d]: 2-D matmuls dispatch the fewest ops (decoding is dispatch-bound)
        x = x + self.attn(self.attn_norm(x), rope, mask, (B, T), kv, pos, wt)
        return (x + self.mlp(self.mlp_norm(x), wt)).view(B, T, d)

    def linears(self) -> list[nn.Linear]:
        return [self.attn.wqkv, self.attn.wo, self.mlp.gate_up, self.mlp.down]


def sinusoidal(t, dim: int, device=None) -> torch.Tensor:
    """Sinusoidal encoding of (non-negative, unbounded) step indices: an int -> [dim], a sequence -> [S, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=device) / half)
    ts = torch.as_tensor(t, dtype=torch.float32, device=device)
    ang = ts[..., None] * freqs
    return torch.cat([ang.sin(), ang.cos()], dim=-1)
