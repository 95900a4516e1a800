"""`looplm pretrain` end to end on the micro model: outputs, exact resume after SIGKILL, safe stops on
SIGTERM/SIGINT, a kill in the middle of a save, the non-finite guard, and bad input refused before
any update."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from train_helpers import cli_args, load_weights, looplm_cmd, read_records, subprocess_env

RESUME_STEPS = dict(steps=16, save_every=4, keep=2)


def test_run_outputs(pretrain_config, tmp_path):
    from looplm.checkpoint import load_checkpoint, load_train_state
    from looplm.train.pretrain import main

    cfg = pretrain_config(tmp_path / "run", steps=8, save_every=4, keep=1, eval_every=4, eval_depths=(2, 4))
    assert main(cfg) == 0
    recs = read_records(cfg.out)
    assert [r["step"] for r in recs] == list(range(1, 9))
    for r in recs:
        assert {"loss", "lr", "tokens_per_s", "mfu", "depth", "bptt", "grad_norm"} <= set(r)
        assert 1 <= r["bptt"] == min(r["depth"], 2) and 1 <= r["depth"] <= 8
        assert r["tokens"] == r["step"] * 4 * 32 and 0 < r["mfu"] < 1
    assert len({r["depth"] for r in recs}) > 1  # depth is sampled
    assert sum(r["loss"] for r in recs[-2:]) / 2 < recs[0]["loss"] - 0.1  # it learns
    evals = read_records(cfg.out, "eval")
    assert [e["step"] for e in evals] == [4, 8]
    assert {"val/clrs/loss@2", "val/clrs/bpb@4", "val/math/loss@3", "val/math/bpb@2"} <= set(evals[0])
    steps = sorted(p.name for p in Path(cfg.out).glob("step_*"))
    assert steps == ["step_0000008"]  # keep=1
    model, tok, meta = load_checkpoint(Path(cfg.out) / "final")
    assert meta["stage"] == "pretrain" and meta["step"] == 8 and tok.vocab_size == 320
    state = load_train_state(Path(cfg.out) / "step_0000008")
    assert state["step"] == 8 and state["config"]["lr"] == cfg.lr and "optimizer" in state
    spec_before = load_weights(Path(cfg.out) / "final")["speculative_projs.0.weight"]
    assert torch.count_nonzero(spec_before) == 0  # untrained heads stay at their (zero) init


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, pretrain_dir, micro_sets):
    """The reference: RESUME_STEPS updates in one go, in this process."""
    from looplm.train.pretrain import PretrainConfig, main

    out = tmp_path_factory.mktemp("straight") / "run"
    cfg = PretrainConfig(data=str(pretrain_dir), out=str(out), preset="tiny", model_overrides=list(micro_sets),
                         batch_size=4, seq_len=32, warmup=2, lr=3e-3, eval_every=0, eval_batches=1, eval_depths=(2,),
                         bptt_steps=2, peak_flops=1e10, threads=1, progress=False, loss_on="all", windows="random",
                         **RESUME_STEPS)
    assert main(cfg) == 0
    return out


def assert_same_run(a: Path, b: Path) -> None:
    la = [(r["step"], r["loss"], r["depth"]) for r in read_records(a)]
    lb = [(r["step"], r["loss"], r["depth"]) for r in read_records(b)]
    assert la == lb  # same losses, bit for bit, and same sampled depths
    wa, wb = load_weights(a / "final"), load_weights(b / "final")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # bit-identical weights


def _start(cfg, **env) -> subprocess.Popen:
    return subprocess.Popen(looplm_cmd(cli_args(cfg)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=subprocess_env(**env))


def _wait_for(proc: subprocess.Popen, pattern: str, timeout: float = 90) -> list[str]:
    lines, t0 = [], time.time()
    while time.time() - t0 < timeout:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if pattern in line:
            return lines
    proc.kill()
    raise AssertionError(f"never saw {pattern!r}; output:\n{''.join(lines)}")


def _resume(pretrain_config, out):
    from looplm.train.pretrain import main

    return main(pretrain_config(out, resume=True, **RESUME_STEPS))


def test_sigkill_mid_save_then_exact_resume(pretrain_config, straight_run, tmp_path):
    """k updates, a SIGKILL (here: in the middle of writing the step-8 checkpoint, so updates 5-8 are
    lost too), then --resume to N: the same losses and bit-identical weights as N updates straight,
    and the last good checkpoint (step 4) was never damaged."""
    from looplm.checkpoint import verify_checkpoint

    cfg = pretrain_config(tmp_path / "run", **RESUME_STEPS)
    proc = _start(cfg, LOOPLM_TEST_SAVE_SLEEP="8:60")
    _wait_for(proc, "[test hook] sleeping")
    partial = list(Path(cfg.out).glob(".step_0000008.tmp-*"))
    assert partial and (partial[0] / "model.safetensors").is_file()  # the save is half done
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    assert max(r["step"] for r in read_records(cfg.out)) == 8
    assert not (Path(cfg.out) / "step_0000008").exists() and not (Path(cfg.out) / "final").exists()
    assert verify_checkpoint(Path(cfg.out) / "step_0000004")["step"] == 4  # the last good one is intact
    assert _resume(pretrain_config, cfg.out) == 0
    assert not list(Path(cfg.out).glob(".step_*"))  # leftovers of the killed save are cleaned up
    assert_same_run(straight_run, Path(cfg.out))


def test_sigterm_saves_and_exits_cleanly(pretrain_config, straight_run, tmp_path):
    from looplm.checkpoint import load_train_state

    cfg = pretrain_config(tmp_path / "run", **RESUME_STEPS)
    proc = _start(cfg)
    _wait_for(proc, f"step  6/{cfg.steps}")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "Traceback" not in out and "stopped by a signal" in out
    stopped_at = max(r["step"] for r in read_records(cfg.out))
    assert 6 <= stopped_at < cfg.steps
    assert load_train_state(Path(cfg.out) / f"step_{stopped_at:07d}")["step"] == stopped_at  # saved on the way out
    assert _resume(pretrain_config, cfg.out) == 0
    assert_same_run(straight_run, Path(cfg.out))


def test_sigint_sets_the_stop_flag_and_a_second_one_interrupts():
    import os

    from looplm.train.rundir import StopSignals

    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs between bytecodes of the main thread
        assert stop.signum == signal.SIGINT  # no KeyboardInterrupt: the loop saves, then exits 130
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_single_non_finite_step_is_not_applied(pretrain_config, tmp_path, monkeypatch):
    from looplm.train.pretrain import main

    clean = pretrain_config(tmp_path / "clean", steps=3, save_every=1, keep=3)
    assert main(clean) == 0
    monkeypatch.setenv("LOOPLM_TEST_NAN_STEPS", "2")  # the 3rd update (0-based step 2)
    poisoned = pretrain_config(tmp_path / "nan", steps=3, save_every=1, keep=3)
    assert main(poisoned) == 0
    recs = read_records(poisoned.out)
    assert [r["skipped"] for r in recs] == [False, False, True]
    assert recs[2]["loss"] is None  # NaN written as null
    after_two = load_weights(Path(clean.out) / "step_0000002")
    final = load_weights(Path(poisoned.out) / "final")
    assert all(torch.equal(after_two[k], final[k]) for k in final)  # the bad update changed nothing


def test_consecutive_non_finite_steps_stop_with_checkpoint_intact(pretrain_config, tmp_path, monkeypatch, capsys):
    from looplm.checkpoint import verify_checkpoint
    from looplm.train.pretrain import main

    monkeypatch.setenv("LOOPLM_TEST_NAN_STEPS", "3,4,5,6")
    cfg = pretrain_config(tmp_path / "run", steps=12, save_every=2, keep=5, max_bad_steps=3)
    assert main(cfg) == 3
    err = capsys.readouterr().err
    assert "3 updates in a row had a non-finite loss" in err and "step_0000004" in err
    assert [r["skipped"] for r in read_records(cfg.out)] == [False] * 3 + [True] * 3  # stopped at the 3rd bad one
    assert not (Path(cfg.out) / "step_0000006").exists()
    w = load_weights(verify_checkpoint(Path(cfg.out) / "step_0000004") and Path(cfg.out) / "step_0000004")
    assert all(torch.isfinite(t).all() for t in w.values())
    monkeypatch.delenv("LOOPLM_TEST_NAN_STEPS")
    assert main(pretrain_config(cfg.out, steps=12, save_every=2, keep=5, max_bad_steps=3, resume=True)) == 0


# ------------------------------------------------------------------------------------ bad input
def _no_training(out: Path) -> None:
    assert not (out / "metrics.jsonl").exists() or not read_records(out)
    assert not list(out.glob("step_*"))


def test_data_dir_without_manifest(pretrain_config, tmp_path):
    from looplm.data.shards import ManifestError
    from looplm.train.pretrain import main

    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="manifest.json"):
        main(pretrain_config(tmp_path / "run", data=str(tmp_path / "empty")))
    _no_training(tmp_path / "run")


def test_tokenizer_mismatch_with_checkpoint(pretrain_config, micro_config, tmp_path):
    from looplm.checkpoint import save_checkpoint
    from looplm.model import RecursiveCausalLM
    from looplm.tokenizer import Tokenizer
    from looplm.train.pretrain import main

    other = Tokenizer.train(["completely different text about cats and dogs"] * 20, vocab_size=300)
    save_checkpoint(tmp_path / "ckpt", RecursiveCausalLM(micro_config), other)
    with pytest.raises(ValueError, match="tokenizer mismatch.*tokenizer_sha256"):
        main(pretrain_config(tmp_path / "run", init=str(tmp_path / "ckpt"), preset=None, model_overrides=[]))
    _no_training(tmp_path / "run")


def test_seq_len_above_context(pretrain_config, tmp_path):
    from looplm.config import ConfigError
    from looplm.train.pretrain import main

    with pytest.raises(ConfigError, match=r"seq_len=65 exceeds the model context max_seq_len=64"):
        main(pretrain_config(tmp_path / "run", seq_len=65))
    _no_training(tmp_path / "run")


def test_resume_checks(pretrain_config, tmp_path):
    from looplm.train.pretrain import main
    from looplm.train.rundir import ResumeError

    with pytest.raises(ResumeError, match="no resumable checkpoint"):
        main(pretrain_config(tmp_path / "run", resume=True))
    assert main(pretrain_config(tmp_path / "run", steps=4, save_every=2)) == 0
    n_records = len(read_records(tmp_path / "run"))
    with pytest.raises(ResumeError, match=r"different config \(lr: checkpoint 0.003 vs now 0.001"):
        main(pretrain_config(tmp_path / "run", steps=4, save_every=2, lr=1e-3, resume=True))
    with pytest.raises(ResumeError, match="already holds checkpoints"):
        main(pretrain_config(tmp_path / "run", steps=4, save_every=2))
    assert len(read_records(tmp_path / "run")) == n_records  # nothing ran


def test_cli_reports_bad_input_in_one_line(pretrain_config, tmp_path, capsys):
    from looplm.cli import main as cli

    argv = cli_args(pretrain_config(tmp_path / "run"))
    argv[argv.index("--seq-len") + 1] = "100"
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: PretrainConfig.seq_len=100") and "Traceback" not in err


def test_time_limit_finishes_early_with_final_checkpoint(pretrain_config, tmp_path):
    from looplm.train.pretrain import train

    cfg = pretrain_config(tmp_path / "run", steps=1000, save_every=500, max_minutes=1e-5)  # 0.6 ms
    summary = train(cfg)
    assert summary["exit_code"] == 0 and summary["step"] == 1  # the budget is checked after each update
    assert (Path(cfg.out) / "final" / "meta.json").is_file() and (Path(cfg.out) / "step_0000001").is_dir()
    events = [e["message"] for e in read_records(cfg.out, "event")]
    assert any("time limit" in m for m in events)
    assert read_records(cfg.out, "eval")  # a final evaluation ran


def test_logging_backend_asked_for_but_missing(pretrain_config, tmp_path):
    import importlib.util

    from looplm.config import ConfigError
    from looplm.train.pretrain import main

    for flag, package in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        if importlib.util.find_spec(package) is not None:
            continue  # installed: nothing to refuse
        with pytest.raises(ConfigError, match=f"--{flag} needs the {package} package"):
            main(pretrain_config(tmp_path / flag, **{flag: True}))
        _no_training(tmp_path / flag)


@pytest.mark.slow
def test_compile_matches_eager_and_caches_under_looplm_cache(pretrain_config, tmp_path):
    import os

    eager = pretrain_config(tmp_path / "eager", steps=3)
    compiled = pretrain_config(tmp_path / "compiled", steps=3, compile=True)
    env = subprocess_env(LOOPLM_CACHE=str(tmp_path / "cache"))
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    for cfg in (eager, compiled):
        argv = cli_args(cfg) + (["--compile"] if cfg.compile else [])
        proc = subprocess.run(looplm_cmd(argv), capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    a, b = read_records(eager.out), read_records(compiled.out)
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-4)
    inductor = tmp_path / "cache" / "compile" / "inductor"
    assert inductor.is_dir() and any(inductor.iterdir())
    assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") != str(inductor)  # only the child process was redirected


def test_bf16_autocast_on_cpu(pretrain_config, tmp_path):
    from looplm.train.pretrain import main

    cfg = pretrain_config(tmp_path / "run", steps=3, bf16=True)
    assert main(cfg) == 0
    losses = [r["loss"] for r in read_records(cfg.out)]
    assert all(isinstance(x, float) and 4 < x < 7 for x in losses)
    assert json.loads((Path(cfg.out) / "run_config.json").read_text())["bf16"] is True


# ------------------------------------------------------------------------- answers and documents
def test_scored_targets_follow_the_masks():
    import numpy as np

    from looplm.data.shards import Windows
    from looplm.train.common import IGNORE
    from looplm.train.pretrain import scored_targets

    tokens = np.arange(12).reshape(2, 6)
    mask = np.array([[1, 0, 0, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=np.uint8)
    valid = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=bool)
    x, y = scored_targets(Windows(tokens, mask, valid), "answers")
    assert np.array_equal(x, tokens[:, :-1])
    assert y.tolist() == [[IGNORE, IGNORE, 3, 4, IGNORE], [7, 8, 9, IGNORE, IGNORE]]
    _, y_all = scored_targets(Windows(tokens, mask, valid), "all")
    assert y_all.tolist() == [[1, 2, 3, 4, 5], [7, 8, 9, IGNORE, IGNORE]]  # padding is never scored


def test_answers_on_document_windows(pretrain_config, tmp_path):
    from looplm.train.pretrain import main

    cfg = pretrain_config(tmp_path / "run", steps=6, eval_every=6, seq_len=64, loss_on="answers", windows="documents")
    assert main(cfg) == 0
    recs = read_records(cfg.out)
    assert all(r["scored"] < 4 * 64 for r in recs) and sum(r["scored"] for r in recs) > 0  # questions are not scored
    ev = read_records(cfg.out, "eval")[-1]
    assert ev["val/math/loss@2"] > 0  # maths answers fit in 64 tokens; CLRS ones (~200 tokens in) do not:
    assert ev["val/clrs/loss@2"] is None  # NaN (null in the JSONL): nothing scored, not a loss of 0
    from looplm.config import ConfigError

    with pytest.raises(ConfigError, match=r"seq_len=24: no target is scored.*raise --seq-len"):
        main(pretrain_config(tmp_path / "unscored", seq_len=24, loss_on="answers", windows="documents",
                             data=str(nothing_scored(tmp_path, cfg.data))))
    _no_training(tmp_path / "unscored")


def nothing_scored(tmp_path, data: str) -> Path:
    """A copy of the test data whose train loss mask is all zeros: every window holds questions only,
    as when --seq-len ends before any answer starts."""
    import shutil

    import numpy as np

    out = tmp_path / "unscored-data"
    shutil.copytree(data, out)
    m = json.loads((out / "manifest.json").read_text())
    for s in m["loss_mask"]["train"]["shards"]:
        mask = np.zeros(s["tokens"], dtype=np.uint8)
        mask.tofile(out / s["file"])
    return out


def test_answers_need_a_loss_mask(pretrain_config, pretrain_dir, tmp_path):
    import shutil

    from looplm.config import ConfigError
    from looplm.data.shards import ManifestError
    from looplm.train.pretrain import main

    old = tmp_path / "old"
    shutil.copytree(pretrain_dir, old)
    m = json.loads((old / "manifest.json").read_text())
    del m["loss_mask"]  # a build from before loss masks
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="--loss-on answers needs the data's loss mask"):
        main(pretrain_config(tmp_path / "run", data=str(old), loss_on="answers"))
    _no_training(tmp_path / "run")
    assert main(pretrain_config(tmp_path / "run2", data=str(old), steps=2, loss_on="all")) == 0
    with pytest.raises(ConfigError, match=r"PretrainConfig.windows='docs' is invalid.*documents"):
        main(pretrain_config(tmp_path / "run3", windows="docs"))
