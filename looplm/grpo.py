"""The pure maths of GRPO: group-relative advantages, the k3 KL estimator, the clipped surrogate and
the loss aggregations of TRL's GRPOTrainer (`grpo`, `dr_grpo`, `dapo`). No model, no sampling, no
optimiser: the trainer loop lives elsewhere and calls these on tensors.

Conventions (DeepSeekMath / TRL):
- a batch holds P prompts x G completions, the G completions of a prompt consecutive;
- advantages are one scalar per completion, broadcast over its tokens;
- per token: `ratio = exp(logp - old_logp)`,
  `loss = -min(ratio*A, clip(ratio, 1-eps_low, 1+eps_high)*A) + beta * kl_k3(logp, ref_logp)`;
- `mask` [B, T] is 1 on completion tokens (up to and including EOS) and 0 after.

Simplifications: token-level importance sampling only (no sequence-level ratio); no reward
weighting across several reward functions (pass the summed reward). Positions where `mask` is 0
are replaced by zeros before any arithmetic, so padding values (even inf/NaN) never reach the loss
or its gradient. Micro-batching is exact when the global counts are passed: `num_items_in_batch`
(unmasked tokens in the whole batch) for `dapo`, `num_sequences` (completions in the whole batch)
for `grpo` / `dr_grpo`; each micro-batch loss is then its share and the shares sum to the full loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

SCALES = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "dr_grpo", "dapo")


# ----------------------------------------------------------------------------- advantages


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    """Rewards [N] as a float tensor [N // G, G]; G >= 2 and N a positive multiple of G."""
    rewards = torch.as_tensor(rewards)
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size must be an int >= 2 (advantages are relative to the other "
                         f"completions of the same prompt), got {group_size!r}")
    if rewards.dim() != 1 or rewards.numel() == 0 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be a non-empty 1-D tensor whose length is a multiple of "
                         f"group_size={group_size}, got shape {tuple(rewards.shape)}")
    if not torch.isfinite(rewards).all():
        raise ValueError(f"rewards must be finite, got {rewards.tolist()}")
    return rewards.view(-1, group_size)  # [P, G]


def zero_std_groups(rewards: Tensor, group_size: int) -> Tensor:
    """[N // G] bool: True where every reward of the group is identical (no learning signal)."""
    grouped = _grouped(rewards, group_size)  # [P, G]
    return (grouped == grouped[:, :1]).all(dim=1)


def group_advantages(rewards: Tensor, group_size: int, scale: str = "group",
                     eps: float = 1e-4) -> Tensor:
    """Advantages [N] from rewards [N], groups being `group_size` consecutive entries.

    `group`: (r - mean_g) / (std_g + eps); `batch`: (r - mean_g) / (std of all N rewards + eps);
    `none`: r - mean_g. Standard deviations are unbiased. Groups whose rewards are all equal get
    exactly 0 (never NaN, whatever eps).
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    grouped = _grouped(rewards, group_size)  # [P, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        adv = centred / (grouped.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        adv = centred / (grouped.reshape(-1).std() + eps)
    else:
        adv = centred
    flat = (grouped == grouped[:, :1]).all(dim=1, keepdim=True)  # [P, 1]
    adv = torch.where(flat, torch.zeros_like(adv), adv)
    return adv.reshape(-1)  # [N]


# ----------------------------------------------------------------------------- per-token terms


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(policy || ref): exp(d) - d - 1 with d = ref_logp - logp; >= 0.

    Computed as expm1(d) - d (accurate for small d) and clamped at 0 against rounding."""
    d = ref_logp - logp
    return (torch.expm1(d) - d).clamp(min=0.0)


def _check_eps(eps_low: float, eps_high: float) -> None:
    if not 0 <= eps_low < 1:
        raise ValueError(f"eps_low must be in [0, 1), got {eps_low!r}")
    if not eps_high >= 0:
        raise ValueError(f"eps_high must be >= 0, got {eps_high!r}")


