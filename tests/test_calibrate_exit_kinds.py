"""AdaExit per token kind and the calibration's fit rows / quantile thresholds: token kinds of known strings
and of a tokenized DFS answer, per-kind statistics of a synthetic exit-step tensor, exits at the chosen point
against the adaptive forward, and the quantile thresholds against the halt probabilities they cut."""

from __future__ import annotations

import pytest
import torch

from looplm.calibrate.exit_kinds import (ACTION, FORMAT, NODE, OTHER, decode_exits, exit_kinds_report,
                                         exit_stats_by_kind, save_kind_plot, token_kind, token_kinds)
from looplm.calibrate.halt import build_labels, fit_rows, quantile_taus
from looplm.model import RecursiveCausalLM
from looplm.tasks import get_task


def micro_model(micro_config, seed=0, halt_std=3.0):
    torch.manual_seed(seed)
    m = RecursiveCausalLM(micro_config.replace(max_seq_len=128, max_steps=8, recurrence=4)).double()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.startswith("core.blocks."):
                p.mul_(10.0)  # depth changes predictions
        m.core.halt.weight.normal_(std=halt_std)  # mixed exits (3) or unsaturated probabilities (0.05)
    return m.eval()


@pytest.mark.parametrize("text, kind", [
    ("A", NODE), (" B", NODE), ("[C", NODE), ("D,", NODE), (", E", NODE), ("is [F", NODE),
    ("<search>", ACTION), (" <backtrack>", ACTION),
    ("[", FORMAT), (", ", FORMAT), ("]", FORMAT), ("\n", FORMAT), (" ", FORMAT), ("Path", FORMAT), (" is", FORMAT),
    ("Trace:", FORMAT), ("Answer", FORMAT), ("swer", FORMAT), ("<|eos|>", FORMAT), ("]\n\n", FORMAT),
    ("12", OTHER), (" hello", OTHER), ("AB", OTHER), ("x" * 100, OTHER),
])
def test_token_kind_of_known_strings(text, kind):
    assert token_kind(text) == kind


def test_token_kinds_of_a_tokenized_dfs_answer(small_tokenizer):
    ex = get_task("dfs_verbal").generate(1, seed=3, min_nodes=5, max_nodes=5)[0]
    ids = small_tokenizer.encode(ex.answer) + [small_tokenizer.eos_id]
    kinds = token_kinds(small_tokenizer, ids)
    texts = [small_tokenizer.decode([i], skip_special=False) for i in ids]
    assert OTHER not in kinds and kinds[-1] == FORMAT  # every token of a DFS answer is classified
    assert kinds.count(ACTION) == ex.answer.count("<search>") + ex.answer.count("<backtrack>")
    visited = ex.gold.strip("[]").split(", ")
    nodes = [w for w in "".join(c if c.isalnum() else " " for c in ex.answer).split() if len(w) == 1]
    assert len(nodes) == len(visited) + ex.answer.count("<")  # one per trace event and per answer entry
    node_letters = "".join(c for t, k in zip(texts, kinds) if k == NODE for c in t if c.isupper())
    assert node_letters == "".join(nodes)  # exactly the trace and answer node names, in order


def test_exit_stats_by_kind_of_a_synthetic_tensor():
    kinds = [NODE, FORMAT, NODE, ACTION, FORMAT, FORMAT, NODE]
    exits = torch.tensor([3, 1, 2, 3, 1, 3, 3])
    st = exit_stats_by_kind(kinds, exits, steps=3)
    assert list(st) == [NODE, ACTION, FORMAT]  # the kinds present, in TOKEN_KINDS order
    assert st[NODE] == {"count": 3, "mean_exit_step": 8 / 3, "histogram": [0, 1, 2], "share_before_full": 1 / 3}
    assert st[ACTION] == {"count": 1, "mean_exit_step": 3.0, "histogram": [0, 0, 1], "share_before_full": 0.0}
    assert st[FORMAT] == {"count": 3, "mean_exit_step": 5 / 3, "histogram": [2, 0, 1], "share_before_full": 2 / 3}
    assert sum(sum(s["histogram"]) for s in st.values()) == len(kinds)
    with pytest.raises(ValueError, match="7 token kinds but 6"):
        exit_stats_by_kind(kinds, exits[:6], 3)
    with pytest.raises(ValueError, match="1..3"):
        exit_stats_by_kind(kinds, exits + 1, 3)


def test_decode_exits_follow_the_adaptive_forward_and_make_a_report(micro_config, small_tokenizer, tmp_path):
    m = micro_model(micro_config)
    seqs = [torch.randint(8, 300, (n,)).tolist() for n in (10, 7, 12)]
    plens = [4, 3, 6]
    targets, exits = decode_exits(m, plens, seqs, 5, 2, 0.6, 0, 2)
    want_t, want_e = [], []
    for s, p in zip(seqs, plens):
        ex = m(torch.tensor([s]), 5, halt_threshold=0.6, min_steps=2).exit_steps[0]
        want_t += s[p:]
        want_e += ex[p - 1:len(s) - 1].tolist()
    assert targets == want_t and exits == want_e and len(set(exits)) > 1  # mixed exits: the check can fail
    rep = exit_kinds_report(small_tokenizer, targets, exits, 5, 2, 0.6)
    assert rep["positions"] == len(targets) == sum(s["count"] for s in rep["kinds"].values())
    assert save_kind_plot(rep, tmp_path / "k.png").read_bytes()[:4] == b"\x89PNG"


def test_fit_rows_drop_the_last_step_and_the_prompt(micro_config):
    m = micro_model(micro_config)
    seqs = [torch.randint(8, 300, (n,)).tolist() for n in (9, 6)]
    lab = build_labels(m, seqs, 4, 0.1, 0, 2, False, prompt_lens=[5, 2])
    assert lab["decode"].tolist() == [False] * 4 + [True] * 4 + [False] + [False] + [True] * 4 + [False]
    x, y = fit_rows(lab, "decode")
    assert x.shape == (3 * 8, micro_config.d_model) and y.shape == (24,)
    torch.testing.assert_close(x[:8], lab["feats"][0, lab["decode"]])
    x_all, y_all = fit_rows(lab, "all")
    assert x_all.shape[0] == 3 * 15 and torch.equal(y_all[:15], lab["labels"][0])


def test_quantile_taus_hold_back_the_asked_share(micro_config):
    m = micro_model(micro_config, halt_std=0.05)
    seqs = [torch.randint(8, 300, (40,)).tolist() for _ in range(3)]
    plens = [5, 8, 3]
    qs = (0.1, 0.3, 0.5)
    taus = quantile_taus(m, plens, seqs, 4, (1, 2, 4), qs, 0, 2)
    assert set(taus) == {1, 2}  # no threshold matters at full depth
    for mstep, ts in taus.items():
        hp = torch.cat([m(torch.tensor([s]), 4, return_halt=True).halt_probs[mstep - 1, 0, p - 1:len(s) - 1]
                        for s, p in zip(seqs, plens)])
        assert len(ts) == 3 and ts == sorted(ts)
        for q, t in zip(qs, ts):
            assert abs(float((hp <= t).double().mean()) - q) < 0.03
    assert quantile_taus(m, plens, seqs, 4, (1,), (), 0, 2) == {}
