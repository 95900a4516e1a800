"""A plain GPT baseline (nanoGPT-style) and a builder that matches its FLOPs to a RecursiveCausalLM.

The baseline: token embedding → `n_layers` pre-norm blocks (RMSNorm, RoPE, grouped-query attention
through PyTorch SDPA with a causal mask, SwiGLU or GELU MLP, residuals, no biases) → RMSNorm → LM head
tied to the embedding. `greedy_decode` decodes with or without a preallocated KV cache.

FLOPs follow looplm's convention (`RecursiveCausalLM.flops_per_token`): 2 FLOPs per multiply-add of
every matmul, attention over the average causal context (seq_len + 1) / 2, training = 3x forward.

`matched_config(cfg, steps, seq_len)` chooses the baseline so that its forward FLOPs per token equal the
looplm model's at `steps` recurrence steps and `seq_len` tokens:
1. width, heads, head width, KV heads, vocabulary and context are copied from the looplm config (the
   same matmul shapes, so only depth and the recurrence machinery differ);
2. the number of layers is the target (minus the LM head) divided by the cost of one layer with the
   default MLP width (looplm's prelude/coda `mlp_hidden` for SwiGLU, 4·d for GELU), rounded;
3. the MLP width is then solved for so the totals agree, rounded to a multiple of 8 (the remaining
   error is below 4 · 3d · n_layers multiply-adds, well under 1% for the presets).

Simplifications: equal-length prompts only (no padding) in `greedy_decode`; no dropout; no weight
decay groups or optimiser code (benchmarks bring their own).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from looplm.config import ModelConfig
from looplm.model.recursive import flops_per_token as looplm_flops_per_token

MLP_KINDS = ("swiglu", "gelu")


@dataclass(frozen=True)
class PlainGPTConfig:
    vocab_size: int = 2048
    max_seq_len: int = 512
    d_model: int = 128
    n_layers: int = 8
    n_heads: int = 4
    n_kv_heads: int = 4  # = n_heads: multi-head attention; fewer: grouped-query attention
    head_dim: int = 32
    mlp: str = "swiglu"  # "swiglu" (gate, up, down) or "gelu" (fc, proj)
    mlp_hidden: int = 352
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads", "n_kv_heads",
                     "head_dim", "mlp_hidden"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"PlainGPTConfig.{name}={v!r} is invalid: must be an integer >= 1")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"PlainGPTConfig.n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"PlainGPTConfig.head_dim={self.head_dim} must be even (RoPE rotates pairs)")
        if self.mlp not in MLP_KINDS:
            raise ValueError(f"PlainGPTConfig.mlp={self.mlp!r} is invalid: allowed {', '.join(MLP_KINDS)}")


# ---------------------------------------------------------------------------------------------- model
def rope_tables(dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    ang = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # [L, dim/2]
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x [B, H, T, hd]; cos, sin [T, hd/2]; rotates (first half, second half) pairs
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: PlainGPTConfig):
        super().__init__()
        self.H, self.Hkv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        d = cfg.d_model
        self.wq = nn.Linear(d, self.H * self.hd, bias=False)
        self.wk = nn.Linear(d, self.Hkv * self.hd, bias=False)
        self.wv = nn.Linear(d, self.Hkv * self.hd, bias=False)
        self.wo = nn.Linear(self.H * self.hd, d, bias=False)

    def forward(self, x, cos, sin, kv=None, pos: int = 0):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.H, self.hd).transpose(1, 2)  # [B, H, T, hd]
        k = self.wk(x).view(B, T, self.Hkv, self.hd).transpose(1, 2)  # [B, Hkv, T, hd]
        v = self.wv(x).view(B, T, self.Hkv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv is not None:  # write the new keys/values, then attend over everything cached so far
            kbuf, vbuf = kv
            kbuf[:, :, pos:pos + T] = k
            vbuf[:, :, pos:pos + T] = v
            k, v = kbuf[:, :, :pos + T], vbuf[:, :, :pos + T]
        gqa = self.Hkv != self.H
        if T == 1:  # one new token sees every cached key
            y = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
        elif pos == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:  # a chunk after a cached prefix: causal with an offset
            qpos = torch.arange(pos, pos + T, device=x.device)[:, None]
            mask = torch.arange(pos + T, device=x.device)[None, :] <= qpos  # [T, pos + T]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.H * self.hd))  # [B, T, d]


class MLP(nn.Module):
    def __init__(self, cfg: PlainGPTConfig):
        super().__init__()
        d, h = cfg.d_model, cfg.mlp_hidden
        self.kind = cfg.mlp
        self.up = nn.Linear(d, h, bias=False)
        self.gate = nn.Linear(d, h, bias=False) if cfg.mlp == "swiglu" else None
        self.down = nn.Linear(h, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: PlainGPTConfig):
        super().__init__()
        self.eps = cfg.norm_eps
        self.attn_norm = nn.Parameter(torch.ones(cfg.d_model))
        self.attn = Attention(cfg)
        self.mlp_norm = nn.Parameter(torch.ones(cfg.d_model))
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, kv=None, pos: int = 0):
        d = x.shape[-1]
        x = x + self.attn(F.rms_norm(x, (d,), self.attn_norm, self.eps), cos, sin, kv, pos)
        return x + self.mlp(F.rms_norm(x, (d,), self.mlp_norm, self.eps))


@dataclass
class PlainCache:
    """Preallocated keys/values per layer, [B, Hkv, max_len, hd] each, filled up to `pos`."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    max_len: int
    pos: int = 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for pair in self.kv for t in pair)


