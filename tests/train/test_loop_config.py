"""Stage configs share LoopConfig: one definition of the common options, per-stage defaults, CLI order,
errors naming the stage's field."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from looplm.config import ConfigError
from looplm.train.args import add_config_args, config_from_args
from looplm.train.loop_config import RESUME_FREE, LoopConfig
from looplm.train.pretrain import PretrainConfig
from looplm.train.sft import RESUME_FREE as SFT_RESUME_FREE
from looplm.train.sft import SFTConfig


def _defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def test_stages_have_every_loop_option_and_their_own_defaults():
    loop = {f.name for f in dataclasses.fields(LoopConfig)}
    for cls in (PretrainConfig, SFTConfig):
        assert loop <= {f.name for f in dataclasses.fields(cls)}
    pre, sft = _defaults(PretrainConfig), _defaults(SFTConfig)
    assert (pre["lr"], sft["lr"]) == (1e-3, 1e-4)
    assert (pre["sample_depth"], sft["sample_depth"]) == (True, False)
    assert (pre["seq_len"], sft["seq_len"]) == (256, 512)
    assert pre["bptt_steps"] == sft["bptt_steps"] == 8  # shared: defined once
    assert SFT_RESUME_FREE == RESUME_FREE | {"val_data"}


def test_cli_lists_the_stage_fields_first_and_round_trips():
    p = argparse.ArgumentParser()
    add_config_args(p, SFTConfig, required=("data", "init", "out"))
    dests = [a.dest for a in p._actions if a.dest != "help"]
    assert dests[:3] == ["data", "init", "val_data"] and dests.index("out") > dests.index("val_data")
    args = p.parse_args(["--data", "d.jsonl", "--init", "ck", "--out", "o", "--lr", "3e-4", "--sample-depth"])
    cfg = config_from_args(SFTConfig, args)
    assert (cfg.lr, cfg.sample_depth, cfg.steps) == (3e-4, True, 500)


def test_a_bad_shared_value_names_the_stage_field():
    with pytest.raises(ConfigError, match=r"SFTConfig\.bptt_steps=0 .*--bptt-steps"):
        SFTConfig(data="d.jsonl", init="ck", out="o", bptt_steps=0)
    with pytest.raises(ConfigError, match=r"PretrainConfig\.deep_fraction=2"):
        PretrainConfig(data="d", out="o", deep_fraction=2.0)
    with pytest.raises(ConfigError, match=r"PretrainConfig\.min_depth=0 .*--min-depth"):
        PretrainConfig(data="d", out="o", min_depth=0)
    with pytest.raises(ConfigError, match=r"SFTConfig\.exit_share=1\.5 .*--exit-share"):
        SFTConfig(data="d.jsonl", init="ck", out="o", exit_share=1.5)
