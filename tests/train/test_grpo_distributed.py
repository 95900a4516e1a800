"""GRPO under torchrun on CPU (gloo, 2 ranks): each rank generates and scores its share of the step's
prompts, advantages come from every rank's rewards, gradients are all-reduced; on the same global
batch of rollouts (`grpo_ranks.py`: rollouts that depend on the row alone) the weights after training
equal those of one process within float32 tolerance, and so do the logged numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from grpo_ranks import patch
from train_helpers import load_weights, read_records, subprocess_env

HERE = Path(__file__).resolve().parent
MODEL = dict(vocab_size=320, max_seq_len=64, d_model=32, n_heads=2, head_dim=16, n_kv_heads=1, mlp_hidden=64,
             n_prelude=1, n_core=2, n_coda=1, core_mlp_hidden=48, kv_latent_dim=16, rope_dim=8, core_kv="anchored",
             mod_rank=2, step_emb_dim=16, recurrence=2, max_steps=8, n_spec_heads=2)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, small_tokenizer):
    """(init checkpoint, training prompts, held-out prompts): distinct raw-format rows."""
    from looplm.checkpoint import save_checkpoint
    from looplm.config import ModelConfig
    from looplm.model import RecursiveCausalLM

    d = tmp_path_factory.mktemp("grpo_ddp")
    torch.manual_seed(0)
    ckpt = save_checkpoint(d / "init", RecursiveCausalLM(ModelConfig(**MODEL)), small_tokenizer)
    rng = np.random.default_rng(0)
    rows = [{"prompt": f"dfs:\nedges: {a}-{b} {b}-{c}", "answer": f"{a} {b} {c}", "task": "clrs_dfs"}
            for a, b, c in {tuple(int(x) for x in rng.integers(0, 20, size=3)) for _ in range(40)}]
    files = []
    for name, part in (("train", rows[:30]), ("held", rows[30:34])):
        files.append(d / f"{name}.jsonl")
        files[-1].write_text("".join(json.dumps(r) + "\n" for r in part))
    return ckpt, *files


@pytest.mark.parametrize("variant", [dict(loss_type="grpo", scale="group"),
                                     dict(loss_type="dapo", scale="batch", iterations=2)],
                         ids=["grpo-group", "dapo-batch-2it"])
def test_two_cpu_ranks_match_one_process(inputs, tmp_path, monkeypatch, variant):
    from looplm.train.grpo import GRPOConfig, train

    ckpt, prompts, held = inputs
    base = dict(init=str(ckpt), prompts=str(prompts), eval_prompts=str(held), eval_n=4, eval_every=2, pass_k=2,
                group_size=4, prompts_per_step=4, max_new_tokens=8, lr=1e-3, beta=0.04, steps=3, save_every=2,
                keep=1, seed=5, threads=1, progress=False, device="cpu", **variant)
    patch(monkeypatch.setattr)
    assert train(GRPOConfig(out=str(tmp_path / "one"), **base))["exit_code"] == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "grpo_ranks.py"), json.dumps({**base, "out": str(tmp_path / "two")})]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 rank(s) x 1 thread(s)" in proc.stdout

    one, two = read_records(tmp_path / "one"), read_records(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2, 3]  # rank 0 alone logged
    for a, b in zip(one, two):
        for k in ("reward_mean", "reward_std", "completion_len_mean", "truncated_share", "adv_a_std"):
            assert b[k] == a[k], k  # the same global batch of rollouts and advantages
        for k in ("loss", "grad_norm", "kl", "entropy", "ratio_mean", "clip_region"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-7), k
    ea, eb = read_records(tmp_path / "one", "eval"), read_records(tmp_path / "two", "eval")
    assert [(e["step"], e["eval/pass@1"], e["eval/pass@2"]) for e in ea] == \
           [(e["step"], e["eval/pass@1"], e["eval/pass@2"]) for e in eb] and len(ea) == 2
    wa, wb = load_weights(tmp_path / "one" / "final"), load_weights(tmp_path / "two" / "final")
    init = load_weights(Path(ckpt))
    assert any(not torch.equal(wa[k], init[k]) for k in wa)  # it trained
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-6)


def test_prompts_per_step_must_divide_by_the_ranks(inputs, tmp_path):
    from looplm.checkpoint import load_checkpoint
    from looplm.config import ConfigError
    from looplm.train.common import Dist
    from looplm.train.grpo import GRPOConfig, GRPOStage

    ckpt, prompts, _ = inputs
    stage = GRPOStage(GRPOConfig(init=str(ckpt), prompts=str(prompts), out=str(tmp_path / "o"), prompts_per_step=3))
    model, tok, _ = load_checkpoint(ckpt)
    with pytest.raises(ConfigError, match="GRPOConfig.prompts_per_step=3 must be divisible by the world size 2"):
        stage.setup(model, tok, str(ckpt), Dist(rank=1, world_size=2))
