"""`--config FILE` on the training commands: a run's `run_config.json` replayed gives the same run,
options given on the command line win (even when given at their default value), `--resume` is never
replayed, required options may come from the file, and a bad file names the file and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from looplm.cli import build_parser
from looplm.cli import main as cli
from looplm.config import ConfigError
from looplm.train.args import config_from_args, config_to_dict
from train_helpers import cli_args, load_weights, read_records


def parse(command: str, *argv: str):
    return build_parser([command]).parse_args([command, *argv])


def write(path: Path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def test_pretrain_replayed_from_its_run_config_is_the_same_run(pretrain_config, tmp_path):
    a = pretrain_config(tmp_path / "a", steps=4, save_every=2)
    assert cli(cli_args(a)) == 0
    saved = json.loads((tmp_path / "a" / "run_config.json").read_text())
    assert saved["stage"] == "pretrain" and saved["steps"] == 4
    assert cli(["pretrain", "--config", str(tmp_path / "a" / "run_config.json"), "--out", str(tmp_path / "b")]) == 0
    assert [(r["loss"], r["depth"]) for r in read_records(tmp_path / "a")] == \
           [(r["loss"], r["depth"]) for r in read_records(tmp_path / "b")]
    wa, wb = load_weights(tmp_path / "a" / "final"), load_weights(tmp_path / "b" / "final")
    assert all((wa[k] == wb[k]).all() for k in wa)
    replayed = {**saved, "out": str(tmp_path / "b")}
    replayed.pop("stage")
    assert json.loads((tmp_path / "b" / "run_config.json").read_text()) == {"stage": "pretrain", **replayed}


def test_command_line_options_override_the_file(tmp_path):
    from looplm.train.pretrain import PretrainConfig

    base = config_to_dict(PretrainConfig(data="D", out="O", steps=7, lr=3e-3, bf16=True, eval_depths=(2, 6),
                                         model_overrides=["d_model=64"], resume=True))
    path = write(tmp_path / "run_config.json", {"stage": "pretrain", **base})
    cfg = config_from_args(PretrainConfig, parse("pretrain", "--config", path, "--lr", "1e-3", "--no-bf16",
                                                 "--out", "P"), stage="pretrain")
    assert (cfg.lr, cfg.bf16, cfg.out) == (1e-3, False, "P")  # 1e-3 is the default: given, so it wins
    assert (cfg.data, cfg.steps, cfg.eval_depths, cfg.model_overrides) == ("D", 7, (2, 6), ["d_model=64"])
    assert cfg.resume is False  # never replayed
    again = config_from_args(PretrainConfig, parse("pretrain", "--config", path, "--set", "n_core=1"), stage="pretrain")
    assert again.model_overrides == ["n_core=1"]  # a repeatable option given replaces the file's list


def test_required_options_may_come_from_the_file(tmp_path):
    from looplm.train.sft import SFTConfig

    path = write(tmp_path / "sft.json", {"stage": "sft", "data": "rows.jsonl", "init": "ckpt", "out": "o", "steps": 9})
    cfg = config_from_args(SFTConfig, parse("sft", "--config", path), stage="sft")
    assert (cfg.data, cfg.init, cfg.out, cfg.steps, cfg.lr) == ("rows.jsonl", "ckpt", "o", 9, 1e-4)
    with pytest.raises(ConfigError, match="missing option.*--data.*--init.*--out"):
        config_from_args(SFTConfig, parse("sft", "--config", write(tmp_path / "e.json", {})), stage="sft")
    with pytest.raises(ConfigError, match="missing option.*--init"):
        config_from_args(SFTConfig, parse("sft", "--data", "d", "--out", "o"), stage="sft")


@pytest.mark.parametrize("content,message", [
    ({"stage": "pretrain", "lr": 1e-3, "frobnicate": 1}, r"--config .*bad\.json: unknown field\(s\) 'frobnicate'"),
    ({"stage": "pretrain", "seed": None}, r"field 'seed' must be an integer, got None"),
    ({"stage": "pretrain", "steps": "ten"}, r"field 'steps' must be an integer, got 'ten'"),
    ({"stage": "pretrain", "eval_depths": [2, "x"]}, r"field 'eval_depths' must be a list of int values"),
    ({"stage": "pretrain", "bf16": 1}, r"field 'bf16' must be true or false, got 1"),
    ({"stage": "pretrain", "fixed_depth": 2.5}, r"field 'fixed_depth' must be an integer or null, got 2.5"),
    ({"stage": "sft", "lr": 1e-3}, r"field 'stage' is 'sft': the config of a sft run, not of `looplm pretrain`"),
    ({"stage": "pretrain", "data": "d", "out": "o", "warmup": -1},
     r"PretrainConfig\.warmup=-1 is invalid.*\[warmup from --config .*bad\.json\]"),
    ([1, 2], r"expected a JSON object of PretrainConfig fields"),
])
def test_a_bad_file_names_the_file_and_the_field(tmp_path, content, message):
    from looplm.train.pretrain import PretrainConfig

    path = write(tmp_path / "bad.json", content)
    with pytest.raises(ConfigError, match=message):
        config_from_args(PretrainConfig, parse("pretrain", "--config", path, "--data", "d", "--out", "o"),
                         stage="pretrain")


def test_unreadable_files_are_named(tmp_path, capsys):
    (tmp_path / "broken.json").write_text("{not json")
    assert cli(["pretrain", "--config", str(tmp_path / "broken.json")]) == 2
    assert "--config" in capsys.readouterr().err
    assert cli(["grpo", "--config", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: no such file" in capsys.readouterr().err


def test_grpo_replays_its_run_config(tmp_path):
    from looplm.train.grpo import GRPOConfig

    saved = {"stage": "grpo", **config_to_dict(GRPOConfig(init="ck", out="o", task="arith", beta=0.1, group_size=8))}
    cfg = config_from_args(GRPOConfig, parse("grpo", "--config", write(tmp_path / "r.json", saved), "--steps", "3"),
                           stage="grpo")
    assert (cfg.init, cfg.task, cfg.beta, cfg.group_size, cfg.steps, cfg.lr) == ("ck", "arith", 0.1, 8, 3, 1e-6)


def test_calibrate_commands_replay_their_results_config(tmp_path, monkeypatch, capsys):
    """calibrate-halt / train-spec read the "config" their results file records."""
    import looplm.calibrate.halt as halt
    import looplm.calibrate.spec as spec
    from looplm.calibrate.configs import HaltCalibConfig, SpecTrainConfig, to_json

    seen = []
    monkeypatch.setattr(halt, "calibrate_halt", lambda cfg: seen.append(cfg) or {"ok": 1})
    monkeypatch.setattr(spec, "train_spec", lambda cfg: seen.append(cfg) or {"ok": 1})
    calib = {"init": "ck", "config": to_json(HaltCalibConfig(init="ck", data="dfs_verbal", out="o", n=50, epochs=7,
                                                             taus=(0.5, 0.9), progress=False))}
    path = write(tmp_path / "calibration.json", calib)
    assert cli(["calibrate-halt", "--config", path, "--epochs", "30", "--json"]) == 0
    assert cli(["train-spec", "--config", write(tmp_path / "t.json", {"config": to_json(SpecTrainConfig(
        init="ck", out="o2", data="d.jsonl", lr=0.5))}), "--init", "other", "--json"]) == 0
    h, s = seen
    assert (h.init, h.data, h.n, h.epochs, h.taus, h.progress) == ("ck", "dfs_verbal", 50, 30, (0.5, 0.9), False)
    assert (s.init, s.out, s.data, s.lr) == ("other", "o2", "d.jsonl", 0.5)
    capsys.readouterr()
    assert cli(["calibrate-halt", "--config", write(tmp_path / "x.json", {"config": {"init": "c", "epoch": 3}})]) == 2
    assert "unknown field(s) 'epoch'" in capsys.readouterr().err
    assert cli(["calibrate-halt", "--data", "d"]) == 2
    assert "missing option(s) --init" in capsys.readouterr().err
