"""Shared pytest setup: one torch thread per process; fixtures for a micro model config, a small
tokenizer and the shared data directory.

Kept deliberately small; test modules build anything specific themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# One intra-op thread per test process: the suite runs with `-n 2` on 2-core machines, and small
# tensor ops oversubscribed across threads run several times slower. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`$LOOPLM_SHARED_DATA` or `../shared/data` next to the repo; skips (visibly) when absent."""
    path = Path(os.environ.get("LOOPLM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"shared data directory not found at {path} (set LOOPLM_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def micro_config():
    """A ~0.2M-parameter config with the full layout (prelude, 2 core blocks, coda, spec heads)."""
    from looplm.config import get_preset

    return get_preset("tiny", vocab_size=320, max_seq_len=64, d_model=32, n_heads=2, head_dim=16,
                      n_kv_heads=1, mlp_hidden=64, n_prelude=1, n_coda=1, n_core=2, core_kv="anchored",
                      core_mlp_hidden=48,
                      kv_latent_dim=16, rope_dim=8, mod_rank=2, step_emb_dim=16, recurrence=3,
                      max_steps=8, n_spec_heads=2, e_scale=1.0, step_emb_out_gain=1.0)  # the design's init


@pytest.fixture(scope="session")
def small_tokenizer():
    """A byte-level BPE of at most 300 tokens trained on a few lines (milliseconds)."""
    from looplm.tokenizer import Tokenizer

    text = ["Algorithm: DFS\nGraph: A-[B,C], B-[D]. Start: A", "What is 12 + 30? 12 + 30 = 42. #### 42",
            "The capital of France is Paris."] * 10
    return Tokenizer.train(text, vocab_size=300)


@pytest.fixture(scope="session")
def cpp_compiler() -> str:
    """The C++ compiler torch.compile's CPU backend (inductor) uses; skips (visibly) when there is none."""
    import shutil

    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        path = shutil.which(get_cpp_compiler())
    except Exception:  # noqa: BLE001 - inductor found no usable compiler
        path = None
    if path is None:
        pytest.skip("torch.compile on CPU needs a C++ compiler (g++ or $CXX); none found")
    return path
