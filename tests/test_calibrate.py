"""Speed calibrations: halt labels and sweep against brute force, speculative-head targets, frozen bodies
(bit for bit), data loading errors, config validation, end to end through the stage functions and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from looplm.calibrate import HaltCalibConfig, SpecTrainConfig, calibrate_halt, train_spec
from looplm.calibrate.common import load_samples, split_heldout
from looplm.calibrate.halt import adaptive_sweep, build_labels, coda_logits, convergence_labels, depth_predictions, \
    fit_halt_head
from looplm.calibrate.spec import acceptance_from_outputs, collect_hidden
from looplm.checkpoint import load_checkpoint, save_checkpoint
from looplm.cli import main as cli_main
from looplm.config import ConfigError
from looplm.generate import GenerationConfig, GenerationOutput, generate
from looplm.model import RecursiveCausalLM
from looplm.tasks.base import DataSourceError


def micro_model(micro_config, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    m = RecursiveCausalLM(micro_config.replace(max_seq_len=128, max_steps=8, recurrence=4)).to(dtype)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if any(k in n for k in ("g_step", "g_x", "gate_proj")):
                p.normal_(std=0.05)
            if n.startswith("core.blocks."):
                p.mul_(10.0)  # a core strong enough that depth changes predictions
        m.core.halt.weight.normal_(std=3.0)  # mixed exits before any fitting
    return m.eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, micro_config, small_tokenizer):
    path = tmp_path_factory.mktemp("calib") / "init"
    save_checkpoint(path, micro_model(micro_config, dtype=torch.float32), small_tokenizer, meta={"stage": "test"})
    return path


def state(path):
    return load_checkpoint(path)[0].state_dict()


def only_these_changed(before, after, prefixes):
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(prefixes) for k in changed), changed
    return changed


# ------------------------------------------------------------------------------------------ halt labels
def test_coda_on_each_state_equals_a_shallower_forward_and_features_give_halt_probs(micro_config):
    m = micro_model(micro_config)
    ids = torch.randint(8, 300, (2, 11))
    preds, kl, feats = depth_predictions(m, ids, 5)
    out = m(ids, 5, return_halt=True, return_states=True)
    pos = torch.arange(11).expand(2, 11)
    for t in range(5):
        ref = m(ids, t + 1).logits
        torch.testing.assert_close(coda_logits(m, out.states[t + 1], pos), ref, rtol=0, atol=1e-10)
        assert torch.equal(preds[t], ref.argmax(-1))
        torch.testing.assert_close(m.core.halt(feats[t]).sigmoid().squeeze(-1), out.halt_probs[t], rtol=0, atol=1e-12)
    assert torch.all(kl[-1].abs() < 1e-12) and torch.all(kl[:-1] > 0)


def test_convergence_labels_need_lasting_agreement_and_small_kl():
    preds = torch.tensor([[5, 3, 3, 3], [3, 5, 3, 3], [3, 3, 3, 3], [4, 4, 4, 3]]).T  # [n=4, N=4]
    kl = torch.zeros(4, 4)
    kl[1, 2] = 0.5  # column 2 agrees everywhere but step 1 is too far from full depth
    y = convergence_labels(preds, kl, 0.1)
    assert y.T.tolist() == [[False, True, True, True],
                            [False, False, True, True],  # agrees at step 0 but not at step 1: not yet
                            [True, False, True, True],
                            [False, False, False, True]]


def test_fit_changes_only_the_halt_head_and_lowers_bce(micro_config):
    m = micro_model(micro_config, dtype=torch.float32)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    seqs = [torch.randint(8, 300, (n,)).tolist() for n in (9, 14, 6)]
    lab = build_labels(m, seqs, 6, 0.1, 2, 2, False)
    n, N, d = lab["feats"].shape
    assert (n, N) == (6, 29) and lab["labels"][-1].all()
    fit = fit_halt_head(m, lab["feats"].reshape(-1, d), lab["labels"].reshape(-1), 40, 0.05, 64, 0, False)
    assert fit["bce_after"] < fit["bce_before"]
    only_these_changed(before, m.state_dict(), ("core.halt.",))


def test_sweep_agreement_matches_position_by_position_adaptive_decoding(micro_config):
    m = micro_model(micro_config)
    seqs = [torch.randint(8, 300, (n,)).tolist() for n in (10, 7, 12)]
    plens = [4, 3, 6]
    tau, ms, steps = 0.6, 2, 5
    row = adaptive_sweep(m, plens, seqs, steps, [(ms, tau), (1, 1.0)], 2, 2, False)
    agree = n = exits = 0
    for s, p in zip(seqs, plens):
        for i in range(p - 1, len(s) - 1):  # what uncached adaptive decoding computes for each new token
            x = torch.tensor([s[:i + 1]])
            prompt_full_depth = (torch.arange(i + 1) >= p)[None]  # only generated tokens exit, as in generate
            ada = m(x, steps, halt_threshold=tau, min_steps=ms, exit_mask=prompt_full_depth)
            agree += int(ada.logits[0, -1].argmax() == m(x, steps).logits[0, -1].argmax())
            exits += int(ada.exit_steps[0, -1])
            n += 1
    assert row[0]["agreement"] == agree / n and row[0]["mean_exit_steps"] == exits / n
    assert 2 <= row[0]["mean_exit_steps"] < steps and row[0]["agreement"] < 1  # the check can fail
    assert row[1]["agreement"] == 1.0 and row[1]["core_flops_saved"] == 0.0


# ------------------------------------------------------------------------------------------ spec targets
def test_collect_hidden_targets_are_tokens_i_plus_1_plus_k(micro_config):
    m = micro_model(micro_config)
    seqs = [list(range(10, 19)), list(range(30, 36))]
    h, tgt = collect_hidden(m, seqs, [4, 2], 3, 0, 2, False)
    assert h.shape == (5 + 4, micro_config.d_model) and tgt.shape == (9, micro_config.n_spec_heads)
    assert tgt[0].tolist() == [15, 16] and tgt[4].tolist() == [-100, -100]  # position 3 of seq 0; position 7
    assert tgt[5].tolist() == [33, 34] and tgt[7].tolist() == [35, -100] and tgt[8].tolist() == [-100, -100]
    torch.testing.assert_close(h[5], m(torch.tensor([seqs[1]]), 3).hidden[0, 1], rtol=0, atol=1e-10)


def test_acceptance_from_outputs_counts_verify_passes_only():
    out = GenerationOutput(tokens=[list(range(10))], exit_steps=[[]], accept_counts=[[3, 1, 5, 1]], forward_passes=4)
    a = acceptance_from_outputs([out], 4)
    assert a["verify_passes"] == 3 and a["mean_tokens_per_verify"] == 3.0
    assert a["head_acceptance"] == [2 / 3, 1.0, 0.5, 1.0]


# ------------------------------------------------------------------------------------------ data + configs
def test_load_samples_kinds_and_errors(tmp_path, small_tokenizer):
    sft = tmp_path / "sft.jsonl"
    sft.write_text('{"prompt": "What is 1 + 2?", "response": "3", "domain": "math"}\n' * 3)
    rl = tmp_path / "rl.jsonl"
    rl.write_text('{"prompt": "What is 1 + 2?", "answer": "3", "task": "arith"}\n' * 2)
    s = load_samples(str(sft), None, 0, small_tokenizer)
    assert len(s) == 3 and s[0].response[-1] == small_tokenizer.eos_id
    assert s[0].prompt == small_tokenizer.encode(small_tokenizer.chat_prompt("What is 1 + 2?"))
    assert [x.response for x in load_samples(str(rl), None, 0, small_tokenizer)] == [None, None]
    assert len(load_samples("arith", 4, 0, small_tokenizer)) == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(DataSourceError, match="bad.jsonl:2: missing field"):
        load_samples(str(bad), None, 0, small_tokenizer)
    with pytest.raises(ValueError, match="n=5 examples requested"):
        load_samples(str(rl), 5, 0, small_tokenizer)
    with pytest.raises(ValueError, match="--n"):
        load_samples("arith", None, 0, small_tokenizer)
    with pytest.raises(ValueError, match="neither an existing file nor a task"):
        load_samples("no_such_task", 3, 0, small_tokenizer)
    with pytest.raises(ValueError, match="loaded from a source"):
        load_samples("gsm8k", 3, 0, small_tokenizer)
    with pytest.raises(ValueError, match="hold out"):
        split_heldout(s[:1], 0.5, 0)


@pytest.mark.parametrize("cls, kwargs, field", [
    (HaltCalibConfig, {"init": "a", "data": "arith"}, "HaltCalibConfig.out"),
    (HaltCalibConfig, {"init": "a", "data": "arith", "out": "b", "kl_delta": 0.0}, "HaltCalibConfig.kl_delta"),
    (HaltCalibConfig, {"init": "a", "data": "arith", "out": "b", "taus": (0.5, 1.5)}, "HaltCalibConfig.taus"),
    (HaltCalibConfig, {"init": "a", "data": "arith", "out": "a"}, "HaltCalibConfig.out"),
    (HaltCalibConfig, {"init": "a", "data": "arith", "out": "b", "sequences": "x"}, "HaltCalibConfig.sequences"),
    (SpecTrainConfig, {"init": "a", "out": "b", "data": "arith", "epochs": 0}, "SpecTrainConfig.epochs"),
    (SpecTrainConfig, {"init": "a", "out": "b", "data": "arith", "target": "x"}, "SpecTrainConfig.target"),
    (SpecTrainConfig, {"init": "a", "out": "b", "data": "arith", "heldout_frac": 1.0}, "SpecTrainConfig.heldout_frac"),
])
def test_config_validation_names_the_field(cls, kwargs, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        cls(**kwargs).validate()


# ------------------------------------------------------------------------------------------ end to end
def test_calibrate_halt_end_to_end(ckpt, tmp_path):
    out = tmp_path / "halt"
    res = calibrate_halt(HaltCalibConfig(init=str(ckpt), data="arith", n=12, out=str(out), max_new_tokens=6,
                                         min_steps_grid=(1, 2), taus=(0.5, 0.9), epochs=3, batch_size=4,
                                         bench_batches=(1, 2), bench_prompts=2, bench_repeats=1, progress=False))
    only_these_changed(state(ckpt), state(out), ("core.halt.",))
    _, _, meta = load_checkpoint(out)
    c = res["chosen"]
    assert (meta["halt_threshold"], meta["halt_min_steps"], meta["halt_steps"]) == (c["tau"], c["min_steps"], 4)
    assert meta["stage"] == "calibrate-halt" and c["agreement"] >= 0.99
    q = {int(k): v for k, v in res["quantile_taus"].items()}  # per min_steps: quantiles of the fitted head
    assert set(q) == {1, 2} and all(0 < t < 1 for v in q.values() for t in v)
    assert {(r["min_steps"], r["tau"]) for r in res["sweep"]} == {(m, t) for m in (1, 2)
                                                                    for t in (0.5, 0.9, 1.0, *q[m])}
    assert res["halt_fit"]["positions"] == "decode" and res["halt_fit"]["steps_fitted"] == 3
    kinds = res["exit_steps_by_kind"]
    assert kinds["positions"] == sum(k["count"] for k in kinds["kinds"].values()) > 0
    assert (kinds["tau"], kinds["min_steps"]) == (c["tau"], c["min_steps"])
    assert (out / "exit_steps_by_kind.png").read_bytes()[:4] == b"\x89PNG" and res["exit_kind_plot"].endswith(".png")
    assert json.loads((out / "calibration.json").read_text())["chosen"] == c
    assert (out / "calibration.png").read_bytes()[:4] == b"\x89PNG"
    assert set(res["speed"]) >= {"batch_1", "batch_2"} and res["speed"]["batch_1"]["speedup"] > 0
    assert c["mean_exit_block_passes"] == 2 * c["mean_exit_steps"]


def test_calibrate_halt_default_grid_follows_the_depth(ckpt, tmp_path):
    """Unset, the min_steps grid is 1 .. min(3, steps), so a shallow model (R = 2) calibrates by default;
    an explicit grid beyond the depth is an error that names the field."""
    kw = dict(init=str(ckpt), data="arith", n=8, max_new_tokens=4, steps=2, taus=(0.9,), epochs=1, batch_size=4,
              bench_repeats=0, progress=False)
    res = calibrate_halt(HaltCalibConfig(**kw, report_dir=str(tmp_path / "r")))
    assert {r["min_steps"] for r in res["sweep"]} == {1, 2}
    with pytest.raises(ConfigError, match=r"HaltCalibConfig\.min_steps_grid"):
        calibrate_halt(HaltCalibConfig(**kw, report_dir=str(tmp_path / "r2"), min_steps_grid=(1, 2, 3)))


def test_train_spec_cli_end_to_end(ckpt, tmp_path, capsys, small_tokenizer):
    out = tmp_path / "spec"
    rc = cli_main(["train-spec", "--init", str(ckpt), "--out", str(out), "--data", "arith", "--n", "12",
                   "--epochs", "30", "--lr", "0.01", "--max-new-tokens", "6", "--eval-prompts", "3",
                   "--bench-repeats", "1", "--no-progress", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    only_these_changed(state(ckpt), state(out), ("speculative_projs.", "speculative_biases."))
    assert all(a < b for a, b in zip(res["after"]["train"]["ce"], res["before"]["train"]["ce"]))
    assert res["decoding"]["identical"] is True and res["decoding"]["speedup"] > 0
    assert load_checkpoint(out)[2]["spec_training"]["epochs"] == 30
    m = load_checkpoint(out)[0].double()  # independent identity check, exact arithmetic
    prompts = [small_tokenizer.encode(small_tokenizer.chat_prompt(f"What is {i} + 3?")) for i in range(3)]
    cfg = GenerationConfig(max_new_tokens=8, steps=4)
    spec = generate(m, prompts, GenerationConfig(max_new_tokens=8, steps=4, speculative=True))
    assert spec.tokens == generate(m, prompts, cfg).tokens and max(max(a) for a in spec.accept_counts) >= 1


def test_calibrate_halt_cli_report_only_and_errors(ckpt, tmp_path, capsys):
    rc = cli_main(["calibrate-halt", "--init", str(ckpt), "--data", "arith", "--n", "8", "--report-dir",
                   str(tmp_path / "rep"), "--max-new-tokens", "4", "--min-steps", "1", "--taus", "0.5",
                   "--epochs", "2", "--bench-repeats", "0", "--no-progress"])
    assert rc == 0 and "chosen tau=" in capsys.readouterr().out
    assert (tmp_path / "rep" / "calibration.json").is_file() and not (tmp_path / "rep" / "meta.json").exists()
    rc = cli_main(["calibrate-halt", "--init", str(ckpt), "--data", "arith", "--n", "8"])
    assert rc == 2 and "HaltCalibConfig.out" in capsys.readouterr().err
    rc = cli_main(["train-spec", "--init", str(ckpt), "--out", str(tmp_path / "s"), "--data", "arith"])
    assert rc == 2 and "--n" in capsys.readouterr().err


def test_data_targets_need_responses(ckpt, tmp_path):
    rl = tmp_path / "rl.jsonl"
    rl.write_text('{"prompt": "What is 1 + 2?", "answer": "3", "task": "arith"}\n' * 4)
    with pytest.raises(ValueError, match="target='data' needs responses"):
        train_spec(SpecTrainConfig(init=str(ckpt), out=str(tmp_path / "o"), data=str(rl), target="data",
                                   progress=False))
    with pytest.raises(ValueError, match="sequences='data' needs responses"):
        calibrate_halt(HaltCalibConfig(init=str(ckpt), data=str(rl), report_dir=str(tmp_path / "r"),
                                       sequences="data", progress=False))
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()
