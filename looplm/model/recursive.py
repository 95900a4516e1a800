"""RecursiveCausalLM: prelude → recurrent core unrolled n steps → coda, with AdaExit and speculative heads.

    e   = norm(prelude(embed(tokens)))
    s_0 = 0  (or σ·N(0, I) when training with init noise)
    for t in 0..n-1:
        z   = W_adapt [s_t ; e] + step_emb(t)
        y   = core_B(core_A(z))                      # CART-MLA or GQA, + SwiGLU; Ouroboros-modulated
        α_t = sigmoid(scale · (b + W_g step_emb(t)))  # depth gate, per channel
        s_{t+1} = s_t + α_t ⊙ (y − s_t)
        λ_t = sigmoid(halt(rms(stopgrad(s_{t+1}))))   # AdaExit
    h = norm(coda(s_n));  logits = h Eᵀ (tied);  draft_k = lm_head(h + SiLU(P_k h + b_k))

`forward` takes the number of steps explicitly. Truncated backprop: only the last `grad_steps` steps
build a graph. Adaptive exit (`halt_threshold`): a token exits at the first step t + 1 >= min_steps
with λ_t > τ; its state is frozen; rows whose tokens all exited leave the batch for the remaining
steps, so compute really shrinks. `exit_mask` (bool [B, T]) limits exits to some positions (generation
runs the prompt at full depth and lets only the generated tokens exit); `force_exit` (bool [B, T]) makes
positions exit at step `min_steps` whatever λ says (training for mixed-depth contexts, `exit_share`).
Incremental decoding passes a `ModelCache`.

Design choices (see docs/model.md): e is RMS-normed before injection; W_adapt starts as [small noise | I]
(or [gain * I | I] with `adapter_state_gain`, so the state flows through the steps from the start) so
that step 0 sees e; W_g starts at zero (α = sigmoid(scale · b)); speculative projections start at
zero; output projections are scaled by 1/sqrt(2 · effective depth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from looplm.config import ModelConfig
from looplm.model.cache import ModelCache, kv_bytes_per_token
from looplm.model.layers import Block, RMSNorm, Rotary, project, rms, sinusoidal, transposed_weights
from looplm.model.core_gqa import CoreGQA
from looplm.model.mla import LATENT_SOURCES, CartMLA
from looplm.model.modulation import ModulatedLinear, NormedInputModulatedLinear, StepModulatedLinear


@dataclass
class ModelOutput:
    logits: torch.Tensor  # [B, T, V] (or [B, 1, V] with last_only)
    hidden: torch.Tensor | None = None  # final normed coda output [B, T, d]
    spec_logits: torch.Tensor | None = None  # [B, T, K, V]
    states: list[torch.Tensor] | None = None  # s_0..s_n, each [B, T, d]
    halt_probs: torch.Tensor | None = None  # [n, B, T]
    exit_steps: torch.Tensor | None = None  # [B, T] steps each token ran


@dataclass
class StepTable:
    """Everything that depends on the step index only, for steps 0..S-1 (computed once per call)."""

    vec: list[torch.Tensor]  # step_emb(t), S x [d]
    alpha: list[torch.Tensor]  # depth gate, S x [d]
    terms: dict  # modulated module -> S x its step terms (see ModulatedLinear / CartMLA.step_terms)
    adapt: list[torch.Tensor]  # the s-half of the adapter transposed, W_sᵀ [d, d] (the same tensor S times)


class ModulatedSwiGLU(nn.Module):
    """SwiGLU whose input projection [W_gate ; W_up] is one modulated linear (its SVD spans both)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, h, r = cfg.d_model, cfg.core_mlp_hidden, cfg.mod_rank
        self.gate_up = NormedInputModulatedLinear(d, 2 * h, r, d)
        self.down = ModulatedLinear(h, d, r, d)

    def forward(self, x, terms, t):
        gate, up = self.gate_up(x, terms[self.gate_up][t]).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up, terms[self.down][t])

    def modulated(self):
        return [self.gate_up, self.down]


CORE_ATTENTIONS = {"cart_mla": CartMLA, "gqa": CoreGQA}  # ModelConfig.core_attn -> the core's attention


class CoreBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = CORE_ATTENTIONS[cfg.core_attn](cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = ModulatedSwiGLU(cfg)

    def forward(self, z, terms, t, lat, rope, mask):
        B, T, d = z.shape
        z = z.reshape(B * T, d)  # rows [N, d]: the block's linears run as 2-D matmuls
        z = z + self.attn(self.attn_norm(z), terms, t, lat, rope, mask, (B, T))
        z = z + self.mlp(self.mlp_norm(z), terms, t)
        return z.view(B, T, d)


class StepEmbedding(nn.Module):
    """step_emb(t) = MLP(sinusoidal(t)): defined for every t, including depths never trained."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dim = cfg.step_emb_dim
        self.fc1 = nn.Linear(cfg.step_emb_dim, cfg.d_model)
        self.fc2 = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, ts) -> torch.Tensor:
        x = sinusoidal(ts, self.dim, self.fc1.weight.device).to(self.fc1.weight.dtype)
        return self.fc2(F.silu(self.fc1(x)))  # [S, d] for a sequence of steps


class RecurrentCore(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.adapter = nn.Linear(2 * d, d, bias=False)
        self.step_emb = StepEmbedding(cfg)
        self.blocks = nn.ModuleList(CoreBlock(cfg) for _ in range(cfg.n_core))
        self.gate_bias = nn.Parameter(torch.full((d,), float(cfg.depth_gate_bias)))
        self.gate_proj = nn.Linear(d, d, bias=False)
        self.halt = nn.Linear(d, 1)

    def modulated(self):
        return [m for blk in self.blocks for m in blk.attn.modulated() + blk.mlp.modulated()]

    def step_table(self, steps: int) -> StepTable:
        vec = self.step_emb(range(steps))  # [S, d]
        alpha = torch.sigmoid(self.cfg.depth_gate_scale * (self.gate_bias + self.gate_proj(vec)))
        terms = {}
        for blk in self.blocks:
            terms.update(blk.attn.step_terms(vec))
            terms.update({m: m.step_terms(vec) for m in blk.mlp.modulated()})
        adapt = self.adapter.weight[:, : self.cfg.d_model].t().contiguous()
        return StepTable(vec.unbind(0), alpha.unbind(0), terms, [adapt] * steps)

    def inject(self, e: torch.Tensor) -> torch.Tensor:
        """The e-half of the adapter, W_e e: constant across steps, so computed once per call."""
        return F.linear(e, self.adapter.weight[:, e.shape[-1]:])

    def step(self, s, e_in, t, tbl: StepTable, lat_src, rope, mask, rows, exited):
        """One recurrence step on rows `rows` (None = all): returns s_{t+1} before freezing.
        z = W_adapt [s ; e] + step_emb(t), with the e-half W_e e precomputed (e_in = inject(e))."""
        z = s @ tbl.adapt[t] + e_in + tbl.vec[t]
        for b, block in enumerate(self.blocks):
            lat = lat_src.at_step(b, t, z, rope, rows, exited)
            z = block(z, tbl.terms, t, lat, rope, mask)
        alpha = tbl.alpha[t]
        if not (s.dtype == z.dtype == alpha.dtype):  # autocast: promote as s + alpha * (z - s) would (fp32 state)
            dt = torch.promote_types(torch.promote_types(s.dtype, z.dtype), alpha.dtype)
            s, z, alpha = s.to(dt), z.to(dt), alpha.to(dt)
        return torch.lerp(s, z, alpha)  # s + alpha * (z - s)

    def halt_prob(self, s: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.halt(rms(s.detach()))).squeeze(-1)


def _sub(x, rows):
    return x if rows is None or x is None or isinstance(x, str) else x[rows]


class RecursiveCausalLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = cfg = config
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.prelude = nn.ModuleList(Block(cfg) for _ in range(cfg.n_prelude))
        self.prelude_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.core = RecurrentCore(cfg)
        self.coda = nn.ModuleList(Block(cfg) for _ in range(cfg.n_coda))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight  # tied
        self.speculative_projs = nn.ModuleList(nn.Linear(cfg.d_model, cfg.d_model, bias=False)
                                               for _ in range(cfg.n_spec_heads))
        self.speculative_biases = nn.ParameterList(nn.Parameter(torch.zeros(cfg.d_model))
                                                   for _ in range(cfg.n_spec_heads))
        self.rope = Rotary(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.rope_core = Rotary(cfg.core_rope_dim, cfg.max_seq_len, cfg.rope_theta)
        self.reset_parameters()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self) -> None:
        cfg, std = self.config, self.config.init_std
        depth = cfg.n_prelude + cfg.n_coda + cfg.n_core * cfg.recurrence
        out_std = std / math.sqrt(2 * depth)
        for name, m in self.named_modules():
            if isinstance(m, ModulatedLinear):
                nn.init.zeros_(m.fused)
                nn.init.normal_(m.weight, std=out_std if name.endswith(("w_o", "down")) else std)
                m.reinit_from_weight()  # U, V from the SVD of W; G_x stays zero
                nn.init.zeros_(m.g_step.weight)
            elif isinstance(m, StepModulatedLinear):
                nn.init.normal_(m.weight, std=std)
                m.reinit_from_weight()
                nn.init.zeros_(m.g_step.weight)
            elif isinstance(m, nn.Linear) and m is not self.lm_head and not name.endswith("g_step"):
                is_out = name.endswith(("wo", "down"))
                nn.init.normal_(m.weight, std=out_std if is_out else std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
        nn.init.normal_(self.embed.weight, std=std)
        self.prelude_norm.weight.fill_(cfg.e_scale)  # the RMS of e at init
        self.core.step_emb.fc2.weight.mul_(cfg.step_emb_out_gain)  # 0: the step signal starts at zero
        d = cfg.d_model
        self.core.adapter.weight.normal_(std=std)
        self.core.adapter.weight[:, d:] = torch.eye(d)  # step 0 sees e
        if cfg.adapter_state_gain:  # W_s = gain * I: s_t reaches step t + 1 at init
            self.core.adapter.weight[:, :d] = cfg.adapter_state_gain * torch.eye(d)
        nn.init.zeros_(self.core.gate_proj.weight)
        self.core.gate_bias.fill_(cfg.depth_gate_bias)
        for p in self.speculative_projs:
            nn.init.zeros_(p.weight)
        for b in self.speculative_biases:
            nn.init.zeros_(b)

    @torch.no_grad()
    def reinit_modulation(self) -> None:
        """Re-initialise every Ouroboros U, V from the current core weights (after a warm-up)."""
        for m in self.modules():
            if isinstance(m, (ModulatedLinear, StepModulatedLinear)):
                m.reinit_from_weight()

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids, steps: int, *, grad_steps: int | None = None, cache: ModelCache | None = None,
                attention_mask=None, position_ids=None, return_states=False, return_halt=False,
                return_spec=False, init_noise=False, halt_threshold: float | None = None, min_steps: int = 1,
                exit_mask: torch.Tensor | None = None, force_exit: torch.Tensor | None = None, last_only=False,
                step_table: StepTable | None = None, weights_t: dict | None = None) -> ModelOutput:
        """Run `steps` recurrence steps. A caller that runs many forwards with unchanged weights (decoding)
        may pass `step_table` (from `core.step_table(n >= steps)`; by default computed here) and
        `weights_t` (from `transposed_weights()`: the prelude/coda linears and the LM head in the layout a
        single row multiplies fastest)."""
        B, T = input_ids.shape
        pos = cache.pos if cache is not None else 0
        self._check(T, pos, steps, cache, halt_threshold, min_steps)
        for name, m in (("exit_mask", exit_mask), ("force_exit", force_exit)):
            if m is not None and tuple(m.shape) != (B, T):
                raise ValueError(f"{name} of shape {tuple(m.shape)} must be [batch, tokens] = {(B, T)}")
        if position_ids is None:
            position_ids = torch.arange(pos, pos + T, device=input_ids.device).expand(B, T)
        mask = self._mask(B, T, pos, cache, attention_mask, input_ids.device)
        x, (states, halts, exit_steps) = self._trunk(
            input_ids, position_ids, mask, cache, pos, weights_t, steps=steps, grad_steps=grad_steps,
            return_states=return_states, return_halt=return_halt, init_noise=init_noise,
            halt_threshold=halt_threshold, min_steps=min_steps, exit_mask=exit_mask, force_exit=force_exit,
            step_table=step_table)
        if cache is not None:
            cache.pos = pos + T
        h = self.norm(x[:, -1:] if last_only else x)
        return ModelOutput(logits=project(h, self.lm_head, weights_t), hidden=h,
                           spec_logits=self.spec_logits(h, weights_t) if return_spec else None,
                           states=states, halt_probs=halts if return_halt else None, exit_steps=exit_steps)

    def _trunk(self, input_ids, position_ids, mask, cache, pos, weights_t, **core):
        """embed -> prelude -> core (`run_core(**core)`) -> coda: the coda output [B, T, d] and the core's
        (states, halt probs, exit steps)."""
        x = self.embed(input_ids)
        rope = self.rope(position_ids, x.dtype)
        for i, blk in enumerate(self.prelude):
            x = blk(x, rope, mask, cache.prelude[i] if cache else None, pos, weights_t)
        x, *rest = self.run_core(self.prelude_norm(x), rope=self.rope_core(position_ids, x.dtype), mask=mask,
                                 cache=cache, pos=pos, **core)
        for i, blk in enumerate(self.coda):
            x = blk(x, rope, mask, cache.coda[i] if cache else None, pos, weights_t)
        return x, rest

    def decode_step(self, input_ids, position_ids, write_pos, mask, cache: ModelCache, steps: int,
                    step_table: StepTable, weights_t: dict) -> torch.Tensor:
        """Logits [B, T, V] of T new tokens at a fixed depth, with static shapes: the body that compiled
        decoding (`looplm.generate.CompiledDecoder`) hands to torch.compile. The new keys and latents are
        written at cache positions write_pos (a [T] tensor, not an int, so one graph serves every
        position) and attention reads the whole cache, the bool mask [B, 1, T, max_len] hiding what is
        not visible. Does not move `cache.pos` (the caller does)."""
        x, _ = self._trunk(input_ids, position_ids, mask, cache, write_pos, weights_t, steps=steps, grad_steps=None,
                           return_states=False, return_halt=False, init_noise=False, halt_threshold=None,
                           min_steps=1, exit_mask=None, step_table=step_table)
        return project(self.norm(x), self.lm_head, weights_t)

    def spec_logits(self, h: torch.Tensor, weights_t: dict | None = None) -> torch.Tensor:
        """Draft logits of the speculative heads for normed hidden states h [..., d] -> [..., K, V]:
        draft_k = lm_head(h + SiLU(P_k h + b_k)), the K projections as one matmul and the K drafts as
        one LM-head matmul (speculative decoding drafts after every verification)."""
        K = len(self.speculative_projs)
        if K == 0:
            return h.new_zeros(*h.shape[:-1], 0, self.config.vocab_size)
        P = torch.cat([p.weight for p in self.speculative_projs])  # [K*d, d]
        u = F.linear(h, P).unflatten(-1, (K, -1)) + torch.stack(list(self.speculative_biases))  # [..., K, d]
        return project(h.unsqueeze(-2) + F.silu(u), self.lm_head, weights_t)

    def transposed_weights(self) -> dict:
        """The prelude/coda linears and the (tied) LM head as contiguous [in, out] copies, for `forward`'s
        `weights_t`: about 1.2x faster single-token decoding. A snapshot of the weights at the call, written
        into buffers the model keeps between calls (so a table from an earlier call is refreshed too; not
        for concurrent generation from several threads)."""
        keep = self.__dict__.setdefault("_transposed_buffers", {})  # not a buffer: no state_dict entry, no .to()
        return transposed_weights([m for blk in (*self.prelude, *self.coda) for m in blk.linears()] + [self.lm_head],
                                  keep)

    def run_core(self, e, steps, rope, mask, cache, pos, grad_steps, return_states, return_halt, init_noise,
                 halt_threshold, min_steps, exit_mask=None, force_exit=None, step_table=None):
        B, T, d = e.shape
        core = self.core
        lat_src = LATENT_SOURCES[self.config.core_kv]([blk.attn for blk in core.blocks], e, rope, cache, pos)
        s = torch.zeros_like(e)
        if init_noise and self.config.state_init_std > 0:
            s = s + self.config.state_init_std * torch.randn_like(e)
        tbl = step_table if step_table is not None else core.step_table(steps)
        if len(tbl.vec) < steps:
            raise ValueError(f"step_table covers {len(tbl.vec)} steps, fewer than steps={steps}")
        e_in = core.inject(e)
        k = steps if grad_steps is None else max(0, min(grad_steps, steps))
        states = [s] if return_states else None
        halts = []
        adaptive = halt_threshold is not None or force_exit is not None
        exited = torch.zeros(B, T, dtype=torch.bool, device=e.device) if adaptive else None
        exit_steps = torch.full((B, T), steps, dtype=torch.long, device=e.device) if adaptive else None
        rows = None
        for t in range(steps):
            with torch.set_grad_enabled(torch.is_grad_enabled() and t >= steps - k):
                if t == steps - k and t > 0:
                    s = s.detach()
                s_in, ex = _sub(s, rows), _sub(exited, rows)
                rope_rows = tuple(_sub(r, rows) for r in rope)
                s_new = core.step(s_in, _sub(e_in, rows), t, tbl, lat_src, rope_rows, _sub(mask, rows), rows, ex)
                can_exit = adaptive and t + 1 >= min_steps  # no token exits before min_steps
                lam = core.halt_prob(s_new) if return_halt or (can_exit and halt_threshold is not None) else None
                if adaptive and t >= min_steps:  # tokens that exited at an earlier step stay frozen
                    s_new = torch.where(ex.unsqueeze(-1), s_in, s_new)
                if can_exit:
                    newly = (lam > halt_threshold) if halt_threshold is not None else torch.zeros_like(ex)
                    if force_exit is not None and t + 1 == min_steps:
                        newly = newly | _sub(force_exit, rows)
                    newly = newly & ~ex
                    if exit_mask is not None:
                        newly = newly & _sub(exit_mask, rows)
                    if rows is None:
                        exited = exited | newly
                        exit_steps = torch.where(newly, t + 1, exit_steps)
                    else:
                        exited = exited.index_copy(0, rows, ex | newly)
                        exit_steps = exit_steps.index_copy(0, rows, torch.where(newly, t + 1, exit_steps[rows]))
                s = s_new if rows is None else s.index_copy(0, rows, s_new)
                if return_halt:
                    full = lam if rows is None else torch.ones(B, T, dtype=lam.dtype, device=lam.device).index_copy(0, rows, lam)
                    halts.append(full)
                if return_states:
                    states.append(s)
                if can_exit:
                    if bool(exited.all()):
                        break
                    live = (~exited).any(dim=1).nonzero().squeeze(1)
                    rows = None if live.numel() == B else live
        lat_src.finish(exit_steps if adaptive else steps)
        halt_probs = torch.stack(halts) if halts else None
        return s, states, halt_probs, exit_steps

    # ------------------------------------------------------------------ helpers
    def _check(self, T, pos, steps, cache, halt_threshold, min_steps):
        cfg = self.config
        if not isinstance(steps, int) or not 1 <= steps <= cfg.max_steps:
            raise ValueError(f"steps={steps!r} must be an integer in [1, max_steps={cfg.max_steps}]")
        if pos + T > cfg.max_seq_len:
            raise ValueError(f"sequence of {pos + T} tokens exceeds the model context max_seq_len={cfg.max_seq_len}")
        if cache is not None and pos + T > cache.max_len:
            raise ValueError(f"{pos + T} tokens exceed the cache length {cache.max_len}")
        if cache is not None and cfg.core_kv == "per_step" and steps > cache.n_steps:
            raise ValueError(f"steps={steps} exceed the per-step cache's n_steps={cache.n_steps}")
        if halt_threshold is not None and not 0.0 < halt_threshold <= 1.0:
            raise ValueError(f"halt_threshold={halt_threshold} must be in (0, 1]")
        if min_steps < 1:
            raise ValueError(f"min_steps={min_steps} must be >= 1")

    def _mask(self, B, T, pos, cache, attention_mask, device):
        """None: causal over the T tokens (no cache, no padding); "none": one token, unpadded cache;
        else a bool [B, 1, T, pos + T] mask of visible keys (causal, no pads, a token always sees itself)."""
        if cache is not None:
            if attention_mask is None:  # every new token is real (the common decoding case: no checks)
                cache.valid[:, pos:pos + T] = True
            else:
                new_valid = attention_mask.to(torch.bool)
                cache.valid[:, pos:pos + T] = new_valid
                cache.has_padding = cache.has_padding or not bool(new_valid.all())
            if not cache.has_padding:
                if T == 1:
                    return "none"
                if pos == 0:
                    return None
            valid = cache.valid[:, :pos + T]
        else:
            if attention_mask is None or bool(attention_mask.all()):
                return None
            valid = attention_mask.to(torch.bool)
        L = pos + T
        qpos = torch.arange(pos, L, device=device)[:, None]
        kpos = torch.arange(L, device=device)[None, :]
        causal = kpos <= qpos  # [T, L]
        mask = causal[None] & valid[:, None, :]  # [B, T, L]
        mask = mask | (kpos == qpos)[None]
        return mask.unsqueeze(1)

    # ------------------------------------------------------------------ accounting
    def new_cache(self, batch: int, max_len: int, n_steps: int | None = None) -> ModelCache:
        p = self.embed.weight
        return ModelCache.allocate(self.config, batch, max_len, n_steps or self.config.max_steps, p.device, p.dtype)

    def param_counts(self, steps: int | None = None) -> dict[str, int]:
        return param_counts(self, steps)

    def flops_per_token(self, steps: int, seq_len: int | None = None, training: bool = False) -> int:
        return flops_per_token(self.config, steps, seq_len, training)

    def kv_cache_bytes_per_token(self, steps: int, bytes_per_elem: int = 4) -> dict[str, int]:
        return kv_bytes_per_token(self.config, steps, bytes_per_elem)


def _is_per_step(name: str, core_kv: str) -> bool:
    if not name.startswith("core."):
        return False
    once = (".attn.kv_norm.", ".attn.w_dkv.", ".attn.w_kr.", ".attn.w_kv.")
    return not (core_kv == "anchored" and any(o in name for o in once))


def param_counts(model: nn.Module, steps: int | None = None) -> dict[str, int]:
    """physical (unique), per_step (applied once per recurrence step) and virtual(R) = physical + (R-1)·per_step."""
    cfg = model.config
    R = cfg.recurrence if steps is None else steps
    physical = sum(p.numel() for p in model.parameters())
    per_step = sum(p.numel() for n, p in model.named_parameters() if _is_per_step(n, cfg.core_kv))
    return {"physical": physical, "per_step": per_step, "virtual": physical + (R - 1) * per_step, "recurrence": R}


def flops_per_token(cfg: ModelConfig, steps: int, seq_len: int | None = None, training: bool = False) -> int:
    """Matmul FLOPs per token (2 per multiply-add) of a forward pass at `steps` steps with average causal
    context (seq_len + 1) / 2; training = 3x forward (full backprop). Excludes the speculative heads."""
    L = cfg.max_seq_len if seq_len is None else seq_len
    ctx = (L + 1) / 2
    d, H, hd, r = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.mod_rank
    gqa = d * H * hd * 2 + d * cfg.n_kv_heads * hd * 2 + 3 * d * cfg.mlp_hidden
    gqa_attn = 2 * H * hd * ctx  # QK and AV, multiply-adds
    outer = (cfg.n_prelude + cfg.n_coda) * (gqa + gqa_attn) + d * cfg.vocab_size

    def mod(i, o):  # modulated linear: one matmul for [W ; Vᵀ ; G_x], one for U
        return i * o + (i * r + o * r + i * r if r else 0)

    lat, dr = cfg.kv_latent_dim, cfg.rope_dim
    kv_proj = d * cfg.core_cache_width
    mlp = mod(d, 2 * cfg.core_mlp_hidden) + mod(cfg.core_mlp_hidden, d)
    if cfg.core_attn == "gqa":
        block = mod(d, H * hd) + mod(H * hd, d) + mlp + 2 * H * hd * ctx
    else:
        block = (mod(d, H * (hd + dr)) + H * hd * lat * 2 + mod(H * hd, d) + mlp
                 + H * (lat + dr) * ctx + H * lat * ctx)
    per_step = cfg.n_core * block + d * d  # + the s-half of the adapter (the e-half runs once)
    per_step += cfg.n_core * kv_proj if cfg.core_kv == "per_step" else 0
    once = d * d + (cfg.n_core * kv_proj if cfg.core_kv == "anchored" else 0)
    fwd = 2 * (outer + once + steps * per_step)
    return int(fwd * (3 if training else 1))
