"""Tests for looplm.grpo: advantages, k3 KL, the clipped surrogate and the TRL loss aggregations."""

from __future__ import annotations

import math

import pytest
import torch

from looplm.grpo import (clipped_surrogate, group_advantages, grpo_loss, kl_k3,
                         zero_std_groups)

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- advantages


def test_advantages_reference_values():
    adv = group_advantages(torch.tensor([1.0, 0, 0, 0]), 4)
    assert adv.tolist() == pytest.approx([1.4997, -0.4999, -0.4999, -0.4999], abs=1e-4)
    adv = group_advantages(torch.tensor([1.75, 0.5, -0.15, 1.0]), 4)
    assert adv.tolist() == pytest.approx([1.21465, -0.34259, -1.15236, 0.28030], abs=1e-5)


def test_zero_std_group_is_exactly_zero_and_counted():
    rewards = torch.tensor([0.0, 0, 0, 0, 1, 0, 0, 0, 0.1, 0.1, 0.1, 0.1])
    for eps in (1e-4, 0.0):
        adv = group_advantages(rewards, 4, eps=eps)
        assert not torch.isnan(adv).any()
        assert torch.equal(adv[:4], torch.zeros(4)) and torch.equal(adv[8:], torch.zeros(4))
        assert adv[4] > 0
    assert zero_std_groups(rewards, 4).tolist() == [True, False, True]
    for scale in ("batch", "none"):
        assert torch.equal(group_advantages(rewards, 4, scale=scale)[8:], torch.zeros(4))


def test_scale_none_is_mean_centring_and_batch_uses_global_std():
    rewards = torch.tensor([1.0, 0, 0, 0, 2, 4, 6, 8])
    none = group_advantages(rewards, 4, scale="none")
    assert none.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, -3, -1, 1, 3])
    batch = group_advantages(rewards, 4, scale="batch")
    assert batch.tolist() == pytest.approx((none / (rewards.std() + 1e-4)).tolist())
    group = group_advantages(rewards, 4, scale="group")
    assert group[4:].tolist() == pytest.approx((none[4:] / (rewards[4:].std() + 1e-4)).tolist())


def test_groups_never_mix():
    a = torch.tensor([1.0, 0, 0, 0, 5, 6, 7, 8])
    b = torch.tensor([1.0, 0, 0, 0, -50, 60, 0.5, 3])
    for scale in ("group", "none"):
        assert torch.equal(group_advantages(a, 4, scale)[:4], group_advantages(b, 4, scale)[:4])
    # every group's advantages are centred on its own mean
    assert group_advantages(b, 4).view(2, 4).sum(dim=1).abs().max() < 1e-5
    # G = 2 groups of consecutive entries: [1, 0] and [0, 0] ...
    assert group_advantages(torch.tensor([1.0, 0, 0, 0]), 2).tolist()[2:] == [0.0, 0.0]


