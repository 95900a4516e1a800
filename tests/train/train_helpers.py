"""Helpers shared by the training tests: CLI argv from a config, subprocess environment, metrics and
weights readers."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def cli_args(cfg) -> list[str]:
    """`looplm pretrain` argv reproducing a PretrainConfig (the fields the tests use)."""
    argv = ["pretrain", "--data", cfg.data, "--out", cfg.out, "--preset", cfg.preset]
    for s in cfg.model_overrides:
        argv += ["--set", s]
    for name in ("steps", "batch_size", "seq_len", "grad_accum", "warmup", "lr", "eval_every", "eval_batches",
                 "save_every", "keep", "bptt_steps", "peak_flops", "threads", "loss_on", "windows"):
        argv += ["--" + name.replace("_", "-"), str(getattr(cfg, name))]
    argv += ["--eval-depths", ",".join(map(str, cfg.eval_depths)), "--no-progress"]
    argv += ["--fsdp"] if cfg.fsdp else []
    return argv


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def looplm_cmd(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "looplm", *argv]


def read_records(out, kind="train") -> list[dict]:
    path = Path(out) / "metrics.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["type"] == kind]


def load_weights(ckpt) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(ckpt) / "model.safetensors"))
