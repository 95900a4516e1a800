"""The GRPO stage: batch layout and masks, temperature in log-probs, reference frozen, every trainable
parameter updated, truncation masking, config validation, exact resume, the non-finite guard's
limit, the device reaching the reproduce phases."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

import looplm.train.grpo as G
import looplm.train.grpo_rollouts as GR
from looplm.checkpoint import load_checkpoint, save_checkpoint
from looplm.config import ConfigError
from looplm.model import RecursiveCausalLM
from looplm.train.rundir import ResumeError


@pytest.fixture
def ckpt(tmp_path, micro_config, small_tokenizer):
    torch.manual_seed(0)
    model = RecursiveCausalLM(micro_config)
    return save_checkpoint(tmp_path / "init", model, small_tokenizer)


def cfg_for(ckpt, out, **kw):
    base = dict(init=str(ckpt), out=str(out), task="arith", n_prompts=50, eval_n=0, eval_every=0,
                max_new_tokens=6, steps=2, recurrence=2, save_every=0, lr=1e-6, seed=0)
    base.update(kw)
    return G.GRPOConfig(**base)


def fake_scores(monkeypatch):
    """Varied rewards (so advantages are non-zero) without a trained model: reward = completion length parity."""
    def score(text, row, reward, mode):
        r = float(len(text) % 3 == 0)
        return {"reward": r, "answer_correct": r}
    monkeypatch.setattr(GR, "score_completion", score)


def train_records(out) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == "train"]


def test_sequence_batch_masks_completion_tokens_only():
    ids, mask = GR.sequence_batch([[5, 6, 7], [8]], [[1, 2, 0], [3]], pad_id=9)
    assert ids.tolist() == [[5, 6, 7, 1, 2, 0], [8, 3, 9, 9, 9, 9]]
    # mask[i, j] = 1 iff token j+1 is a completion token (EOS=0 included, padding after it excluded)
    assert mask.tolist() == [[0, 0, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_token_logprobs_apply_temperature(micro_config):
    torch.manual_seed(0)
    m = RecursiveCausalLM(micro_config).double()
    ids = torch.randint(0, micro_config.vocab_size, (2, 7))
    logp, ent = GR.token_logprobs(m, ids, 2, temperature=0.7)
    logits = m(ids[:, :-1], 2).logits / 0.7
    ref = F.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(logp, ref.float(), rtol=1e-6, atol=1e-6)
    assert bool((ent > 0).all())


def test_group_size_below_two_is_refused(ckpt, tmp_path):
    with pytest.raises(ConfigError, match="group_size"):
        cfg_for(ckpt, tmp_path / "o", group_size=1).validate()
    with pytest.raises(ConfigError, match="exactly one"):
        cfg_for(ckpt, tmp_path / "o", prompts="x.jsonl").validate()


def test_rollout_lays_out_g_consecutive_copies(ckpt, tmp_path):
    model, tok, _ = load_checkpoint(ckpt)
    rows = [{"prompt": "What is 1 + 2?", "answer": "3", "task": "arith"},
            {"prompt": "What is 30 * 4?", "answer": "120", "task": "arith"}]
    ro = GR.rollout(model, tok, rows, cfg_for(ckpt, tmp_path, group_size=3), steps=2, seed=0)
    p0, p1 = (tok.encode(tok.chat_prompt(r["prompt"])) for r in rows)
    assert ro.prompt_ids == [p0, p0, p0, p1, p1, p1]
    assert len(ro.completions) == 6 and len(ro.scores) == 6


def test_compiled_rollouts_sample_the_same_completions(ckpt, tmp_path, cpp_compiler, monkeypatch):
    """--compile-rollouts decodes with the compiled step: the same seeded samples as eager decoding."""
    import looplm.generate

    calls = []
    real = looplm.generate.decode_compiled
    monkeypatch.setattr(looplm.generate, "decode_compiled", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, tok, _ = load_checkpoint(ckpt)
    rows = [{"prompt": "What is 1 + 2?", "answer": "3", "task": "arith"},
            {"prompt": "What is 30 * 4?", "answer": "120", "task": "arith"}]
    eager, comp = (GR.rollout(model, tok, rows, cfg_for(ckpt, tmp_path, compile_rollouts=c), steps=2, seed=3)
                   for c in (False, True))
    assert comp.completions == eager.completions and comp.scores == eager.scores
    assert len(calls) == 1  # only the compile_rollouts=True rollout ran the compiled decoder


def test_high_lr_updates_every_trainable_parameter_and_not_the_reference(ckpt, tmp_path, monkeypatch):
    fake_scores(monkeypatch)
    seen = {}
    real = GR.make_reference

    def spy(policy):
        seen["ref"] = real(policy)
        return seen["ref"]

    monkeypatch.setattr(GR, "make_reference", spy)
    cfg = cfg_for(ckpt, tmp_path / "run", lr=1e-2, steps=3, group_size=4, prompts_per_step=2)
    before, _, _ = load_checkpoint(ckpt)
    G.train(cfg)
    after, _, _ = load_checkpoint(tmp_path / "run" / "final")
    ref_before = {k: v.clone() for k, v in before.state_dict().items()}
    for k, v in seen["ref"].state_dict().items():
        assert torch.equal(v, ref_before[k]), f"reference model changed: {k}"
    frozen = ("speculative_projs", "speculative_biases", "core.halt")
    unchanged = [n for n, p in after.named_parameters()
                 if not n.startswith(frozen) and torch.equal(p, dict(before.named_parameters())[n])]
    assert unchanged == []
    for n, p in after.named_parameters():
        if n.startswith(frozen):
            assert torch.equal(p, dict(before.named_parameters())[n]), n


def test_all_truncated_with_masking_gives_zero_loss_and_no_change(ckpt, tmp_path, monkeypatch):
    fake_scores(monkeypatch)
    cfg = cfg_for(ckpt, tmp_path / "run", lr=1e-2, mask_truncated=True, max_new_tokens=1, steps=2)
    monkeypatch.setattr(GR, "rollout", _truncating_rollout(GR.rollout))
    G.train(cfg)
    recs = train_records(tmp_path / "run")
    assert len(recs) == 2 and all(r["loss"] == 0.0 and r["truncated_share"] == 1.0 for r in recs)
    before, _, _ = load_checkpoint(ckpt)
    after, _, _ = load_checkpoint(tmp_path / "run" / "final")
    for (n, a), b in zip(after.named_parameters(), before.parameters()):
        assert torch.equal(a, b), n


def _truncating_rollout(real):
    def rollout(model, tok, rows, cfg, steps, seed):
        ro = real(model, tok, rows, cfg, steps, seed)
        ro.completions = [[t for t in c if t != tok.eos_id] or [5] for c in ro.completions]
        ro.truncated = [True] * len(ro.completions)
        return ro
    return rollout


def test_resume_is_exact(ckpt, tmp_path, monkeypatch):
    fake_scores(monkeypatch)
    straight = cfg_for(ckpt, tmp_path / "a", steps=4, lr=1e-3, save_every=2)
    G.train(straight)
    part = cfg_for(ckpt, tmp_path / "b", steps=2, lr=1e-3, save_every=2)
    G.train(part)
    G.train(dataclasses.replace(part, steps=4, resume=True))
    a, _, _ = load_checkpoint(tmp_path / "a" / "final")
    b, _, _ = load_checkpoint(tmp_path / "b" / "final")
    for (n, x), y in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(x, y), n
    la = [r["loss"] for r in train_records(tmp_path / "a")]
    lb = [r["loss"] for r in train_records(tmp_path / "b")]
    assert len(la) == 4 and la == lb


def test_resume_with_other_settings_is_refused(ckpt, tmp_path, monkeypatch):
    fake_scores(monkeypatch)
    G.train(cfg_for(ckpt, tmp_path / "a", steps=2, save_every=2))
    with pytest.raises(ResumeError, match="beta: checkpoint 0.04 vs now 0.1"):
        G.train(cfg_for(ckpt, tmp_path / "a", steps=4, beta=0.1, resume=True))
    G.train(cfg_for(ckpt, tmp_path / "c", steps=2, save_every=2, min_lr_ratio=0.5))
    with pytest.raises(ResumeError, match=r"\(steps: checkpoint 2 vs now 4\)"):  # a decaying schedule depends on it
        G.train(cfg_for(ckpt, tmp_path / "c", steps=4, min_lr_ratio=0.5, resume=True))


def test_process_reward_needs_numeric_task(ckpt, tmp_path):
    with pytest.raises(ConfigError, match="numeric"):
        G.train(cfg_for(ckpt, tmp_path / "o", task="dfs_verbal", reward="process"))


def test_score_completion_reward_parts():
    row = {"prompt": "Tom has 5 apples and buys 3 more. How many apples?", "answer": "8", "task": "word_problems"}
    s = GR.score_completion("5 + 3 = 8\n#### 8", row, "process", "strict")
    assert s["reward"] == 1.25 and s["correct"] == 1 and s["answer_correct"] == 1.0
    assert GR.score_completion("#### 8", row, "outcome", "strict")["reward"] == 1.0
    dfs = {"prompt": "Algorithm: DFS\nQuestion: Graph: A-[B], B-[]. Start: A", "answer": "[A, B]", "task": "dfs_verbal"}
    assert GR.score_completion("Trace: <search> A <search> B <backtrack> A\nAnswer: Path is [A, B]", dfs,
                              "outcome", "strict")["reward"] == 1.0


def test_non_finite_updates_are_skipped_then_stop_the_run(ckpt, tmp_path, monkeypatch, capsys):
    """One poisoned step is not applied; `max_bad_steps` in a row end the run with exit code 3."""
    fake_scores(monkeypatch)
    monkeypatch.setenv("LOOPLM_TEST_NAN_STEPS", "1")
    G.train(cfg_for(ckpt, tmp_path / "one", steps=2, lr=1e-2, save_every=1, keep=2))
    assert [r["skipped"] for r in train_records(tmp_path / "one")] == [False, True]
    after_one, _, _ = load_checkpoint(tmp_path / "one" / "step_0000001")
    final, _, _ = load_checkpoint(tmp_path / "one" / "final")
    assert all(torch.equal(a, b) for a, b in zip(after_one.parameters(), final.parameters()))
    monkeypatch.setenv("LOOPLM_TEST_NAN_STEPS", "1,2,3,4")
    assert G.main(cfg_for(ckpt, tmp_path / "many", steps=6, iterations=2, max_bad_steps=3)) == 3
    assert "3 updates in a row had a non-finite loss" in capsys.readouterr().err
    assert [r["skipped"] for r in train_records(tmp_path / "many")] == [False, True, True]  # 2 updates a step


def test_device_option_and_reproduce_passes_it(ckpt, tmp_path, monkeypatch):
    """`--device` exists on `looplm grpo`; both GRPO phases of `looplm reproduce` hand it over."""
    from types import SimpleNamespace

    from looplm.cli import build_parser
    from looplm.reproduce import phases

    args = build_parser(["grpo"]).parse_args(["grpo", "--init", "c", "--out", "o", "--task", "arith",
                                              "--device", "cpu", "--bf16"])
    assert (args.device, args.bf16) == ("cpu", True)
    seen = []

    def fake_train(cfg):
        seen.append(cfg)
        return {"exit_code": 0, "last": {"reward_mean": 0.5}}

    monkeypatch.setattr(G, "train", fake_train)
    budget = SimpleNamespace(grpo_group=4, grpo_prompts_per_step=2, grpo_max_new=8, grpo_lr=1e-6,
                             grpo_outcome_steps=3, grpo_process_steps=3)
    ctx = SimpleNamespace(cfg=SimpleNamespace(device="cuda", seed=0, threads=None), budget=budget,
                          outputs={"data": {"rl_heldout_file": "h.jsonl", "rl_outcome_file": "o.jsonl",
                                            "rl_process_file": "p.jsonl"}, "sft": {"ckpt_dir": str(ckpt)},
                                   "grpo-outcome": {"ckpt_dir": str(ckpt)}},
                          path=lambda *parts: tmp_path.joinpath(*parts))
    assert phases.grpo_outcome_phase(ctx)["last"] == {"reward_mean": 0.5}
    phases.grpo_process_phase(ctx)
    assert [c.device for c in seen] == ["cuda", "cuda"] and [c.reward for c in seen] == ["outcome", "process"]


def test_loss_types_and_scales_come_from_the_grpo_maths(ckpt, tmp_path):
    from looplm.grpo import LOSS_TYPES, SCALES

    for loss_type in LOSS_TYPES:
        assert cfg_for(ckpt, tmp_path, loss_type=loss_type).loss_type == loss_type
    with pytest.raises(ConfigError, match=r"GRPOConfig\.loss_type='ppo' is invalid: allowed: " + ", ".join(LOSS_TYPES)):
        cfg_for(ckpt, tmp_path, loss_type="ppo")
    with pytest.raises(ConfigError, match=r"GRPOConfig\.scale='std' is invalid: allowed: " + ", ".join(SCALES)):
        cfg_for(ckpt, tmp_path, scale="std")