def _per_token_advantages(advantages: Tensor, logp: Tensor) -> Tensor:
    """[B] advantages -> [B, 1] so they broadcast over the tokens of [B, T] log-probs."""
    if advantages.dim() == logp.dim() - 1:
        return advantages.unsqueeze(-1)
    return advantages


def _clip_masks(ratio: Tensor, adv: Tensor, eps_low: float,
                eps_high: float) -> tuple[Tensor, Tensor]:
    """Tokens whose gradient the clip removes: below 1-eps_low with A < 0, above 1+eps_high with A > 0."""
    low = (ratio < 1 - eps_low) & (adv < 0)
    high = (ratio > 1 + eps_high) & (adv > 0)
    return low, high


def clipped_surrogate(logp: Tensor, old_logp: Tensor, advantages: Tensor, eps_low: float = 0.2,
                      eps_high: float = 0.2) -> tuple[Tensor, Tensor]:
    """Per-token `-min(r*A, clip(r, 1-eps_low, 1+eps_high)*A)` with r = exp(logp - old_logp), and a
    bool tensor marking the clipped tokens (those that get no gradient). `advantages` is [B] for
    [B, T] log-probs, or any shape that broadcasts."""
    _check_eps(eps_low, eps_high)
    adv = _per_token_advantages(advantages, logp)
    ratio = torch.exp(logp - old_logp)
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    loss = -torch.min(ratio * adv, clipped * adv)
    low, high = _clip_masks(ratio, adv, eps_low, eps_high)
    return loss, low | high


# ----------------------------------------------------------------------------- the loss


def _bool_mask(mask: Tensor, shape: torch.Size) -> Tensor:
    if mask.shape != shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal logp shape {tuple(shape)}")
    if mask.dtype == torch.bool:
        return mask
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError("mask must hold only 0 and 1 (1 on completion tokens, 0 after EOS)")
    return mask != 0


def _check_shapes(logp: Tensor, old_logp: Tensor, ref_logp: Tensor | None,
                  advantages: Tensor) -> None:
    if logp.dim() != 2:
        raise ValueError(f"logp must be [batch, tokens], got shape {tuple(logp.shape)}")
    for name, t in (("old_logp", old_logp), ("ref_logp", ref_logp)):
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} must equal logp shape "
                             f"{tuple(logp.shape)}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be [batch] = [{logp.shape[0]}], got shape "
                         f"{tuple(advantages.shape)}")


def _normaliser(loss_type: str, m: Tensor, max_completion_length: int | None,
                num_items_in_batch: int | float | Tensor | None,
                num_sequences: int | None) -> tuple[Tensor | float, Tensor | float]:
    """(per-sequence-mean normaliser, token-sum normaliser) for the chosen aggregation."""
    batch, length = m.shape
    if loss_type == "dapo":
        if num_sequences is not None:
            raise ValueError("num_sequences applies to loss_type 'grpo'/'dr_grpo'; 'dapo' takes "
                             "num_items_in_batch (the global count of unmasked tokens)")
        if num_items_in_batch is None:
            return 1.0, m.sum().clamp(min=1.0)
        local = float(m.sum())
        if float(num_items_in_batch) < local:
            raise ValueError(f"num_items_in_batch={float(num_items_in_batch)} (unmasked tokens in the "
                             f"whole batch) is smaller than this micro-batch's {local}")
        return 1.0, max(float(num_items_in_batch), 1.0)
    if num_items_in_batch is not None:
        raise ValueError(f"num_items_in_batch applies to loss_type 'dapo' only; for {loss_type!r} "
                         f"pass num_sequences (the global number of completions) instead")
    if num_sequences is not None and (isinstance(num_sequences, bool)
                                      or not isinstance(num_sequences, int)
                                      or num_sequences < batch):
        raise ValueError(f"num_sequences must be an int >= this micro-batch's {batch} completions, "
                         f"got {num_sequences!r}")
    seqs = batch if num_sequences is None else num_sequences
    if loss_type == "grpo":
        return float(seqs), 1.0
    if (isinstance(max_completion_length, bool) or not isinstance(max_completion_length, int)
            or max_completion_length < length):
        raise ValueError(f"loss_type 'dr_grpo' needs max_completion_length, an int >= the {length} "
                         f"completion positions, got {max_completion_length!r}")
    return 1.0, float(seqs * max_completion_length)