class PlainGPT(nn.Module):
    def __init__(self, cfg: PlainGPTConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.Parameter(torch.ones(cfg.d_model))
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight  # tied
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.config.init_std
        out_std = std / math.sqrt(2 * self.config.n_layers)
        nn.init.normal_(self.embed.weight, std=std)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and m is not self.lm_head:
                nn.init.normal_(m.weight, std=out_std if name.endswith(("wo", "down")) else std)

    def new_cache(self, batch: int, max_len: int) -> PlainCache:
        cfg = self.config
        if max_len > cfg.max_seq_len:
            raise ValueError(f"cache length {max_len} exceeds the model context max_seq_len={cfg.max_seq_len}")
        p = self.embed.weight
        shape = (batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        kv = [(torch.zeros(shape, device=p.device, dtype=p.dtype), torch.zeros(shape, device=p.device, dtype=p.dtype))
              for _ in range(cfg.n_layers)]
        return PlainCache(kv=kv, max_len=max_len)

    def forward(self, ids: torch.Tensor, cache: PlainCache | None = None, last_only: bool = False) -> torch.Tensor:
        """ids [B, T] -> logits [B, T, V] ([B, 1, V] with last_only); with a cache, ids follow cache.pos."""
        B, T = ids.shape
        pos = cache.pos if cache is not None else 0
        limit = cache.max_len if cache is not None else self.config.max_seq_len
        if pos + T > limit:
            raise ValueError(f"sequence of {pos + T} tokens exceeds the limit {limit}")
        x = self.embed(ids)
        cos, sin = self.cos[pos:pos + T].to(x.dtype), self.sin[pos:pos + T].to(x.dtype)
        for i, blk in enumerate(self.blocks):
            x = blk(x, cos, sin, cache.kv[i] if cache is not None else None, pos)
        if cache is not None:
            cache.pos = pos + T
        x = x[:, -1:] if last_only else x
        return self.lm_head(F.rms_norm(x, (x.shape[-1],), self.norm, self.config.norm_eps))

    def flops_per_token(self, seq_len: int | None = None, training: bool = False) -> int:
        return flops_per_token(self.config, seq_len, training)

    def kv_cache_bytes_per_token(self, bytes_per_elem: int = 4) -> int:
        return kv_cache_bytes_per_token(self.config, bytes_per_elem)


@torch.no_grad()
def greedy_decode(model: PlainGPT, ids: torch.Tensor, max_new_tokens: int, use_cache: bool = True) -> torch.Tensor:
    """Greedy continuation of equal-length prompts ids [B, T] -> new tokens [B, max_new_tokens].
    Without a cache every new token re-runs the whole sequence (the reference)."""
    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache(ids.shape[0], ids.shape[1] + max_new_tokens) if use_cache else None
        logits = model(ids, cache, last_only=True)
        new = []
        for i in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1, keepdim=True)  # [B, 1]
            new.append(nxt)
            if i == max_new_tokens - 1:
                break
            if cache is not None:
                logits = model(nxt, cache, last_only=True)
            else:
                ids = torch.cat([ids, nxt], dim=1)
                logits = model(ids, last_only=True)
        return torch.cat(new, dim=1) if new else ids.new_zeros(ids.shape[0], 0)
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------- accounting
def layer_macs(cfg: PlainGPTConfig, ctx: float) -> tuple[float, float]:
    """(fixed, per MLP unit) multiply-adds per token of one block at average context ctx."""
    d, H, Hkv, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    fixed = 2 * d * H * hd + 2 * d * Hkv * hd + 2 * H * hd * ctx  # q, o; k, v; QKᵀ and AV
    return fixed, (3 if cfg.mlp == "swiglu" else 2) * d


def flops_per_token(cfg: PlainGPTConfig, seq_len: int | None = None, training: bool = False) -> int:
    """Matmul FLOPs per token (2 per multiply-add), attention over (seq_len + 1) / 2 keys; training = 3x."""
    L = cfg.max_seq_len if seq_len is None else seq_len
    fixed, per_unit = layer_macs(cfg, (L + 1) / 2)
    fwd = 2 * (cfg.n_layers * (fixed + per_unit * cfg.mlp_hidden) + cfg.d_model * cfg.vocab_size)
    return int(fwd * (3 if training else 1))


def kv_cache_bytes_per_token(cfg: PlainGPTConfig, bytes_per_elem: int = 4) -> int:
    return cfg.n_layers * 2 * cfg.n_kv_heads * cfg.head_dim * bytes_per_elem


def matched_config(cfg: ModelConfig, steps: int, seq_len: int, mlp: str = "swiglu",
                   n_kv_heads: int | None = None) -> PlainGPTConfig:
    """The plain GPT whose forward FLOPs per token equal `cfg`'s at `steps` steps and `seq_len` tokens
    (see the module docstring for how depth and MLP width are chosen). n_kv_heads defaults to cfg's."""
    target = looplm_flops_per_token(cfg, steps, seq_len) / 2  # multiply-adds
    base = PlainGPTConfig(vocab_size=cfg.vocab_size, max_seq_len=cfg.max_seq_len, d_model=cfg.d_model,
                          n_layers=1, n_heads=cfg.n_heads, n_kv_heads=n_kv_heads or cfg.n_kv_heads,
                          head_dim=cfg.head_dim, mlp=mlp, mlp_hidden=cfg.mlp_hidden if mlp == "swiglu"
                          else 4 * cfg.d_model, rope_theta=cfg.rope_theta, norm_eps=cfg.norm_eps,
                          init_std=cfg.init_std)
    body = target - cfg.d_model * cfg.vocab_size
    fixed, per_unit = layer_macs(base, (seq_len + 1) / 2)
    n_layers = max(1, round(body / (fixed + per_unit * base.mlp_hidden)))
    hidden = 8 * round((body / n_layers - fixed) / per_unit / 8)
    if hidden < 8:
        raise ValueError(f"cannot match {2 * target:.3g} FLOPs/token: one layer of width d_model={cfg.d_model} "
                         f"already costs more than the looplm body (steps={steps}, seq_len={seq_len})")
    return dataclasses.replace(base, n_layers=n_layers, mlp_hidden=hidden)


def matched_plain_gpt(cfg: ModelConfig, steps: int, seq_len: int, **kw) -> PlainGPT:
    """A freshly initialised PlainGPT of `matched_config(cfg, steps, seq_len, **kw)`."""
    return PlainGPT(matched_config(cfg, steps, seq_len, **kw))
