"""looplm.train.recipe: validation, the depth schedule (samplers, curriculum, backprop window) and the
masked loss against a naive reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from looplm.config import get_preset
from looplm.model import RecursiveCausalLM
from looplm.train.recipe import IGNORE, Recipe, depth_for_update, recipe_loss

CFG = get_preset("tiny", d_model=32, n_heads=2, head_dim=16, n_kv_heads=1, mlp_hidden=48, n_prelude=1, n_coda=1,
                 n_core=1, core_mlp_hidden=32, kv_latent_dim=16, rope_dim=8, step_emb_dim=16, vocab_size=64,
                 max_seq_len=32, recurrence=4, max_steps=16)


@pytest.mark.parametrize("field,value", [("lr", 0.0), ("batch_size", 0), ("depth", "deep"), ("curriculum", 2.0),
                                         ("bptt", -1), ("sigma", -0.1), ("clip", 0.0)])
def test_bad_field_is_named(field, value):
    with pytest.raises(ValueError, match=f"Recipe.{field}="):
        Recipe(**{field: value})


def test_from_overrides_parses_types_and_rejects_unknown():
    r = Recipe.from_overrides(["bptt=2", "depth=uniform", "curriculum=0.25"], batch_size=None, warmup=7)
    assert (r.bptt, r.depth, r.curriculum, r.warmup, r.batch_size) == (2, "uniform", 0.25, 7, Recipe().batch_size)
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        Recipe.from_overrides(["nope=1"])
    with pytest.raises(ValueError, match="Recipe.bptt must be a int"):
        Recipe.from_overrides(["bptt=two"])


def test_fixed_depth_and_window():
    n, k = depth_for_update(Recipe(depth="fixed", bptt=3), CFG, 0, 5, 0.5)
    assert (n, k) == (4, 3)
    assert depth_for_update(Recipe(depth="fixed"), CFG, 0, 5, 0.5) == (4, 4)  # bptt 0: every step


def test_samplers_are_deterministic_and_bounded():
    for depth in ("huginn", "uniform"):
        r = Recipe(depth=depth, min_steps=2)
        draws = [depth_for_update(r, CFG, 1, u, 1.0) for u in range(300)]
        assert draws == [depth_for_update(r, CFG, 1, u, 1.0) for u in range(300)]
        ns = [n for n, _ in draws]
        assert 1 <= min(ns) and max(ns) <= 2 * CFG.recurrence
        assert len(set(ns)) > 3
    ns = [depth_for_update(Recipe(depth="uniform", min_steps=2), CFG, 1, u, 1.0)[0] for u in range(300)]
    assert min(ns) == 2 and max(ns) == 8
    huginn = [depth_for_update(Recipe(), CFG, 1, u, 1.0)[0] for u in range(2000)]
    assert abs(sum(huginn) / len(huginn) - CFG.recurrence) < 0.3  # E[n] = r̄ + 1 = R


def test_huginn_min_steps_is_a_floor():
    plain = [depth_for_update(Recipe(mean_steps=1.0, min_steps=1), CFG, 2, u, 1.0)[0] for u in range(500)]
    floored = [depth_for_update(Recipe(mean_steps=1.0, min_steps=2), CFG, 2, u, 1.0)[0] for u in range(500)]
    assert 1 in plain and floored == [max(n, 2) for n in plain]


def test_curriculum_ramps_the_depth():
    r = Recipe(curriculum=0.5, min_steps=1)
    early = [depth_for_update(r, CFG, 0, u, 0.05)[0] for u in range(400)]
    late = [depth_for_update(r, CFG, 0, u, 0.9)[0] for u in range(400)]
    assert sum(early) / 400 < 2.0 < sum(late) / 400
    assert [depth_for_update(Recipe(depth="fixed", curriculum=0.5), CFG, 0, 0, f)[0] for f in (0, 0.25, 0.5)] \
        == [1, 2, 4]


def test_loss_is_masked_cross_entropy_at_depth_n():
    torch.manual_seed(0)
    model = RecursiveCausalLM(CFG)
    ids = torch.randint(0, 64, (3, 10))
    tgt = torch.randint(0, 64, (3, 10))
    tgt[:, :4] = IGNORE
    got = recipe_loss(model, ids, tgt, 3, 2, Recipe())
    logits = model(ids, 3).logits
    keep = tgt != IGNORE
    ref = F.cross_entropy(logits[keep], tgt[keep])
    torch.testing.assert_close(got, ref)
    got.backward()  # gradients reach the core through the last k steps
    grads = {n: p.grad for n, p in model.named_parameters() if n.startswith("core.") and p.grad is not None}
    assert grads and sum(float(g.abs().sum()) for g in grads.values()) > 0