def test_advantage_argument_errors():
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.tensor([1.0, 0.0]), 1)
    with pytest.raises(ValueError, match="multiple"):
        group_advantages(torch.tensor([1.0, 0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.tensor([1.0, 0.0]), 2, scale="global")
    with pytest.raises(ValueError, match="finite"):
        group_advantages(torch.tensor([1.0, float("nan")]), 2)
    with pytest.raises(ValueError, match="group_size"):
        zero_std_groups(torch.tensor([1.0, 0.0]), 0)


# ----------------------------------------------------------------------------- KL and clipping


def test_kl_k3():
    assert kl_k3(torch.tensor(-1.0), torch.tensor(-2.0)).item() == pytest.approx(0.367879, abs=1e-6)
    assert kl_k3(torch.tensor(-2.0), torch.tensor(-1.0)).item() == pytest.approx(math.e - 2, 1e-6)
    x = torch.randn(1000) * 3
    assert torch.equal(kl_k3(x, x), torch.zeros(1000))
    y = x + torch.randn(1000) * torch.logspace(-9, 1, 1000)
    assert (kl_k3(x, y) >= 0).all()


@pytest.mark.parametrize("adv, ratio, want_loss, want_grad", [
    (1.0, 1.5, -1.2, 0.0),  # ratio above 1 + eps with A > 0: clipped
    (-1.0, 0.5, 0.8, 0.0),  # ratio below 1 - eps with A < 0: clipped
    (-1.0, 1.5, 1.5, 1.5),  # A < 0 and ratio too high: the unclipped term wins, gradient flows
    (1.0, 0.5, -0.5, -0.5),  # A > 0 and ratio too low: unclipped
])
def test_clipped_surrogate_cases(adv, ratio, want_loss, want_grad):
    logp = torch.tensor(math.log(ratio), requires_grad=True)
    loss, clipped = clipped_surrogate(logp, torch.tensor(0.0), torch.tensor(adv), 0.2, 0.2)
    loss.backward()
    assert loss.item() == pytest.approx(want_loss, abs=1e-6)
    assert logp.grad.item() == pytest.approx(want_grad, abs=1e-6)  # d loss / d logp = -A * ratio
    assert clipped.item() == (want_grad == 0.0)


def test_asymmetric_clip():
    logp = torch.log(torch.tensor([[1.25, 0.85]]))
    loss, clipped = clipped_surrogate(logp, torch.zeros(1, 2), torch.tensor([1.0]), 0.1, 0.28)
    assert loss.tolist()[0] == pytest.approx([-1.25, -0.85]) and clipped.tolist() == [[False, False]]
    loss, clipped = clipped_surrogate(logp, torch.zeros(1, 2), torch.tensor([-1.0]), 0.2, 0.2)
    assert loss.tolist()[0] == pytest.approx([1.25, 0.85])
    assert clipped.tolist() == [[False, False]]
    loss, clipped = clipped_surrogate(logp, torch.zeros(1, 2), torch.tensor([1.0]), 0.2, 0.2)
    assert clipped.tolist() == [[True, False]] and loss.tolist()[0] == pytest.approx([-1.2, -0.85])


# ----------------------------------------------------------------------------- the loss


def _toy_batch(seed: int = 0, batch: int = 4, length: int = 6, vocab: int = 11, dim: int = 5):
    """A tiny linear 'policy' over fixed features, sampled tokens and a ragged EOS mask."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, length, dim, generator=g)
    tokens = torch.randint(vocab, (batch, length), generator=g)
    lengths = torch.tensor([6, 2, 4, 1])[:batch]
    mask = (torch.arange(length)[None, :] < lengths[:, None]).float()  # [B, T]
    weight = torch.randn(dim, vocab, generator=g, requires_grad=True)
    return feats, tokens, mask, weight


def _logp(feats, tokens, weight):
    logits = feats @ weight  # [B, T, V]
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # [B, T]


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_first_iteration_is_reinforce(loss_type):
    feats, tokens, mask, weight = _toy_batch()
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2)
    logp = _logp(feats, tokens, weight)
    loss, stats = grpo_loss(logp, logp.detach(), logp.detach(), adv, mask, beta=0.04,
                            loss_type=loss_type, max_completion_length=8)
    (grad,) = torch.autograd.grad(loss, weight)
    # REINFORCE surrogate with the same aggregation
    logp = _logp(feats, tokens, weight)
    per_token = -adv[:, None] * logp * mask
    if loss_type == "grpo":
        ref = (per_token.sum(1) / mask.sum(1)).mean()
        assert loss.item() == pytest.approx(0.0, abs=1e-6)  # advantages sum to 0 per group
    elif loss_type == "dr_grpo":
        ref = per_token.sum() / (4 * 8)
    else:
        ref = per_token.sum() / mask.sum()
    (want,) = torch.autograd.grad(ref, weight)
    assert grad.abs().max() > 1e-3
    torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-7)
    assert stats["kl"] == 0.0 and stats["clip_region"] == 0.0
    assert stats["ratio_mean"] == pytest.approx(1.0) and stats["tokens"] == mask.sum().item()


def test_grpo_loss_on_equal_lengths_is_zero_for_all_types():
    logp = torch.randn(4, 3, requires_grad=True)
    adv = group_advantages(torch.tensor([3.0, 1.0, 0.0, 2.0]), 4)
    for loss_type in ("grpo", "dr_grpo", "dapo"):
        loss, _ = grpo_loss(logp, logp.detach(), logp.detach(), adv, torch.ones(4, 3),
                            loss_type=loss_type, max_completion_length=3)
        assert abs(loss.item()) < 1e-6


def test_aggregation_values():
    # ratio 1, beta 0, A = -1 everywhere: every unmasked token has loss exactly 1
    logp = torch.zeros(2, 4)
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 0, 0, 0]])
    adv = torch.tensor([-1.0, -1.0])
    kw = dict(beta=0.0, max_completion_length=8)
    assert grpo_loss(logp, logp, None, adv, mask, loss_type="grpo", **kw)[0].item() == 1.0
    assert grpo_loss(logp, logp, None, adv, mask, loss_type="dapo", **kw)[0].item() == 1.0
    # dr_grpo divides by batch * max_completion_length: 4 tokens / (2 * 8)
    assert grpo_loss(logp, logp, None, adv, mask, loss_type="dr_grpo", **kw)[0].item() == 0.25
    # grpo weighs sequences equally, dapo weighs tokens equally
    adv = torch.tensor([-1.0, -3.0])
    assert grpo_loss(logp, logp, None, adv, mask, loss_type="grpo", **kw)[0].item() == 2.0
    assert grpo_loss(logp, logp, None, adv, mask, loss_type="dapo", **kw)[0].item() == 1.5


def _split_losses(loss_type, feats, tokens, mask, weight, adv, **kw):
    """Sum of the losses (and gradients) of two micro-batches of 2 completions."""
    total, grads = 0.0, torch.zeros_like(weight)
    for sl in (slice(0, 2), slice(2, 4)):
        logp = _logp(feats[sl], tokens[sl], weight)
        old = logp.detach() + 0.1
        loss, _ = grpo_loss(logp, old, old - 0.2, adv[sl], mask[sl], loss_type=loss_type,
                            max_completion_length=6, **kw)
        total += loss.item()
        grads += torch.autograd.grad(loss, weight)[0]
    return total, grads


@pytest.mark.parametrize("loss_type, counts", [
    ("dapo", "num_items_in_batch"), ("grpo", "num_sequences"), ("dr_grpo", "num_sequences")])
def test_micro_batches_sum_to_the_full_batch(loss_type, counts):
    feats, tokens, mask, weight = _toy_batch(seed=1)
    adv = torch.tensor([1.0, 0.5, 2.0, -1.5])
    logp = _logp(feats, tokens, weight)
    old = logp.detach() + 0.1
    full, _ = grpo_loss(logp, old, old - 0.2, adv, mask, loss_type=loss_type,
                        max_completion_length=6)
    (full_grad,) = torch.autograd.grad(full, weight)
    value = int(mask.sum().item()) if counts == "num_items_in_batch" else 4
    split, split_grad = _split_losses(loss_type, feats, tokens, mask, weight, adv, **{counts: value})
    assert split == pytest.approx(full.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(split_grad, full_grad, rtol=1e-5, atol=1e-7)
    # without the global count each micro-batch normalises locally and the sum differs
    naive, _ = _split_losses(loss_type, feats, tokens, mask, weight, adv)
    assert abs(naive - full.item()) > 1e-3


def test_masked_tokens_do_not_change_the_loss():
    feats, tokens, mask, weight = _toy_batch(seed=2)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    logp = _logp(feats, tokens, weight)
    old, ref = logp.detach() - 0.3, logp.detach() + 0.2
    junk = torch.tensor([float("inf"), float("nan"), -1e30, 7.0]).repeat(4, 2)[:, :6]
    keep = mask.bool()
    for loss_type in ("grpo", "dr_grpo", "dapo"):
        logp = _logp(feats, tokens, weight)
        base, base_stats = grpo_loss(logp, old, ref, adv, mask, loss_type=loss_type,
                                     max_completion_length=6)
        (g0,) = torch.autograd.grad(base, weight)
        logp2 = torch.where(keep, _logp(feats, tokens, weight), junk)
        loss, stats = grpo_loss(logp2, torch.where(keep, old, junk), torch.where(keep, ref, -junk),
                                adv, mask, loss_type=loss_type, max_completion_length=6)
        (g1,) = torch.autograd.grad(loss, weight)
        assert loss.item() == pytest.approx(base.item(), rel=1e-6)
        torch.testing.assert_close(g1, g0)
        assert stats == pytest.approx(base_stats)


def test_all_masked_gives_zero_loss_and_zero_gradient():
    logp = torch.randn(2, 3, requires_grad=True)
    for loss_type in ("grpo", "dr_grpo", "dapo"):
        loss, stats = grpo_loss(logp, logp.detach() + 1, logp.detach() - 1, torch.tensor([1.0, -2]),
                                torch.zeros(2, 3), loss_type=loss_type, max_completion_length=3)
        (grad,) = torch.autograd.grad(loss, logp)
        assert loss.item() == 0.0 and torch.equal(grad, torch.zeros(2, 3))
        assert all(math.isfinite(v) for v in stats.values()) and stats["tokens"] == 0


def test_stats_clip_fractions_and_kl():
    ratio = torch.tensor([[1.5, 0.5, 1.0, 1.0], [1.5, 0.5, 1.1, 9.0]])
    logp = torch.log(ratio)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    ref = logp - 1.0  # d = -1 on every token: k3 = e^-1
    _, stats = grpo_loss(logp, torch.zeros(2, 4), ref, torch.tensor([1.0, -1.0]), mask)
    # row 0 (A > 0): 1.5 high-clipped; row 1 (A < 0): 0.5 low-clipped; 9.0 is masked
    assert stats["clip_high"] == pytest.approx(1 / 7) and stats["clip_low"] == pytest.approx(1 / 7)
    assert stats["clip_region"] == pytest.approx(2 / 7)
    assert stats["kl"] == pytest.approx(math.exp(-1), rel=1e-5)
    assert stats["ratio_mean"] == pytest.approx((1.5 + 0.5 + 1 + 1 + 1.5 + 0.5 + 1.1) / 7)
    assert stats["tokens"] == 7


def test_beta_adds_the_kl_term():
    logp = torch.zeros(1, 2)
    ref = torch.full((1, 2), -1.0)
    adv = torch.tensor([0.0])
    loss, _ = grpo_loss(logp, logp, ref, adv, torch.ones(1, 2), beta=0.5)
    assert loss.item() == pytest.approx(0.5 * math.exp(-1))
    loss, stats = grpo_loss(logp, logp, ref, adv, torch.ones(1, 2), beta=0.0)
    assert loss.item() == 0.0 and stats["kl"] == pytest.approx(math.exp(-1))


def test_loss_argument_errors():
    logp, mask, adv = torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2)
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(logp, logp, logp, adv, mask, loss_type="ppo")
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, logp, None, adv, mask, beta=0.04)
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(logp, logp, logp, adv, mask, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="max_completion_length"):
        grpo_loss(logp, logp, logp, adv, mask, loss_type="dr_grpo", max_completion_length=2)
    with pytest.raises(ValueError, match="mask"):
        grpo_loss(logp, logp, logp, adv, mask * 0.5)
    with pytest.raises(ValueError, match="mask shape"):
        grpo_loss(logp, logp, logp, adv, torch.ones(2, 4))
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logp, logp, logp, torch.zeros(3), mask)
    with pytest.raises(ValueError, match="num_items_in_batch"):
        grpo_loss(logp, logp, logp, adv, mask, loss_type="grpo", num_items_in_batch=6)
    with pytest.raises(ValueError, match="smaller"):
        grpo_loss(logp, logp, logp, adv, mask, loss_type="dapo", num_items_in_batch=5)
    with pytest.raises(ValueError, match="num_sequences"):
        grpo_loss(logp, logp, logp, adv, mask, loss_type="dapo", num_sequences=4)
    with pytest.raises(ValueError, match="eps_low"):
        grpo_loss(logp, logp, logp, adv, mask, eps_low=1.0)
