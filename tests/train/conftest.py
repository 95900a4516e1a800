"""Fixtures for the training tests: a 320-token tokenizer, a small pre-training directory built by
the data builder (generated CLRS + maths, ~20k train tokens), the micro model as `--set` overrides,
and `pretrain_config(out, **changes)` for a fast micro run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def train_tokenizer(tmp_path_factory):
    from looplm.tokenizer import train_default_tokenizer

    tok = train_default_tokenizer(vocab_size=320, seed=0, n_texts=200)
    d = tmp_path_factory.mktemp("train_tok")
    tok.save(d)
    return tok, d


@pytest.fixture(scope="session")
def pretrain_dir(train_tokenizer, tmp_path_factory) -> Path:
    from looplm.data.mixture import MixConfig, build_pretrain_mix

    out = tmp_path_factory.mktemp("pretrain_data") / "data"
    build_pretrain_mix(MixConfig(tokenizer=train_tokenizer[1], out=out, tokens=20_000,
                                 mix={"clrs": 0.5, "math": 0.5}, val_tokens=3_000))
    return out


@pytest.fixture(scope="session")
def micro_sets(micro_config) -> list[str]:
    """The micro config as `--set FIELD=VALUE` overrides of the tiny preset."""
    from looplm.config import get_preset

    tiny = get_preset("tiny").to_dict()
    return [f"{k}={json.dumps(v)}" for k, v in micro_config.to_dict().items() if tiny[k] != v]


@pytest.fixture
def pretrain_config(pretrain_dir, micro_sets):
    from looplm.train.pretrain import PretrainConfig

    def make(out, **changes):
        base = dict(data=str(pretrain_dir), out=str(out), preset="tiny", model_overrides=list(micro_sets),
                    steps=8, batch_size=4, seq_len=32, warmup=2, lr=3e-3, eval_every=0, eval_batches=1,
                    eval_depths=(2,), save_every=4, keep=2, bptt_steps=2, peak_flops=1e10, threads=1,
                    progress=False, loss_on="all", windows="random")  # 32-token windows hold few answers
        base.update(changes)
        return PretrainConfig(**base)

    return make
