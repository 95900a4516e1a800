"""The plain GPT baseline (cached decode = uncached decode, FLOPs against torch's counter and against the
looplm target, cache bytes), the shared benchmark helpers, and smoke runs of the benchmark scripts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import bench_decode, bench_kv_cache, bench_train_speed  # noqa: E402
from benchmarks.common import count_flops, interleaved  # noqa: E402
from benchmarks.plain_gpt import (PlainGPT, PlainGPTConfig, flops_per_token, greedy_decode,  # noqa: E402
                                  matched_config)
from looplm.config import get_preset  # noqa: E402
from looplm.model.recursive import flops_per_token as looplm_flops  # noqa: E402


def micro(mlp="swiglu", n_kv_heads=2, **kw) -> PlainGPT:
    torch.manual_seed(0)
    cfg = PlainGPTConfig(vocab_size=97, max_seq_len=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads,
                         head_dim=8, mlp=mlp, mlp_hidden=48, init_std=0.2, **kw)
    return PlainGPT(cfg).double().eval()


@pytest.mark.parametrize("mlp,n_kv", [("swiglu", 2), ("gelu", 4)])
def test_cached_greedy_decode_equals_uncached(mlp, n_kv):
    model = micro(mlp, n_kv)
    ids = torch.randint(0, 97, (3, 5))
    cached = greedy_decode(model, ids, 20, use_cache=True)
    uncached = greedy_decode(model, ids, 20, use_cache=False)
    assert cached.shape == (3, 20)
    assert torch.equal(cached, uncached)
    assert len(set(cached.flatten().tolist())) > 3  # a non-degenerate continuation


def test_cached_logits_match_full_forward_including_chunks():
    model = micro()
    ids = torch.randint(0, 97, (2, 12))
    full = model(ids)
    cache = model.new_cache(2, 12)
    parts = [model(ids[:, :5], cache), model(ids[:, 5:6], cache), model(ids[:, 6:12], cache)]  # prefill, 1, chunk
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-10, atol=1e-10)
    assert cache.pos == 12


def test_causal():
    model = micro()
    ids = torch.randint(0, 97, (1, 10))
    changed = ids.clone()
    changed[0, 7] = (ids[0, 7] + 1) % 97
    a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.parametrize("mlp", ["swiglu", "gelu"])
def test_flops_formula_matches_torch_counter(mlp):
    model = micro(mlp).float()
    T = 16
    ids = torch.randint(0, 97, (2, T))
    counted = count_flops(lambda: model(ids)) / ids.numel()
    # the counter sees attention over the full T×T scores; the formula's context (L + 1) / 2 equals T at L = 2T - 1
    assert counted == pytest.approx(flops_per_token(model.config, 2 * T - 1), rel=1e-9)
    assert flops_per_token(model.config, T, training=True) == 3 * flops_per_token(model.config, T)


@pytest.mark.parametrize("preset", ["tiny", "small"])
@pytest.mark.parametrize("mode", ["anchored", "per_step"])
@pytest.mark.parametrize("steps,seq_len", [(1, 64), (8, 128), (8, 512), (32, 256)])
@pytest.mark.parametrize("mlp", ["swiglu", "gelu"])
def test_matched_config_hits_the_looplm_flops(preset, mode, steps, seq_len, mlp):
    cfg = get_preset(preset, core_kv=mode)
    target = looplm_flops(cfg, steps, seq_len)
    pcfg = matched_config(cfg, steps, seq_len, mlp=mlp)
    assert (pcfg.d_model, pcfg.n_heads, pcfg.head_dim, pcfg.vocab_size) == \
        (cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.vocab_size)
    assert flops_per_token(pcfg, seq_len) == pytest.approx(target, rel=0.02)
    assert pcfg.mlp_hidden % 8 == 0


def test_matched_config_grows_with_steps_and_rejects_impossible_targets():
    cfg = get_preset("tiny")
    assert matched_config(cfg, 32, 256).n_layers > matched_config(cfg, 8, 256).n_layers
    # a core-only model with a narrow latent attention over a long context costs less than one plain layer
    cheap = cfg.replace(n_prelude=0, n_coda=0, n_core=1, core_attn="cart_mla", kv_latent_dim=8, rope_dim=2, mod_rank=0,
                        core_mlp_hidden=8, max_seq_len=4096)
    with pytest.raises(ValueError, match="cannot match"):
        matched_config(cheap, 1, 4096)
    with pytest.raises(ValueError, match="mlp"):
        PlainGPTConfig(mlp="relu")


def test_kv_cache_bytes_formula_matches_allocation():
    model = micro()
    cache = model.new_cache(3, 10)
    assert cache.nbytes() == 3 * 10 * model.kv_cache_bytes_per_token(bytes_per_elem=8)  # float64
    with pytest.raises(ValueError, match="max_seq_len"):
        model.new_cache(1, 65)


def test_interleaved_rotates_order_and_skips_warmup():
    calls = []
    t = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=2, warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert len(t["a"].times) == 2 and t["a"].median >= 0


def test_benchmark_scripts_run(capsys):
    assert bench_kv_cache.main(["--presets", "tiny", "--steps", "8,32", "--no-save"]) == 0
    assert "identical (target met)" in capsys.readouterr().out
    assert bench_train_speed.main(["--preset", "tiny", "--steps", "2", "--seq-len", "16", "--batch", "1",
                                   "--iters", "1", "--warmup", "0", "--threads", "1", "--matmul-n", "64",
                                   "--no-save"]) == 0
    assert "looplm / plain GPT FLOP rate" in capsys.readouterr().out
    assert bench_decode.main(["--preset", "tiny", "--steps", "2", "--new-tokens", "3", "--prompt-len", "4",
                              "--batch", "1,2", "--no-save"]) == 0
    out = capsys.readouterr().out
    assert "1/1 rows identical" in out and "2/2 rows identical" in out


def test_bench_learning_smoke(tmp_path):
    """Both models train on the same stream for a few seconds, are scored on held-out graphs of the
    trained and the larger sizes, and the JSON holds what the issue asks for; the checkpoint loads."""
    import json

    from benchmarks import bench_learning
    from looplm.checkpoint import load_checkpoint

    out = tmp_path / "r.json"
    rc = bench_learning.main(["--task", "clrs-dfs", "--minutes", "0.03", "--threads", "1", "--eval-items", "3",
                              "--depths", "1,2", "--set", "d_model=32", "--set", "n_heads=2", "--set", "head_dim=16",
                              "--set", "n_kv_heads=1", "--set", "mlp_hidden=48", "--set", "core_mlp_hidden=32",
                              "--set", "kv_latent_dim=16", "--set", "rope_dim=8", "--set", "recurrence=2",
                              "--json", str(out), "--out", str(tmp_path / "ckpt"), "--sweep", "1e-3,3e-3",
                              "--sweep-minutes", "0.01"])
    assert rc == 0
    res = json.loads(out.read_text())
    lo, gpt = res["models"]["looplm"], res["models"]["gpt"]
    assert set(lo["by_depth"]) == set(lo["val_loss_by_depth"]) == {"1", "2"}
    assert set(lo["by_depth"]["2"]) == {"trained", "larger"}
    sizes = {"4", "5", "6", "7"}
    assert set(lo["by_size"]) == set(gpt["by_size"]) and set(lo["by_size"]) <= sizes
    assert set(lo["by_size"]) & {"4", "5"} and set(lo["by_size"]) & {"6", "7"}  # trained and larger graphs
    assert 0 <= lo["exact"] <= 1 and 0 <= gpt["exact"] <= 1
    assert lo["updates"] >= 1 and gpt["updates"] >= 1
    assert set(res["sweep"]) == {"looplm", "gpt"} and lo["lr"] in (1e-3, 3e-3)
    model, tok, _ = load_checkpoint(tmp_path / "ckpt")
    assert model.config.d_model == 32


def test_bench_learning_batches_mask_the_question():
    """The loss sees the answer and its EOS only, never the graph description or the padding."""
    from benchmarks.bench_learning import IGNORE, make_batch

    ids, tgt = make_batch([([1, 2, 3], [4, 5]), ([1, 2], [6, 7, 8, 9])], pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 4, 0], [1, 2, 6, 7, 8]]
    assert tgt.tolist() == [[IGNORE, IGNORE, 4, 5, IGNORE], [IGNORE, 6, 7, 8, 9]]
