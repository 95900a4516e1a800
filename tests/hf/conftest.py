"""Fixtures for the Hugging Face tests: tiny checkpoints (both core K/V layouts) and their exports.

The configs are explicit (not the `tiny` preset, which the research may change) and use a large
init std, so that logits are far from ties and greedy tokens are a sharp test of equal computation.
The checkpoints record a halt threshold in meta.json, as `looplm calibrate-halt` does.
"""

from __future__ import annotations

import os

import pytest

HALT_THRESHOLD = 0.5


def tiny_config(core_kv: str = "anchored", **overrides):
    from looplm.config import ModelConfig

    fields = dict(vocab_size=320, max_seq_len=64, d_model=32, n_heads=2, head_dim=16, n_kv_heads=1, mlp_hidden=64,
                  n_prelude=1, n_core=2, n_coda=1, core_mlp_hidden=48, kv_latent_dim=16, rope_dim=8, mod_rank=2,
                  step_emb_dim=16, recurrence=3, max_steps=8, n_spec_heads=2, init_std=0.2, core_kv=core_kv)
    fields.update(overrides)
    return ModelConfig(**fields)


def make_checkpoint(path, tokenizer, config, seed: int = 0, meta: dict | None = None):
    import torch

    from looplm.checkpoint import save_checkpoint
    from looplm.model import RecursiveCausalLM

    torch.manual_seed(seed)
    model = RecursiveCausalLM(config).eval()
    save_checkpoint(path, model, tokenizer, meta={"halt_threshold": HALT_THRESHOLD, "halt_min_steps": 1}
                    if meta is None else meta)
    return path


@pytest.fixture(scope="session", autouse=True)
def _offline_hf():
    """No hub (the libraries read these when first imported; the subprocess tests set them too)."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session", params=["anchored", "per_step"])
def ckpt(request, tmp_path_factory, small_tokenizer):
    """A tiny checkpoint directory, one per core K/V layout."""
    return make_checkpoint(tmp_path_factory.mktemp(f"ckpt_{request.param}") / "ckpt", small_tokenizer,
                           tiny_config(request.param))


@pytest.fixture(scope="session")
def exported(ckpt, tmp_path_factory):
    """`ckpt` exported with `export_hf`."""
    pytest.importorskip("transformers")
    from looplm.hf.export import export_hf

    return export_hf(ckpt, tmp_path_factory.mktemp("export") / "hf")