def grpo_loss(logp: Tensor, old_logp: Tensor, ref_logp: Tensor | None, advantages: Tensor,
              mask: Tensor, beta: float = 0.04, loss_type: str = "grpo", eps_low: float = 0.2,
              eps_high: float = 0.2, max_completion_length: int | None = None,
              num_items_in_batch: int | float | Tensor | None = None,
              num_sequences: int | None = None) -> tuple[Tensor, dict[str, float]]:
    """The GRPO loss of a (micro-)batch and its statistics.

    Shapes: logp, old_logp, ref_logp, mask [B, T]; advantages [B]. `ref_logp` may be None only with
    beta = 0. Aggregation (TRL): `grpo` = mean over each sequence's tokens, then sum over sequences
    / num_sequences (default B); `dr_grpo` = token sum / (num_sequences * max_completion_length);
    `dapo` = token sum / num_items_in_batch (default: this batch's unmasked tokens). An all-masked
    batch gives loss 0 with zero gradient.

    Stats (floats): clip_low, clip_high, clip_region (fractions of unmasked tokens), kl (mean k3 over
    unmasked tokens; 0 without ref_logp), ratio_mean, tokens (unmasked token count).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if ref_logp is None and beta != 0:
        raise ValueError(f"ref_logp is needed for the KL term (beta={beta}); pass beta=0 to drop it")
    _check_shapes(logp, old_logp, ref_logp, advantages)
    _check_eps(eps_low, eps_high)
    keep = _bool_mask(mask, logp.shape)
    seq_norm, tok_norm = _normaliser(loss_type, keep, max_completion_length, num_items_in_batch,
                                     num_sequences)
    zeros = torch.zeros((), dtype=logp.dtype, device=logp.device)
    logp = torch.where(keep, logp, zeros)  # padding values never reach the loss or its gradient
    old_logp = torch.where(keep, old_logp, zeros)
    per_token, _ = clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high)  # [B, T]
    kl = None
    if ref_logp is not None:
        kl = kl_k3(logp, torch.where(keep, ref_logp, zeros))  # [B, T]
        if beta != 0:
            per_token = per_token + beta * kl
    m = keep.to(per_token.dtype)  # [B, T]
    masked = per_token * m
    if loss_type == "grpo":
        per_seq = masked.sum(dim=1) / m.sum(dim=1).clamp(min=1.0)  # [B]
        loss = per_seq.sum() / seq_norm
    else:
        loss = masked.sum() / tok_norm
    stats = _stats(logp.detach(), old_logp, advantages, kl, m, eps_low, eps_high)
    return loss, stats


@torch.no_grad()
def _stats(logp: Tensor, old_logp: Tensor, advantages: Tensor, kl: Tensor | None, m: Tensor,
           eps_low: float, eps_high: float) -> dict[str, float]:
    ratio = torch.exp(logp - old_logp)  # [B, T]
    low, high = _clip_masks(ratio, _per_token_advantages(advantages, logp), eps_low, eps_high)
    n = m.sum()
    denom = n.clamp(min=1.0)
    kl_mean = (kl * m).sum() / denom if kl is not None else torch.zeros_like(n)
    values = torch.stack([(low * m).sum() / denom, (high * m).sum() / denom,
                          ((low | high) * m).sum() / denom, kl_mean, (ratio * m).sum() / denom, n])
    names = ("clip_low", "clip_high", "clip_region", "kl", "ratio_mean", "tokens")
    return dict(zip(names, values.tolist()))  # one device sync
