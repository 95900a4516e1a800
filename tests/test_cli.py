"""The `looplm` CLI: help on every level, error reporting, `info` numbers, `init` + `generate`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from looplm.cli import COMMANDS, main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_top_level_help_lists_every_command(capsys):
    rc, out, _ = run(capsys, "--help")
    assert rc == 0
    for name in COMMANDS:
        assert f"    {name}" in out
    assert "unavailable" not in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_subcommand_help(capsys, name):
    rc, out, _ = run(capsys, name, "--help")
    assert rc == 0
    assert out.startswith(f"usage: looplm {name}")


def test_version_and_module_entry_point():
    from looplm import __version__

    proc = subprocess.run([sys.executable, "-m", "looplm", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"looplm {__version__}"


def test_package_exports_and_light_imports():
    code = ("import sys, looplm; from looplm.cli import build_parser; build_parser(); "
            "assert 'torch' not in sys.modules, 'import looplm / --help must not import torch'; "
            "from looplm import ModelConfig, RecursiveCausalLM, get_preset, load_checkpoint, save_checkpoint; "
            "assert isinstance(RecursiveCausalLM(get_preset('tiny', d_model=32, n_heads=2, head_dim=16, "
            "mod_rank=2)).config, ModelConfig)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_no_command_and_unknown_command(capsys):
    rc, _, err = run(capsys)
    assert rc == 2 and "usage: looplm" in err
    rc, _, err = run(capsys, "frobnicate")
    assert rc == 2 and "invalid choice: 'frobnicate'" in err


# ------------------------------------------------------------------------------------------- info
def info_json(capsys, *argv: str) -> dict:
    rc, out, err = run(capsys, "info", "--json", *argv)
    assert rc == 0, err
    return json.loads(out)


def test_info_report_200m_matches_report_within_1_percent(capsys):
    r = info_json(capsys, "--preset", "report-200m", "--steps", "8")
    assert abs(r["physical_params"] / 124.13e6 - 1) < 0.01
    assert abs(r["virtual_params"] / 176.29e6 - 1) < 0.01
    assert r["virtual_params"] == r["physical_params"] + 7 * r["per_step_params"]
    assert r["recurrence"] == 8
    kv = r["kv_cache_bytes_per_token"]
    assert set(kv) == {"core", "prelude", "coda", "total"}
    assert kv["total"] == kv["core"] + kv["prelude"] + kv["coda"]
    # report-200m: 4 GQA layers * K,V * 4 kv heads * 64 dims * 4 bytes; core: 2 blocks * (128 + 32) * 4 bytes
    assert (kv["prelude"], kv["coda"], kv["core"]) == (8192, 8192, 1280)


def test_info_steps_and_core_kv(capsys):
    r8 = info_json(capsys, "--preset", "tiny", "--steps", "8", "--core-kv", "anchored")
    r16 = info_json(capsys, "--preset", "tiny", "--steps", "16", "--core-kv", "anchored")
    assert r16["physical_params"] == r8["physical_params"]
    assert r16["virtual_params"] - r8["virtual_params"] == 8 * r8["per_step_params"]
    assert r16["flops_per_token"] > r8["flops_per_token"]
    assert r16["kv_cache_bytes_per_token"] == r8["kv_cache_bytes_per_token"]  # anchored: independent of steps
    p8 = info_json(capsys, "--preset", "tiny", "--steps", "8", "--core-kv", "per_step")
    p16 = info_json(capsys, "--preset", "tiny", "--steps", "16", "--core-kv", "per_step")
    assert p16["kv_cache_bytes_per_token"]["core"] == 2 * p8["kv_cache_bytes_per_token"]["core"]
    assert p8["kv_cache_bytes_per_token"]["core"] == 8 * r8["kv_cache_bytes_per_token"]["core"]


def test_info_text_output(capsys):
    rc, out, _ = run(capsys, "info", "--preset", "report-200m")
    assert rc == 0
    assert "physical 124.1" in out and "virtual(R=8) 176." in out and "KV cache/token" in out


def test_unknown_preset_lists_valid_ones(capsys):
    rc, out, err = run(capsys, "info", "--preset", "huge")
    assert rc == 2 and out == ""
    assert err.strip() == "error: unknown preset 'huge'; valid presets: tiny, small, report-200m"


@pytest.mark.parametrize("override, field", [("d_model=-3", "d_model"), ("n_kv_heads=3", "n_kv_heads"),
                                             ("core_kv=sideways", "core_kv"), ("widht=3", "widht")])
def test_bad_field_is_named(capsys, override, field):
    rc, _, err = run(capsys, "info", "--preset", "tiny", "--set", override)
    assert rc == 2
    assert err.startswith("error: ") and field in err and "Traceback" not in err


def test_debug_env_shows_traceback(capsys, monkeypatch):
    from looplm.config import ConfigError

    monkeypatch.setenv("LOOPLM_DEBUG", "1")
    with pytest.raises(ConfigError):
        main(["info", "--preset", "huge"])


# ------------------------------------------------------------------------------- init + generate
MICRO = ["--set", "d_model=32", "--set", "n_heads=2", "--set", "head_dim=16", "--set", "n_kv_heads=1",
         "--set", "n_prelude=1", "--set", "n_coda=1", "--set", "mlp_hidden=64", "--set", "core_mlp_hidden=48",
         "--set", "kv_latent_dim=16", "--set", "rope_dim=8", "--set", "mod_rank=2", "--set", "max_seq_len=64",
         "--set", "recurrence=2"]


@pytest.fixture(scope="module")
def micro_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "ck"
    assert main(["init", "--preset", "tiny", *MICRO, "--vocab-size", "400", "--out", str(out)]) == 0
    return out


def test_init_writes_loadable_checkpoint(micro_ckpt):
    from looplm.checkpoint import load_checkpoint

    model, tok, meta = load_checkpoint(micro_ckpt)
    assert meta["stage"] == "init" and meta["seed"] == 0
    assert model.config.d_model == 32
    assert model.config.vocab_size % 64 == 0 and tok.vocab_size <= model.config.vocab_size < tok.vocab_size + 64


def test_info_from_checkpoint(capsys, micro_ckpt):
    from looplm.checkpoint import load_checkpoint

    model = load_checkpoint(micro_ckpt)[0]
    r = info_json(capsys, "--ckpt", str(micro_ckpt))
    assert r["physical_params"] == sum(p.numel() for p in model.parameters())
    assert r["config"] == model.config.to_dict() and r["checkpoint"] == str(micro_ckpt)


def test_generate_json(capsys, micro_ckpt):
    rc, out, err = run(capsys, "generate", "--ckpt", str(micro_ckpt), "--prompt", "Algorithm: DFS",
                       "--max-new-tokens", "5", "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert {"text", "tokens", "exit_steps", "accept_counts", "tokens_per_s"} <= set(r)
    assert 1 <= len(r["tokens"]) <= 5


def test_generate_is_deterministic_greedy(capsys, micro_ckpt):
    args = ["generate", "--ckpt", str(micro_ckpt), "--prompt", "12 + 30 =", "--max-new-tokens", "6", "--json"]
    first = json.loads(run(capsys, *args)[1])["tokens"]
    second = json.loads(run(capsys, *args, "--no-cache")[1])["tokens"]
    assert first == second


def test_generate_speculative_and_adaptive_exit_options(capsys, micro_ckpt):
    args = ["generate", "--ckpt", str(micro_ckpt), "--prompt", "Graph: A-[B]", "--max-new-tokens", "8", "--json"]
    plain = json.loads(run(capsys, *args)[1])
    spec = json.loads(run(capsys, *args, "--speculative")[1])
    assert spec["tokens"] == plain["tokens"]  # greedy speculative decoding is lossless
    assert sum(spec["accept_counts"]) == len(spec["tokens"])
    rc, out, err = run(capsys, *args, "--steps", "4", "--halt-threshold", "0.5", "--min-steps", "2")
    assert rc == 0, err
    assert all(2 <= s <= 4 for s in json.loads(out)["exit_steps"])


def test_generate_prompt_longer_than_context(capsys, micro_ckpt):
    rc, out, err = run(capsys, "generate", "--ckpt", str(micro_ckpt), "--prompt", "word " * 200)
    assert rc == 2 and out == ""
    assert "max_seq_len=64" in err and "shorten the prompt" in err
    rc, _, err = run(capsys, "generate", "--ckpt", str(micro_ckpt), "--prompt", "hi", "--max-new-tokens", "100")
    assert rc == 2 and "--max-new-tokens <=" in err


def test_generate_missing_checkpoint(capsys, tmp_path):
    rc, _, err = run(capsys, "generate", "--ckpt", str(tmp_path / "nope"), "--prompt", "x")
    assert rc == 2 and "no checkpoint directory" in err and "Traceback" not in err
