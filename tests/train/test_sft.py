"""`looplm sft`: loss on response tokens only (no loss and no gradient from prompt tokens), right
padding that never changes real tokens' logits, the example order, the update normalisation, and an
end-to-end run with exact resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from looplm.train import common as C
from looplm.train.sft import IGNORE, Example, batch_rows, encode_rows, make_batch
from train_helpers import load_weights, read_records

ROWS = [{"prompt": f"What is {a} + {b}?", "response": f"{a} + {b} = {a + b}. #### {a + b}",
         "domain": "math" if a % 2 else "chat"} for a in range(6) for b in range(4)]
REPLAY = {"prompt": "dfs:\nA: [[1 0], [0 1]], initial_trace: [0 1]\ntrace | pi:\n", "response": "[0 1] | [0 1]\n\n",
          "domain": "replay"}


def _examples(tok, rows=ROWS[:3]) -> list[Example]:
    out = []
    for r in rows:
        ids, mask = tok.encode_chat(r["prompt"], r["response"])
        out.append(Example(ids, mask, r["domain"]))
    return out


def test_make_batch_scores_exactly_the_response_tokens(train_tokenizer):
    tok, _ = train_tokenizer
    exs = _examples(tok)
    x, y = make_batch(exs, tok.pad_id, seq_len=64)
    assert x.shape == y.shape and x.shape[1] % 32 == 0 and x.shape[1] <= 64
    for i, e in enumerate(exs):
        L = len(e.ids)
        assert x[i, :L - 1].tolist() == e.ids[:-1] and (x[i, L - 1:] == tok.pad_id).all()
        scored = [t for t in range(x.shape[1]) if y[i, t] != IGNORE]
        assert scored == [t for t in range(L - 1) if e.mask[t + 1] == 1]  # next token is a response token
        assert [int(y[i, t]) for t in scored] == [e.ids[t + 1] for t in scored]
        assert int(y[i, scored[-1]]) == tok.eos_id  # the final EOS is learned
        assert tok.decode([e.ids[t + 1] for t in scored]) == ROWS[i]["response"] + "<|eos|>"


def test_prompt_tokens_carry_no_loss_and_no_gradient(train_tokenizer):
    tok, _ = train_tokenizer
    exs = _examples(tok)
    x, y = make_batch(exs, tok.pad_id, seq_len=64)
    torch.manual_seed(0)
    logits = torch.randn(*x.shape, 320, requires_grad=True)
    y_t = torch.from_numpy(y)
    loss = C.loss_sum(logits, y_t) / (y_t != IGNORE).sum()
    loss.backward()
    prompt_pos = torch.from_numpy(y == IGNORE)
    assert prompt_pos.any() and (~prompt_pos).any()
    assert logits.grad[prompt_pos].abs().max() == 0  # no gradient into prompt/pad positions
    assert (logits.grad[~prompt_pos].abs().sum(-1) > 0).all()
    # change every prompt token (the targets of the prompt positions): the loss is unchanged
    changed = [Example([(t + 17) % 300 if m == 0 else t for t, m in zip(e.ids, e.mask)], e.mask, e.domain) for e in exs]
    x2, y2 = make_batch(changed, tok.pad_id, seq_len=64)
    assert (x2 != x).any()
    assert torch.equal(C.loss_sum(logits, torch.from_numpy(y2)), C.loss_sum(logits, y_t))
    # ...while changing a response token does change it
    resp = [Example([(t + 17) % 300 if m == 1 else t for t, m in zip(e.ids, e.mask)], e.mask, e.domain) for e in exs]
    assert not torch.equal(C.loss_sum(logits, torch.from_numpy(make_batch(resp, tok.pad_id, 64)[1])),
                           C.loss_sum(logits, y_t))


def test_right_padding_leaves_real_logits_unchanged(train_tokenizer, micro_config):
    from looplm.model import RecursiveCausalLM

    tok, _ = train_tokenizer
    torch.manual_seed(0)
    model = RecursiveCausalLM(micro_config).double().eval()
    exs = _examples(tok)
    x, _ = make_batch(exs, tok.pad_id, seq_len=64)
    with torch.no_grad():
        batched = model(torch.from_numpy(x), 3).logits
        for i, e in enumerate(exs):
            alone = model(torch.tensor([e.ids[:-1]]), 3).logits[0]
            torch.testing.assert_close(batched[i, :len(e.ids) - 1], alone, rtol=0, atol=1e-10)


def test_update_loss_is_the_mean_over_all_scored_targets(train_tokenizer, micro_config):
    """Two micro-batches with different numbers of response tokens: the accumulated gradient is that
    of (sum of both losses) / (all scored targets), not the mean of the two means."""
    from looplm.model import RecursiveCausalLM

    tok, _ = train_tokenizer
    torch.manual_seed(0)
    model = RecursiveCausalLM(micro_config).double()
    b1 = [torch.from_numpy(a) for a in make_batch(_examples(tok, ROWS[:1]), tok.pad_id, 64)]
    b2 = [torch.from_numpy(a) for a in make_batch(_examples(tok, [ROWS[5], {**ROWS[6], "response": "x" * 40}]),
                                                   tok.pad_id, 64)]
    n = int((b1[1] != IGNORE).sum() + (b2[1] != IGNORE).sum())
    local = C.accumulate(model, [b1, b2], 3, 3, n, C.Dist(), bf16=False)
    got = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ref = sum(torch.nn.functional.cross_entropy(model(x, 3).logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE,
                                                reduction="sum") for x, y in (b1, b2))
    torch.testing.assert_close(local, ref.detach(), rtol=1e-12, atol=0)
    (ref / n).backward()
    for k, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[k], p.grad, rtol=1e-9, atol=1e-12)


def test_batch_rows_is_a_seeded_permutation_per_epoch():
    n, batch, accum = 12, 4, 1
    epoch0 = [i for s in range(3) for i in batch_rows(n, 0, s, 0, accum, batch)]
    epoch1 = [i for s in range(3, 6) for i in batch_rows(n, 0, s, 0, accum, batch)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(n))  # each example once per epoch
    assert epoch0 != epoch1 and epoch0 != list(range(n))
    assert batch_rows(n, 0, 4, 0, accum, batch) == batch_rows(n, 0, 4, 0, accum, batch)  # stateless
    assert batch_rows(n, 1, 0, 0, accum, batch) != batch_rows(n, 0, 0, 0, accum, batch)
    # accumulation splits the same stream into micro-batches
    assert batch_rows(n, 0, 1, 0, 2, 2) + batch_rows(n, 0, 1, 1, 2, 2) == batch_rows(n, 0, 1, 0, 1, 4)


def test_long_row_and_bad_rows_are_errors_naming_the_line(train_tokenizer, tmp_path):
    from looplm.data.jsonl import DataFormatError

    tok, _ = train_tokenizer
    path = tmp_path / "sft.jsonl"
    rows = ROWS[:2] + [{"prompt": "long " * 80, "response": "r"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataFormatError, match=r"sft\.jsonl:3: \d+ tokens exceed --seq-len 64"):
        encode_rows(path, tok, 64)
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"prompt": "no response"}) + "\n")
    with pytest.raises(DataFormatError, match=r"sft\.jsonl:2: missing field\(s\) response"):
        encode_rows(path, tok, 64)


def test_replay_rows_skip_the_chat_template(train_tokenizer, tmp_path):
    tok, _ = train_tokenizer
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps(REPLAY) + "\n")
    (e,) = encode_rows(path, tok, 64)
    n_prompt = len(tok.encode(REPLAY["prompt"]))
    assert e.ids == tok.encode(REPLAY["prompt"]) + tok.encode(REPLAY["response"]) + [tok.eos_id]
    assert e.mask == [0] * n_prompt + [1] * (len(e.ids) - n_prompt)


@pytest.fixture
def sft_setup(train_tokenizer, micro_config, tmp_path):
    from looplm.checkpoint import save_checkpoint
    from looplm.model import RecursiveCausalLM

    tok, _ = train_tokenizer
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "init", RecursiveCausalLM(micro_config), tok, meta={"stage": "pretrain"})
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:20] + [REPLAY]))
    val.write_text("".join(json.dumps(r) + "\n" for r in ROWS[20:]))

    def make(out, **changes):
        from looplm.train.sft import SFTConfig

        base = dict(data=str(train), val_data=str(val), init=str(tmp_path / "init"), out=str(out), steps=6,
                    batch_size=4, seq_len=63, lr=3e-3, warmup=1, eval_every=3, eval_batches=1, eval_depths=(2,),
                    save_every=3, keep=2, peak_flops=1e10, threads=1, progress=False)
        base.update(changes)
        return SFTConfig(**base)

    return make


@pytest.mark.parametrize("exit_share", [0.0, 0.5])
def test_sft_run_and_exact_resume(sft_setup, tmp_path, exit_share):
    from looplm.checkpoint import load_checkpoint
    from looplm.train.rundir import ResumeError
    from looplm.train.sft import main

    straight = sft_setup(tmp_path / "straight", exit_share=exit_share)
    assert main(straight) == 0
    recs = read_records(straight.out)
    assert [r["step"] for r in recs] == list(range(1, 7))
    assert all(r["depth"] == 3 and r["bptt"] == 3 for r in recs)  # fixed depth = the model's recurrence
    assert recs[-1]["loss"] < recs[0]["loss"]
    assert recs[1]["epoch"] == pytest.approx(8 / 21)
    evals = read_records(straight.out, "eval")
    assert [e["step"] for e in evals] == [3, 6] and {"val/math/loss@2", "val/math/bpb@3"} <= set(evals[0])
    _, _, meta = load_checkpoint(Path(straight.out) / "final")
    assert meta["stage"] == "sft" and meta["step"] == 6

    # a crash after the step-3 checkpoint: the run directory as it was then (later records included)
    part = tmp_path / "part"
    shutil.copytree(straight.out, part)
    shutil.rmtree(part / "step_0000006")
    shutil.rmtree(part / "final")
    assert main(sft_setup(part, resume=True, exit_share=exit_share)) == 0
    assert [(r["step"], r["loss"]) for r in read_records(part)] == [(r["step"], r["loss"]) for r in recs]
    wa, wb = load_weights(Path(straight.out) / "final"), load_weights(part / "final")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # resuming on different data is refused (the data path may change, its content may not)
    other = tmp_path / "other.jsonl"
    other.write_text(Path(straight.data).read_text() + json.dumps(ROWS[-1]) + "\n")
    with pytest.raises(ResumeError, match="different data"):
        main(sft_setup(straight.out, resume=True, data=str(other), exit_share=exit_share))


def test_sft_exit_share_changes_the_forward(sft_setup, tmp_path):
    from looplm.train.sft import main

    losses = []
    for share in (0.0, 0.5):
        cfg = sft_setup(tmp_path / f"x{share}", steps=1, exit_share=share)
        assert main(cfg) == 0
        losses.append(read_records(cfg.out)[0]["loss"])
    assert losses[0] != losses[1]  # half the positions left the core after one step


def test_sft_sampled_depth_and_bad_config(sft_setup, tmp_path):
    from looplm.config import ConfigError
    from looplm.train.sft import main

    cfg = sft_setup(tmp_path / "run", steps=3, sample_depth=True, bptt_steps=2)
    assert main(cfg) == 0
    recs = read_records(cfg.out)
    assert all(r["bptt"] == min(r["depth"], 2) for r in recs)
    with pytest.raises(ConfigError, match=r"SFTConfig\.deep_fraction"):
        sft_setup(tmp_path / "x", deep_fraction=0.1)
    with pytest.raises(ConfigError, match=r"seq_len=100 exceeds the model context max_seq_len=64"):
        main(sft_setup(tmp_path / "y", seq_len=100))
    assert load_weights(Path(cfg.out) / "final")
