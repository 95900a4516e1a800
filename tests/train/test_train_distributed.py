"""Distributed training on CPU: 2 ranks under torchrun (gloo) compute what one process computes with
the same global batch; FSDP2 (`--fsdp`) runs, saves ordinary checkpoints and resumes exactly."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train_helpers import cli_args, load_weights, read_records, subprocess_env

DDP_RUN = dict(steps=4, batch_size=4, grad_accum=2, eval_every=2, save_every=2, keep=1)


def _torchrun(cfg, nproc: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "looplm", *cli_args(cfg)]
    return subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=300)


def _assert_close_runs(a: Path, b: Path, rtol: float) -> None:
    ra, rb = read_records(a), read_records(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]  # rank 0 alone logged: no duplicate lines
    assert [r["depth"] for r in ra] == [r["depth"] for r in rb]  # every rank sampled the same depth
    for x, y in zip(ra, rb):
        assert y["loss"] == pytest.approx(x["loss"], rel=rtol)
    ea, eb = read_records(a, "eval"), read_records(b, "eval")
    assert len(ea) == len(eb) == 2
    for x, y in zip(ea, eb):
        for k, v in x.items():
            if k.startswith("val/"):
                assert y[k] == pytest.approx(v, rel=rtol), k
    wa, wb = load_weights(a / "final"), load_weights(b / "final")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("scoring", [dict(loss_on="all", windows="random"),
                                     dict(loss_on="answers", windows="documents", seq_len=64)],
                         ids=["all-tokens", "answers-in-documents"])
def test_two_cpu_ranks_match_one_process(pretrain_config, tmp_path, scoring):
    """With answers only, the ranks' rows hold different numbers of scored targets: the loss must still
    be the global mean over the update's scored targets."""
    from looplm.train.pretrain import main

    single = pretrain_config(tmp_path / "single", **DDP_RUN, **scoring)
    assert main(single) == 0
    ddp = pretrain_config(tmp_path / "ddp", **DDP_RUN, **scoring)
    proc = _torchrun(ddp, 2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 rank(s) x 1 thread(s)" in proc.stdout
    _assert_close_runs(Path(single.out), Path(ddp.out), rtol=1e-5)


def test_fsdp_single_process_matches_and_resumes_exactly(pretrain_config, tmp_path):
    from looplm.checkpoint import load_train_state
    from looplm.train.pretrain import main

    plain = pretrain_config(tmp_path / "plain", steps=4, save_every=2)
    assert main(plain) == 0
    sharded = pretrain_config(tmp_path / "fsdp", steps=4, save_every=2, keep=2, fsdp=True)
    assert main(sharded) == 0
    assert [r["loss"] for r in read_records(plain.out)] == [r["loss"] for r in read_records(sharded.out)]
    state = load_train_state(Path(sharded.out) / "step_0000002")
    assert "embed.weight" in state["optimizer"]["state"]  # FSDP saves a name-keyed optimizer state
    part = tmp_path / "part"
    shutil.copytree(sharded.out, part)
    shutil.rmtree(part / "step_0000004")
    shutil.rmtree(part / "final")
    assert main(pretrain_config(part, steps=4, save_every=2, keep=2, fsdp=True, resume=True)) == 0
    wa, wb = load_weights(Path(sharded.out) / "final"), load_weights(part / "final")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_two_cpu_ranks_fsdp_match_one_process(pretrain_config, tmp_path):
    from looplm.train.pretrain import main

    single = pretrain_config(tmp_path / "single", **DDP_RUN)
    assert main(single) == 0
    fsdp = pretrain_config(tmp_path / "fsdp", fsdp=True, **DDP_RUN)
    proc = _torchrun(fsdp, 2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _assert_close_runs(Path(single.out), Path(fsdp.out), rtol=1e-5)
