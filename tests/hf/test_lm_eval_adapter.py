"""The lm-eval model `looplm`, run by lm-eval's own evaluator on tiny local tasks (a task YAML and a
jsonl file in a temporary directory; no hub): every logged score equals a direct computation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("lm_eval")

from looplm.checkpoint import load_checkpoint  # noqa: E402
from looplm.generate import GenerationConfig, generate  # noqa: E402
from tests.hf.conftest import HALT_THRESHOLD, make_checkpoint, tiny_config  # noqa: E402

DOCS = [
    {"question": "What is 12 + 30?", "choices": [" 42", " 41", " Paris"], "label": 0,
     "text": "The capital of France is Paris."},
    {"question": "The capital of France is", "choices": [" Paris", " 42"], "label": 0,
     "text": "Graph: A-[B,C], B-[D]. Start: A. " * 4},  # longer than max_seq_len: several rolling windows
    {"question": "Graph: A-[B,C]", "choices": [" B", " C", " D"], "label": 1, "text": "12 + 30 = 42."},
]
TASKS = {
    "looplm_tiny_mc": "output_type: multiple_choice\ndoc_to_text: \"{{question}}\"\ndoc_to_choice: \"{{choices}}\"\n"
                      "doc_to_target: \"{{label}}\"\nmetric_list:\n  - metric: acc\n",
    "looplm_tiny_gen": "output_type: generate_until\ndoc_to_text: \"{{question}}\"\n"
                       "doc_to_target: \"{{choices[label]}}\"\ngeneration_kwargs:\n  until: [\".\", \"2\"]\n"
                       "  max_gen_toks: 12\n  do_sample: false\nmetric_list:\n  - metric: exact_match\n",
    "looplm_tiny_roll": "output_type: loglikelihood_rolling\ndoc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n"
                        "metric_list:\n  - metric: word_perplexity\n",
}


def write_tasks(root):
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    for name, body in TASKS.items():
        (root / f"{name}.yaml").write_text(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                           f"    test: {data}\ntest_split: test\n{body}")
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory, small_tokenizer):
    root = tmp_path_factory.mktemp("lm_eval")
    ck = make_checkpoint(root / "ck", small_tokenizer, tiny_config("per_step", max_seq_len=32))
    (root / "tasks").mkdir()
    return ck, write_tasks(root / "tasks")


def direct_loglikelihood(model, ids: list[int], n_cont: int, **kw) -> tuple[float, bool]:
    """Sum of log p(token) over the last n_cont tokens of ids, one position at a time."""
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]]), kw.pop("steps"), **kw).logits[0]
    total, greedy = 0.0, True
    for t in range(len(ids) - n_cont, len(ids)):
        row = logits[t - 1].double()
        total += float(row[ids[t]] - row.logsumexp(-1))
        greedy &= int(row.argmax()) == ids[t]
    return total, greedy


def test_simple_evaluate_scores_equal_a_direct_computation(setup):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import looplm.hf.lm_eval_adapter  # noqa: F401  (registers the model)

    ck, tasks = setup
    model, tok, _ = load_checkpoint(ck)
    res = lm_eval.simple_evaluate(model="looplm", model_args=f"ckpt={ck},steps=3,adaptive=true,batch_size=2",
                                  tasks=sorted(TASKS), task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
                                  log_samples=True)
    kw = dict(steps=3, halt_threshold=HALT_THRESHOLD, min_steps=1)
    samples = res["samples"]
    mc = samples["looplm_tiny_mc"]
    assert len(mc) == len(DOCS)
    for s in mc:
        for (ctx, cont), [(ll, greedy)] in zip((a for a in s["arguments"]), s["resps"]):
            ctx_ids = tok.encode(ctx)
            whole = tok.encode(ctx + cont)
            want = direct_loglikelihood(model, whole, len(whole) - len(ctx_ids), **dict(kw))
            assert ll == pytest.approx(want[0], abs=1e-4) and greedy == want[1]
    W = model.config.max_seq_len
    for s in samples["looplm_tiny_roll"]:
        toks = tok.encode(s["arguments"][0][0])
        want = sum(direct_loglikelihood(model, seq, n, **dict(kw))[0] for seq, n in rolling_reference(toks, W, tok.eos_id))
        assert s["resps"][0][0] == pytest.approx(want, abs=1e-3)
    assert len(tok.encode(DOCS[1]["text"])) > 2 * W  # the test does cover several windows
    for s in samples["looplm_tiny_gen"]:
        ctx, gen_kwargs = s["arguments"][0]
        ref = generate(model, [tok.encode(ctx)], GenerationConfig(max_new_tokens=12, stop_tokens=(tok.eos_id,),
                                                                   steps=3, halt_threshold=HALT_THRESHOLD))
        new = [t for t in ref.tokens[0] if t != tok.eos_id]
        text = tok.decode(new)
        cuts = [text.find(u) for u in gen_kwargs["until"] if text.find(u) >= 0]
        assert s["resps"][0][0] == (text[:min(cuts)] if cuts else text)
    assert set(res["results"]) == set(TASKS)


def rolling_reference(toks: list[int], W: int, eos: int):
    """(sequence, number of scored last tokens) per window, every token scored once: the first window
    sees EOS + the tokens before it; each later one scores up to W new tokens after the W tokens before."""
    first = min(W, len(toks))
    out = [([eos] + toks[:first], first)]
    done = first
    while done < len(toks):
        n = min(W, len(toks) - done)
        end = done + n
        out.append((toks[end - W - 1:end], n))
        done = end
    return out


def test_cli_entry_point_is_lm_evals_cli_with_the_model_registered(monkeypatch, capsys):
    from lm_eval.api.registry import get_model

    import looplm.hf.lm_eval_cli as cli
    from looplm.hf.lm_eval_adapter import LoopLMEval

    assert get_model("looplm") is LoopLMEval
    monkeypatch.setattr(sys, "argv", ["lm-eval", "run", "--help"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 0 and "--model_args" in capsys.readouterr().out


@pytest.mark.slow  # lm-eval's CLI indexes every built-in task first (tens of seconds on one core)
def test_cli_entry_point_runs_lm_eval_with_the_model(setup, tmp_path):
    ck, tasks = setup
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "looplm.hf.lm_eval_cli", "--model", "looplm", "--model_args",
                           f"ckpt={ck},steps=2", "--device", "cpu", "--batch_size", "4", "--tasks", "looplm_tiny_mc",
                           "--include_path", str(tasks), "--output_path", str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = list((tmp_path / "out").rglob("results*.json"))
    assert results and "looplm_tiny_mc" in json.loads(results[0].read_text())["results"]


def test_model_args_are_checked(setup, tmp_path, small_tokenizer):
    from looplm.hf.lm_eval_adapter import LoopLMEval

    ck, _ = setup
    with pytest.raises(ValueError, match="unknown model_args frobnicate"):
        LoopLMEval(ckpt=str(ck), frobnicate=1)
    with pytest.raises(ValueError, match="'auto' is not supported"):
        LoopLMEval(ckpt=str(ck), batch_size="auto")
    with pytest.raises(ValueError, match="not both"):
        LoopLMEval(ckpt=str(ck), adaptive=True, halt_threshold=0.3)
    with pytest.raises(ValueError, match="max_steps"):
        LoopLMEval(ckpt=str(ck), steps=99)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="pass --device cpu"):
            LoopLMEval(ckpt=str(ck), device="cuda:0")
    plain = make_checkpoint(tmp_path / "plain", small_tokenizer, tiny_config(), meta={})
    with pytest.raises(ValueError, match="no calibrated halt threshold"):
        LoopLMEval(ckpt=str(plain), adaptive=True)


def test_chat_template_renders_looplms_chat_prompt(setup):
    from looplm.hf.lm_eval_adapter import LoopLMEval

    ck, _ = setup
    lm = LoopLMEval(ckpt=str(ck))
    text = lm.apply_chat_template([{"role": "user", "content": "What is 12 + 30?"}])
    assert text == lm.tok.chat_prompt("What is 12 + 30?")
    assert lm.chat_template(True) and lm.chat_template(False) is None
