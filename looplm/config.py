"""Model configuration: the `ModelConfig` dataclass, its validation, and the named presets.

Every field is documented where it is declared. `ModelConfig.validate()` runs on construction and
raises `ConfigError` naming the bad field and its allowed range. Presets:

- `tiny`: ~1.2M parameters for the whole pipeline on a 2-core CPU: 2 prelude blocks, 1 grouped-query
  core block unrolled R = 2 times with keys read once per token from the prelude output, 2 coda
  blocks, e = norm(prelude(x)) at RMS 0.3 at init (the report's 4/2/4 layout at R = 8 cost about 3x the
  time per update on this CPU; `benchmarks/LEARNING_LOG.md` has the trials);
- `small`: ~15M parameters, for CPU benchmarks and quick GPU runs;
- `report-200m`: within 1% of the report's 124.13M physical / 176.29M virtual parameters at R = 8.

Simplification: one config describes the network only; run configs (training, generation, data) live
with the stage that uses them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the allowed values."""


CORE_KV_MODES = ("anchored", "per_step")
CORE_ATTN_MODES = ("cart_mla", "gqa")


@dataclass(frozen=True)
class ModelConfig:
    # --- vocabulary and context ---
    vocab_size: int = 2048
    """Embedding rows (>= the tokenizer's size); the LM head is tied to the embedding."""
    max_seq_len: int = 512
    """Longest context (prompt + generated tokens) the model accepts."""
    # --- widths ---
    d_model: int = 128
    """Residual stream width d."""
    n_heads: int = 4
    """Query heads in every attention layer."""
    head_dim: int = 32
    """Width of one attention head (prelude/coda: q/k/v; core: the no-RoPE query/key part and v)."""
    n_kv_heads: int = 2
    """Key/value heads of the prelude/coda grouped-query attention (divides n_heads)."""
    mlp_hidden: int = 352
    """SwiGLU hidden width of prelude and coda blocks."""
    # --- layout ---
    n_prelude: int = 4
    """Unshared GQA blocks before the recurrent core."""
    n_core: int = 2
    """Core blocks applied, in order, once per recurrence step."""
    n_coda: int = 4
    """Unshared GQA blocks after the core."""
    # --- recurrent core ---
    core_mlp_hidden: int = 256
    """SwiGLU hidden width of the core blocks."""
    kv_latent_dim: int = 32
    """CART-MLA latent width: numbers cached per token per core block (plus rope_dim)."""
    rope_dim: int = 16
    """Width of the shared RoPE key / per-head RoPE query part in CART-MLA (even)."""
    core_kv: str = "anchored"
    """'anchored': core K/V latents from the prelude output, once per token (cache independent of steps).
    'per_step': latents from each step's core input, cached per step (Huginn-style ablation)."""
    core_attn: str = "cart_mla"
    """Attention of the core blocks: 'cart_mla' (multi-query attention over a kv_latent_dim latent plus a
    shared rope_dim RoPE key, `looplm.model.mla`) or 'gqa' (grouped-query attention with n_kv_heads full
    keys/values of head_dim, the whole head rotated, `looplm.model.core_gqa`). Either reads its keys
    through `core_kv`."""
    mod_rank: int = 4
    """Ouroboros modulation rank r on every core linear (0 disables modulation)."""
    step_emb_dim: int = 64
    """Width of the sinusoidal step encoding fed to the step-embedding MLP."""
    recurrence: int = 8
    """R: the nominal (training mean) number of recurrence steps; one step = n_core block passes."""
    max_steps: int = 64
    """Largest number of steps any call may request (step embeddings are defined beyond it, but
    per-step caches are sized by it)."""
    depth_gate_scale: float = 1.0
    """Multiplier inside the depth gate sigmoid: alpha_t = sigmoid(scale * (b + W_g step_emb(t)))."""
    depth_gate_bias: float = 0.0
    """Initial gate bias b (0 -> alpha = 0.5 at init)."""
    state_init_std: float = 0.0
    """Training-time noise on s_0 (0 = deterministic s_0 = 0; the design's value is sqrt(2/(5d)))."""
    adapter_state_gain: float = 0.0
    """Initial s-half of the adapter: W_s = gain * I (the state flows from step to step at init), or small
    noise (std init_std) when 0. The e-half always starts as I, so step 0 (s_0 = 0) sees e either way."""
    e_scale: float = 1.0
    """Initial gain of the norm on the prelude output, so the RMS of e = norm(prelude(x)) at init: 1 (the
    design) puts the core and coda on a stream 50x the embedding's scale, where their blocks start as
    small perturbations; the embedding's scale (init_std) makes them start as a GPT's blocks do."""
    step_emb_out_gain: float = 1.0
    """Init std of the step embedding's output layer as a multiple of init_std; 0 starts the step signal at
    zero (no token-independent offset added to the state at each step until the model learns one)."""
    # --- heads ---
    n_spec_heads: int = 4
    """Speculative heads; head k (1-based) predicts token i + 1 + k."""
    # --- numerics ---
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    init_std: float = 0.02
    """Normal init std of linear and embedding weights (output projections scaled by depth)."""

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def need(name: str, ok: bool, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"ModelConfig.{name}={getattr(self, name)!r} is invalid: {allowed}")

        def positive(name: str) -> None:
            v = getattr(self, name)
            need(name, isinstance(v, int) and not isinstance(v, bool) and v >= 1, "must be an integer >= 1")

        for name in ("vocab_size", "max_seq_len", "d_model", "n_heads", "head_dim", "n_kv_heads",
                     "mlp_hidden", "n_core", "core_mlp_hidden", "kv_latent_dim", "rope_dim",
                     "step_emb_dim", "recurrence", "max_steps"):
            positive(name)
        for name in ("n_prelude", "n_coda", "mod_rank", "n_spec_heads"):
            v = getattr(self, name)
            need(name, isinstance(v, int) and not isinstance(v, bool) and v >= 0, "must be an integer >= 0")
        need("n_kv_heads", self.n_heads % self.n_kv_heads == 0,
             f"must divide n_heads={self.n_heads} (allowed: a divisor of n_heads)")
        need("head_dim", self.head_dim % 2 == 0, "must be even (RoPE rotates pairs)")
        need("rope_dim", self.rope_dim % 2 == 0, "must be even (RoPE rotates pairs)")
        need("core_kv", self.core_kv in CORE_KV_MODES, f"allowed: {', '.join(CORE_KV_MODES)}")
        need("core_attn", self.core_attn in CORE_ATTN_MODES, f"allowed: {', '.join(CORE_ATTN_MODES)}")
        need("recurrence", self.recurrence <= self.max_steps, f"must be <= max_steps={self.max_steps}")
        need("mod_rank", self.mod_rank <= min(self.d_model, self.kv_latent_dim, self.core_mlp_hidden),
             "must be <= min(d_model, kv_latent_dim, core_mlp_hidden)")
        for name in ("depth_gate_scale", "rope_theta", "norm_eps", "init_std", "e_scale"):
            v = getattr(self, name)
            need(name, isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and v == v
                 and v != float("inf"), "must be a finite number > 0")
        need("step_emb_out_gain", isinstance(self.step_emb_out_gain, (int, float))
             and not isinstance(self.step_emb_out_gain, bool) and 0 <= self.step_emb_out_gain < 1e6,
             "must be a finite number >= 0")
        for name in ("depth_gate_bias", "adapter_state_gain"):
            v = getattr(self, name)
            need(name, isinstance(v, (int, float)) and abs(v) < 1e6, "must be a finite number")
        need("state_init_std", isinstance(self.state_init_std, (int, float)) and 0 <= self.state_init_std < 10,
             "must be a number in [0, 10)")

    # ------------------------------------------------------------------ derived widths
    @property
    def core_cache_width(self) -> int:
        """Numbers one token caches per core block (and per step with per-step keys)."""
        if self.core_attn == "gqa":
            return 2 * self.n_kv_heads * self.head_dim
        return self.kv_latent_dim + self.rope_dim

    @property
    def core_rope_dim(self) -> int:
        """Rotated width of a core key: the shared RoPE key (cart_mla) or the whole head (gqa)."""
        return self.head_dim if self.core_attn == "gqa" else self.rope_dim

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown ModelConfig field(s): {', '.join(unknown)} (valid: {', '.join(sorted(known))})")
        return cls(**d)

    def replace(self, **changes: Any) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(self)}
        for k in changes:
            if k not in known:
                raise ConfigError(f"unknown ModelConfig field {k!r} (valid: {', '.join(sorted(known))})")
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, ModelConfig] = {
    # tiny: 2 prelude / 1 core block x R = 2 / 2 coda; a GQA core with anchored keys, W_s = I and
    # alpha ~ 0.98 (a residual loop with input injection), trials P-Y; e at RMS 0.3 and the step signal
    # from zero, trials F-G and I (benchmarks/LEARNING_LOG.md)
    "tiny": ModelConfig(n_prelude=2, n_core=1, n_coda=2, recurrence=2, core_kv="anchored", core_attn="gqa",
                        adapter_state_gain=1.0, depth_gate_bias=4.0, e_scale=0.3, step_emb_out_gain=0.0),
    "small": ModelConfig(
        vocab_size=8192, max_seq_len=1024, d_model=384, n_heads=6, head_dim=64, n_kv_heads=2,
        mlp_hidden=1024, core_mlp_hidden=768, kv_latent_dim=64, rope_dim=32, mod_rank=8,
    ),
    "report-200m": ModelConfig(
        vocab_size=50304, max_seq_len=2048, d_model=768, n_heads=12, head_dim=64, n_kv_heads=4,
        mlp_hidden=3412, core_mlp_hidden=304, kv_latent_dim=128, rope_dim=32, mod_rank=8,
        step_emb_dim=128,
    ),
}


def get_preset(name: str, **overrides: Any) -> ModelConfig:
    """Return the named preset, optionally with fields replaced; an unknown name lists the valid ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    cfg = PRESETS[name]
    return cfg.replace(**overrides) if overrides else cfg


def preset_names() -> list[str]:
    return list(PRESETS)
