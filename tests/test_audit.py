"""`looplm audit`: spike rule and update-shock numbers on synthetic states, per-step gradients that
add up to the shared gradient, truncation as an exact structural zero, verdicts, outputs, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from looplm.audit import (AuditConfig, elastic_depth, find_spikes, gradient_starvation, per_step_parameters,
                          run_audit, step_gradients, update_shock)
from looplm.cli import main as cli_main
from looplm.config import ConfigError


@pytest.fixture(scope="module")
def cfg256(micro_config):
    return micro_config.replace(max_seq_len=256, max_steps=16)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, cfg256, small_tokenizer) -> Path:
    from looplm.checkpoint import save_checkpoint
    from looplm.model import RecursiveCausalLM

    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("au") / "ck", RecursiveCausalLM(cfg256), small_tokenizer)


def model64(cfg, core_kv="anchored"):
    from looplm.model import RecursiveCausalLM

    torch.manual_seed(0)
    m = RecursiveCausalLM(cfg.replace(core_kv=core_kv)).double()
    with torch.no_grad():  # make the step modulation and depth gate non-trivial
        for n, p in m.named_parameters():
            if any(k in n for k in ("g_step", "g_x", "gate_proj")):
                p.normal_(std=0.1)
    return m


def quick(ckpt, **kw) -> AuditConfig:
    base = dict(ckpt=str(ckpt), n_seqs=2, seq_len=24, elastic_n=2, elastic_max_new_tokens=4, progress=False,
                print_report=False)
    base.update(kw)
    return AuditConfig(**base)


# ------------------------------------------------------------------------------------ update shock
@pytest.mark.parametrize("curve, spikes", [
    ([1.0, 0.5, 0.3, 0.25], []),  # smooth decay
    ([0.5, 0.3, 1.2, 0.3], [2]),  # 1.2 > 3 x mean(0.3, 0.3)
    ([0.5, 0.3, 0.89, 0.3], []),  # just below 3x
    ([5.0, 0.1, 0.1], []),  # the first value is not judged
    ([0.3, 0.3, 0.3, 1.0], [3]),  # a jump at the end has one neighbour
])
def test_find_spikes(curve, spikes):
    assert find_spikes(curve, 3.0) == spikes


def test_update_shock_numbers_on_synthetic_states():
    v = torch.randn(2, 3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    scale = [0.0, 1.0, 1.5, 1.8, 5.4, 5.5]  # s_t = scale_t * v: u_t = |c_{t+1} - c_t| / c_t
    states = [c * v for c in scale]
    out = update_shock(states, judged=5, factor=3.0, max_std=0.1)
    u = [0.5, 0.2, 2.0, 0.1 / 5.4]
    assert out["u_mean"] == pytest.approx(u)
    assert out["spikes"] == [3] and out["token_spike_rate"] == 1.0 and out["verdict"] == "FAIL"
    import statistics
    assert out["std"] == pytest.approx(statistics.pstdev(u)) and out["mean"] == pytest.approx(sum(u) / 4)
    assert out["std_after_first"] == pytest.approx(statistics.pstdev(u[1:]))
    calm = update_shock([c * v for c in [0.0, 1.0, 1.1, 1.2, 1.3]], judged=4, factor=3.0, max_std=0.1)
    assert calm["spikes"] == [] and calm["verdict"] == "PASS" and calm["judged_steps"] == 4
    # a smooth decay from a large first update passes; jitter after it fails on the std alone
    decay = update_shock([c * v for c in [0.0, 1.0, 1.5, 1.6, 1.65, 1.67]], judged=6, factor=3.0, max_std=0.1)
    assert decay["std"] > 0.1 and decay["spikes"] == [] and decay["verdict"] == "PASS"
    jitter = update_shock([c * v for c in [0.0, 1.0, 1.5, 2.4, 3.24, 3.726]], judged=6, factor=3.0, max_std=0.1)
    assert jitter["spikes"] == [] and jitter["std_after_first"] > 0.1 and jitter["verdict"] == "FAIL"


# ------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("core_kv", ["anchored", "per_step"])
def test_per_step_gradients_add_up_to_the_shared_gradient(micro_config, core_kv):
    m = model64(micro_config, core_kv)
    x = torch.randint(0, 300, (2, 10))
    y = torch.randint(0, 300, (2, 10))
    loss = torch.nn.functional.cross_entropy(m(x, 4).logits.flatten(0, 1), y.flatten())
    loss.backward()
    want = {k: p.grad.clone() for k, p in m.core.named_parameters() if p.grad is not None}
    m.zero_grad(set_to_none=True)
    with per_step_parameters(m.core, 4) as copies:
        loss2 = torch.nn.functional.cross_entropy(m(x, 4).logits.flatten(0, 1), y.flatten())
        loss2.backward()
    assert float(loss2.detach()) == pytest.approx(float(loss.detach()), rel=1e-12)
    assert not {"step", "inject", "step_table"} & set(vars(m.core))  # the methods are restored
    for k, g in want.items():
        total = sum(c[k].grad for c in copies if c[k].grad is not None)
        own = dict(m.core.named_parameters())[k].grad
        total = total + (own if own is not None else 0)
        torch.testing.assert_close(total, g, rtol=1e-9, atol=1e-12, msg=k)
    # everything a step computes is attributed to that step: only the anchored latents (computed once
    # per token, outside the loop) keep a gradient of their own; the halt head gets none
    once = (".attn.kv_norm.", ".attn.w_dkv.", ".attn.w_kr.", ".attn.w_kv.") if core_kv == "anchored" else ()
    own = {k for k, p in m.core.named_parameters() if p.grad is not None}
    assert own == {k for k in want if any(o in k for o in once)}
    for t in range(4):
        got = {k for k, c in copies[t].items() if c.grad is not None and c.grad.abs().sum() > 0}
        assert {"step_emb.fc2.weight", "gate_bias", "adapter.weight"} <= got, t
        assert got | own >= set(want) - {"adapter.weight"}  # at t = 0, s_0 = 0 so W_s gets 0


def test_truncation_is_an_exact_structural_zero(micro_config):
    m = model64(micro_config)
    x, y = torch.randint(0, 300, (2, 10)), torch.randint(0, 300, (2, 10))
    full = step_gradients(m, x, y, 6, None)
    trunc = step_gradients(m, x, y, 6, 2)
    assert trunc["truncated"] == [True] * 4 + [False] * 2 and not any(full["truncated"])
    assert trunc["state_grad"][:4] == [0.0] * 4 and trunc["param_grad"][:4] == [0.0] * 4
    assert all(v > 0 for v in full["state_grad"] + full["param_grad"])
    # steps after the cut see the same backward pass as without truncation
    assert trunc["state_grad"][4:] == pytest.approx(full["state_grad"][4:], rel=1e-9)
    assert trunc["param_grad"][4:] == pytest.approx(full["param_grad"][4:], rel=1e-9)
    res = gradient_starvation(full, trunc, 1e-3)
    assert res["truncated_run"]["param_label"][:4] == ["truncated"] * 4
    assert "starved" not in res["truncated_run"]["state_label"] and res["structural_zero_exact"]
    assert res["truncated_steps"] == [1, 2, 3, 4]
    assert res["state_ratio_deepest_shallowest"] == pytest.approx(full["state_grad"][-1] / full["state_grad"][0])
    assert all(p.grad is None for p in m.parameters())


def test_starvation_verdict():
    full = {"state_grad": [1e-6, 0.5, 1.0], "param_grad": [0.2, 0.5, 1.0], "truncated": [False] * 3}
    trunc = {"state_grad": [0.0, 0.5, 1.0], "param_grad": [0.0, 0.5, 1.0], "truncated": [True, False, False]}
    res = gradient_starvation(full, trunc, 1e-3)
    assert res["verdict"] == "FAIL" and res["starved_steps"] == [1]
    assert res["untruncated"]["state_label"] == ["starved", "ok", "ok"]
    assert res["truncated_run"]["state_label"] == ["truncated", "ok", "ok"]
    full["state_grad"][0] = 0.01
    assert gradient_starvation(full, trunc, 1e-3)["verdict"] == "PASS"


def test_elastic_depth_verdict():
    s = torch.randn(2, 5, 8)
    finals = {4: s, 8: s, 12: -s}
    preds = {4: torch.zeros(2, 5), 8: torch.zeros(2, 5), 12: torch.ones(2, 5)}
    res = elastic_depth(finals, preds, {"arith": {4: 0.5, 8: 0.45, 12: 0.5}}, 0.7, 0.1)
    assert res["cosine"] == pytest.approx([1, 1, -1]) and res["agreement"] == [1, 1, 0]
    assert res["low_agreement_at"] == [12] and res["verdict"] == "FAIL"
    res = elastic_depth({4: s, 8: s}, {4: preds[4], 8: preds[8]}, {"arith": {4: 0.5, 8: 0.3}}, 0.7, 0.1)
    assert res["accuracy_drops"] == [{"task": "arith", "steps": 8}] and res["verdict"] == "FAIL"


# ------------------------------------------------------------------------------------- full runs
def test_run_audit_writes_json_and_plots(ckpt, tmp_path, capsys):
    res = run_audit(quick(ckpt, out=str(tmp_path), bptt_steps=2, print_report=True))
    out = capsys.readouterr().out
    assert "[PASS]" in out or "[FAIL]" in out
    assert "structural zero" in out or "truncated" in out
    data = json.loads((tmp_path / "audit.json").read_text())
    for name in ("update_shock.png", "elastic_depth.png", "gradient_starvation.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert data["elastic_depth"]["steps"] == [3, 6, 9, 12] and len(data["update_shock"]["u_mean"]) == 11
    g = data["gradient_starvation"]
    assert g["steps"] == list(range(1, 7)) and g["truncated_steps"] == [1, 2, 3, 4]
    assert g["truncated_run"]["state_label"][:4] == ["truncated"] * 4 and g["structural_zero_exact"] is True
    for check in ("update_shock", "elastic_depth", "gradient_starvation"):
        assert data[check]["verdict"] in ("PASS", "FAIL") and data[check]["thresholds"]
    assert res["data"]["seq_len"] == 24 and len(data["elastic_depth"]["accuracy"]["dfs-verbal"]) == 4


def test_audit_on_a_text_file(ckpt, shared_data, tmp_path):
    res = run_audit(quick(ckpt, data=str(shared_data / "wikitext2" / "wiki.test.raw"), elastic_tasks=(),
                          depth_multiples=(1, 2), write=False))
    assert "paragraphs of" in res["data"]["source"] and res["elastic_depth"]["accuracy"] == {}


def test_cli_audit(ckpt, tmp_path):
    rc = cli_main(["audit", "--ckpt", str(ckpt), "--out", str(tmp_path), "--n-seqs", "2", "--seq-len", "16",
                   "--elastic-tasks", "none", "--depth-multiples", "1,2", "--no-progress", "--no-plots"])
    assert rc == 0 and json.loads((tmp_path / "audit.json").read_text())["kind"] == "looplm-audit"


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw, field", [
    ({"depth_multiples": (1, 2, 8)}, "depth_multiples"),  # 24 steps > max_steps 16
    ({"depth_multiples": (2, 4)}, "depth_multiples"),
    ({"grad_depth": 40}, "grad_depth"),
    ({"shock_max_std": -1.0}, "shock_max_std"),
    ({"elastic_min_agreement": 1.5}, "elastic_min_agreement"),
    ({"spike_factor": 0.5}, "spike_factor"),
    ({"elastic_tasks": ("chat",)}, "elastic_tasks"),
    ({"seq_len": 999}, "seq_len"),
])
def test_bad_config_names_field(ckpt, kw, field):
    with pytest.raises(ConfigError, match=f"AuditConfig.{field}"):
        run_audit(quick(ckpt, **kw))


def test_checkpoint_without_tokenizer(ckpt, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(ckpt, bare)
    (bare / "tokenizer.json").unlink()
    with pytest.raises(Exception, match="no tokenizer.json"):
        run_audit(quick(bare))


def test_update_shock_window_defaults_to_at_least_four_steps():
    """R = 2 leaves one judged update inside R, so J defaults to max(R, 4); an explicit J < 3 names the field."""
    import dataclasses

    from looplm.audit.run import _resolve
    from looplm.config import get_preset

    cfg = AuditConfig(ckpt="unused")
    assert _resolve(cfg, get_preset("tiny", recurrence=2))["J"] == 4
    assert _resolve(cfg, get_preset("tiny", recurrence=8))["J"] == 8
    with pytest.raises(ConfigError, match=r"AuditConfig\.shock_steps"):
        _resolve(dataclasses.replace(cfg, shock_steps=2), get_preset("tiny", recurrence=2))
