"""Unit properties of the shared training pieces: schedule, depth sampler, FLOPs accounting,
optimizer groups, byte counts, config validation and the config <-> argparse round trip."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch

from looplm.config import ConfigError
from looplm.train import common as C
from looplm.train.args import add_config_args, config_from_args
from looplm.train.pretrain import PretrainConfig


def test_lr_schedule_warmup_then_cosine_to_floor():
    lrs = [C.lr_at(s, 1.0, warmup=4, total=20, min_ratio=0.1) for s in range(20)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # monotone decay after warmup
    assert C.lr_at(20, 1.0, 4, 20, 0.1) == pytest.approx(0.1)
    assert C.lr_at(12, 1.0, 4, 20, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way: cosine midpoint
    # under a time budget the cosine follows elapsed / budget when it is ahead of the steps
    assert C.lr_at(6, 1.0, 4, 20, 0.1, time_frac=0.5) == pytest.approx(0.1 + 0.9 * 0.5)
    assert C.lr_at(6, 1.0, 4, 20, 0.1, time_frac=1.0) == pytest.approx(0.1)
    assert C.lr_at(12, 1.0, 4, 20, 0.1, time_frac=0.01) == pytest.approx(0.1 + 0.9 * 0.5)


def test_depth_sampler_is_keyed_by_step_and_matches_huginn_moments():
    draws = [C.sample_depth(7, s, mean=8.0, sigma=0.5, max_steps=64, deep_fraction=0.0) for s in range(4000)]
    again = [C.sample_depth(7, s, mean=8.0, sigma=0.5, max_steps=64, deep_fraction=0.0) for s in range(4000)]
    assert draws == again  # every rank / a resumed run draws the same n for a step
    assert draws != [C.sample_depth(8, s, 8.0, 0.5, 64, 0.0) for s in range(4000)]  # the seed matters
    assert min(draws) >= 1
    assert np.mean(draws) == pytest.approx(9.0, abs=0.25)  # E[Poisson(τ) + 1] = r̄ + 1
    assert 1 < np.var(draws) < 40
    clipped = [C.sample_depth(7, s, 8.0, 0.5, max_steps=6, deep_fraction=0.0) for s in range(500)]
    assert max(clipped) == 6


def test_depth_floor_raises_only_the_draws_below_it():
    plain = [C.sample_depth(3, s, 1.0, 0.5, 64, 0.0) for s in range(2000)]
    floored = [C.sample_depth(3, s, 1.0, 0.5, 64, 0.0, min_depth=2) for s in range(2000)]
    assert floored == [max(n, 2) for n in plain]
    assert plain.count(1) > 300 and min(floored) == 2  # r̄ = 1 draws n = 1 about a third of the time
    assert [C.sample_depth(0, s, 1.0, 0.5, max_steps=3, deep_fraction=0.0, min_depth=5) for s in range(5)] == [3] * 5


def test_lm_depth_applies_the_config_floor():
    from types import SimpleNamespace

    cfg = SimpleNamespace(sample_depth=True, seed=0, mean_steps=1.0, depth_sigma=0.5, deep_fraction=0.0,
                          bptt_steps=8, min_depth=2, fixed_depth=None)
    model_cfg = SimpleNamespace(recurrence=2, max_steps=64)
    ns = [C.lm_depth(cfg, model_cfg, s)[0] for s in range(500)]
    assert min(ns) == 2 and max(ns) > 2


def test_depth_sampler_deep_fraction():
    draws = np.array([C.sample_depth(0, s, 4.0, 0.5, 64, deep_fraction=0.25) for s in range(4000)])
    deep = (draws >= 16) & (draws <= 32)
    assert deep.mean() == pytest.approx(0.25, abs=0.03)
    assert set(np.unique(draws[deep])) <= set(range(16, 33))
    assert len(set(draws[deep])) > 10  # spread over U[16, 32]


def test_train_flops_account_for_depth_and_truncation(micro_config):
    from looplm.model import flops_per_token

    T = 32
    full = C.train_flops_per_token(micro_config, 5, 5, T)
    assert full == pytest.approx(flops_per_token(micro_config, 5, T, training=True))  # k = n: 3x forward
    truncated = C.train_flops_per_token(micro_config, 5, 2, T)
    per_step = flops_per_token(micro_config, 2, T) - flops_per_token(micro_config, 1, T)
    assert full - truncated == pytest.approx(2 * 3 * per_step)  # 3 fewer steps back-propagated, 2x each
    assert C.train_flops_per_token(micro_config, 6, 2, T) - truncated == pytest.approx(per_step)  # forward only


def test_optimizer_groups_decay_matrices_only_and_skip_frozen_heads(micro_config):
    from looplm.model import RecursiveCausalLM

    model = RecursiveCausalLM(micro_config)
    frozen = C.freeze_untrained(model)
    assert frozen and all(n.startswith(("speculative_", "core.halt.")) for n in frozen)
    opt = C.build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.embed.weight) in ids and id(model.core.gate_bias) in ids
    assert not any(id(p) in ids for n, p in model.named_parameters() if n in frozen)
    assert len(ids) == sum(1 for p in model.parameters() if p.requires_grad)  # tied weight once
    assert opt.defaults.get("fused") is True  # CPU has fused AdamW in this torch


def test_token_bytes_sum_to_the_utf8_length(train_tokenizer):
    tok, _ = train_tokenizer
    nbytes = C.token_byte_lengths(tok, 400)
    text = "dfs:\nA: [[1 0], [0 1]] — naïve café 12 + 30 = 42 <search> A"
    ids = tok.encode(text)
    assert int(nbytes[ids].sum()) == len(text.encode("utf-8"))
    assert nbytes[tok.eos_id] == 0 and nbytes[tok.pad_id] == 0  # specials decode to no text
    assert nbytes[350] == 0  # an embedding row beyond the tokenizer


def test_eval_depths_add_nominal_depth_and_drop_too_deep():
    assert C.eval_depths((4, 8, 16), train_depth=3, max_steps=8) == [3, 4, 8]


@pytest.mark.parametrize("field,value", [("lr", 0.0), ("steps", 0), ("deep_fraction", 1.5), ("beta2", 2.0),
                                         ("eval_depths", ()), ("device", "tpu"), ("batch_size", 2.5),
                                         ("data", "")])
def test_config_errors_name_the_field(field, value):
    base = dict(data="d", out="o")
    base[field] = value
    with pytest.raises(ConfigError, match=rf"PretrainConfig\.{field}="):
        PretrainConfig(**base)


def test_init_excludes_preset_and_overrides():
    with pytest.raises(ConfigError, match="preset"):
        PretrainConfig(data="d", out="o", init="ckpt", preset="tiny")
    with pytest.raises(ConfigError, match="model_overrides"):
        PretrainConfig(data="d", out="o", init="ckpt", model_overrides=["d_model=64"])


def test_argparse_round_trip():
    p = argparse.ArgumentParser()
    add_config_args(p, PretrainConfig, required=("data", "out"))
    args = p.parse_args(["--data", "D", "--out", "O", "--steps", "7", "--lr", "2e-3", "--bf16",
                         "--no-sample-depth", "--eval-depths", "2,6", "--set", "d_model=64", "--set", "n_core=1"])
    cfg = config_from_args(PretrainConfig, args)
    assert cfg == PretrainConfig(data="D", out="O", steps=7, lr=2e-3, bf16=True, sample_depth=False,
                                 eval_depths=(2, 6), model_overrides=["d_model=64", "n_core=1"])
    defaults = config_from_args(PretrainConfig, p.parse_args(["--data", "D", "--out", "O"]))
    assert defaults == PretrainConfig(data="D", out="O")
    with pytest.raises(SystemExit):
        p.parse_args(["--out", "O"])  # --data is required


def test_grad_norm_reports_non_finite():
    w = torch.nn.Parameter(torch.ones(3))
    w.grad = torch.tensor([1.0, float("nan"), 0.0])
    assert math.isnan(float(C.grad_norm(w, [w], 1.0)))
    w.grad = torch.tensor([3.0, 4.0, 0.0])
    assert float(C.grad_norm(w, [w], 1.0)) == pytest.approx(5.0)
    assert torch.allclose(w.grad, torch.tensor([0.6, 0.8, 0.0]), atol=1e-6)  # clipped to norm 1


def test_forced_exits_split_the_global_draw_across_ranks():
    one = C.forced_exits(3, 17, 0, (8, 40), 0.3, C.Dist())
    halves = [C.forced_exits(3, 17, 0, (4, 40), 0.3, C.Dist(rank=r, world_size=2)) for r in range(2)]
    assert torch.equal(torch.cat(halves), one)  # 2 ranks force exactly the positions one process does
    assert torch.equal(C.forced_exits(3, 17, 0, (8, 40), 0.3, C.Dist()), one)  # stateless: resume draws it again
    assert not torch.equal(C.forced_exits(3, 18, 0, (8, 40), 0.3, C.Dist()), one)
    assert abs(float(one.float().mean()) - 0.3) < 0.08
    assert C.forced_exits(3, 17, 0, (8, 40), 0.0, C.Dist()) is None
