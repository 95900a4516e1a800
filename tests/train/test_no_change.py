"""No change of results: pre-training, SFT and GRPO, a few updates each on fixed seeds, give the
losses and weights recorded from the code before the training loops were merged into one
(`looplm/train/loop.py`).

Everything the numbers depend on is built here, independent of presets and data builders that may
change: an explicit micro `ModelConfig` (not the `tiny` preset), a BPE trained on fixed lines,
random-token pre-training shards written directly, SFT rows of the `replay` domain (no chat
template) and GRPO prompts of a raw-format task (no chat template) with a deterministic stand-in
reward (completion length mod 3), so only the training code is under test. One torch thread, CPU,
float32.

Per run: the loss of every update (a poisoned update, `LOOPLM_TEST_NAN_STEPS`, included: it must
still be skipped), evaluation numbers, and three checksums of the weight change final - init (sum
of |delta|, a fixed random projection of delta, sum of delta^2), plus a few raw weights.
Tolerance: 1e-5 relative (the same machine reproduces them exactly; other CPUs may sum in another
order).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

MODEL = dict(vocab_size=320, max_seq_len=64, d_model=32, n_heads=2, head_dim=16, n_kv_heads=1, mlp_hidden=64,
             n_prelude=1, n_core=2, n_coda=1, core_mlp_hidden=48, kv_latent_dim=16, rope_dim=8, core_kv="anchored",
             mod_rank=2, step_emb_dim=16, recurrence=3, max_steps=8, depth_gate_scale=1.0, depth_gate_bias=0.0,
             state_init_std=0.0, adapter_state_gain=0.0, n_spec_heads=2, rope_theta=10000.0, norm_eps=1e-5,
             init_std=0.02)
TEXTS = ["Algorithm: DFS\nGraph: A-[B,C], B-[D]. Start: A", "What is 12 + 30? 12 + 30 = 42. #### 42",
         "The capital of France is Paris.", "dfs:\nedges: 0-1 1-2 2-3 | pi: 0 0 1 2"] * 10
REL = 1e-5
# The random projection of the weight change sums ~55k terms of both signs, so its relative rounding error
# is far above the other numbers': GRPO's (3 steps of sampling, two updates each) differed by 3.2e-5 on
# one AMD EPYC host from the value recorded on another, every other number within 1e-5.
REL_PROJ = 1e-4


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(init checkpoint, tokenizer, work dir): a seeded model of MODEL and a BPE of TEXTS."""
    from looplm.checkpoint import save_checkpoint
    from looplm.config import ModelConfig
    from looplm.model import RecursiveCausalLM
    from looplm.tokenizer import Tokenizer

    d = tmp_path_factory.mktemp("nochange")
    tok = Tokenizer.train(TEXTS, vocab_size=300)
    torch.manual_seed(1234)
    model = RecursiveCausalLM(ModelConfig(**MODEL))
    return save_checkpoint(d / "init", model, tok), tok, d


def write_pretrain_dir(out: Path, tok) -> Path:
    """A pre-training directory of random token ids (seeded): 4000 train tokens, 600 validation."""
    from looplm.data.shards import FORMAT, MANIFEST, file_sha256

    out.mkdir(parents=True)
    rng = np.random.default_rng(7)
    entries = {}
    for name, n in (("train_00000.bin", 4000), ("val_text.bin", 600)):
        ids = rng.integers(0, tok.vocab_size, size=n).astype(np.uint16)
        ids.tofile(out / name)
        entries[name] = {"file": name, "tokens": n, "sha256": file_sha256(out / name)}
    manifest = {"format": FORMAT, "vocab_size": tok.vocab_size, "dtype": "uint16", "tokenizer_sha256": tok.sha256(),
                "eos_id": tok.eos_id, "domains": ["text"],
                "train": {"tokens": 4000, "shards": [entries["train_00000.bin"]]},
                "val": {"text": entries["val_text.bin"]}}
    (out / MANIFEST).write_text(json.dumps(manifest))
    return out


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def sft_rows(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = (int(x) for x in rng.integers(1, 60, size=2))
        out.append({"prompt": f"dfs:\nedges: {a}-{b} {b}-{a + b}", "response": f" | pi: {a} {b} {a + b}",
                    "domain": "replay"})
    return out


def grpo_rows(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"prompt": f"dfs:\nedges: {a}-{b} {b}-{c}", "answer": f"{a} {b} {c}", "task": "clrs_dfs"}
            for a, b, c in (rng.integers(0, 9, size=3) for _ in range(n))]


def fake_reward(monkeypatch):
    """Varied rewards from an untrained model: 1 when the completion's length is a multiple of 3."""
    import looplm.train.grpo_rollouts as GR

    def score(text, row, reward, mode):
        r = float(len(text) % 3 == 0)
        return {"reward": r, "answer_correct": r}

    monkeypatch.setattr(GR, "score_completion", score)


# ------------------------------------------------------------------------------------ measures
def weight_summary(init: Path, final: Path) -> dict:
    """Checksums of final - init over every tensor (sorted by name) and a few raw values."""
    from looplm.checkpoint import load_checkpoint

    a = dict(load_checkpoint(init)[0].state_dict())
    b = dict(load_checkpoint(final)[0].state_dict())
    delta = torch.cat([(b[k].double() - a[k].double()).flatten() for k in sorted(a)])
    proj = torch.randn(delta.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    emb = b["embed.weight"].flatten()
    return {"abs": float(delta.abs().sum()), "proj": float(delta @ proj), "sq": float((delta ** 2).sum()),
            "values": [float(emb[i]) for i in (0, 1, 100, 5000)]}


def records(out: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r.get("type") == kind]


def close(got, want, path="") -> None:
    """Recursive comparison: floats within REL (None == None, for a logged NaN), the rest equal."""
    if isinstance(want, dict):
        assert sorted(got) == sorted(want), path
        for k in want:
            close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            close(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        rel = REL_PROJ if path.endswith(".proj") else REL
        assert isinstance(got, (int, float)) and math.isclose(got, want, rel_tol=rel, abs_tol=1e-9), \
            f"{path}: {got!r} != {want!r}"
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


# ------------------------------------------------------------------------------------ the runs
def run_pretrain(base, monkeypatch) -> dict:
    from looplm.train.pretrain import PretrainConfig, train

    ckpt, tok, d = base
    data = write_pretrain_dir(d / "pt_data", tok)
    monkeypatch.setenv("LOOPLM_TEST_NAN_STEPS", "2")  # the third update is poisoned: skipped, logged as null
    out = d / "pt"
    res = train(PretrainConfig(data=str(data), out=str(out), init=str(ckpt), steps=5, batch_size=4, seq_len=16,
                               grad_accum=2, warmup=2, lr=3e-3, deep_fraction=0.25, mean_steps=2.0, bptt_steps=2,
                               eval_every=2, eval_batches=1, eval_depths=(2, 4), save_every=3, keep=2,
                               peak_flops=1e10, threads=1, device="cpu", progress=False, seed=3,
                               loss_on="all", windows="random"))  # the recorded run predates the defaults
    assert res["exit_code"] == 0
    return {"loss": [r["loss"] for r in records(out, "train")], "depth": [r["depth"] for r in records(out, "train")],
            "eval": [{k: v for k, v in r.items() if k.startswith("val/")} for r in records(out, "eval")],
            "weights": weight_summary(ckpt, out / "final")}


def run_sft(base) -> dict:
    from looplm.train.sft import SFTConfig, train

    ckpt, tok, d = base
    data = write_jsonl(d / "sft.jsonl", sft_rows(12, 0))
    val = write_jsonl(d / "sft_val.jsonl", sft_rows(4, 1))
    out = d / "sft"
    res = train(SFTConfig(data=data, val_data=val, init=str(ckpt), out=str(out), steps=4, batch_size=2, seq_len=48,
                          grad_accum=2, warmup=1, lr=1e-3, weight_decay=0.05, sample_depth=True, mean_steps=2.0,
                          bptt_steps=2, eval_every=2, eval_batches=1, eval_depths=(2,), save_every=4, keep=1,
                          peak_flops=1e10, threads=1, device="cpu", progress=False, seed=5))
    assert res["exit_code"] == 0
    return {"loss": [r["loss"] for r in records(out, "train")], "depth": [r["depth"] for r in records(out, "train")],
            "eval": [{k: v for k, v in r.items() if k.startswith("val/")} for r in records(out, "eval")],
            "weights": weight_summary(ckpt, out / "final")}


GRPO_KEYS = ("loss", "grad_norm", "reward_mean", "kl", "completion_len_mean", "ratio_mean", "entropy",
             "resampled_groups", "eval/pass@1", "eval/pass@2")


def run_grpo(base, monkeypatch, name: str, **kw) -> dict:
    import looplm.train.grpo as G

    ckpt, tok, d = base
    fake_reward(monkeypatch)
    prompts = write_jsonl(d / f"{name}_rl.jsonl", grpo_rows(20, 0))
    held = write_jsonl(d / f"{name}_held.jsonl", grpo_rows(3, 100))
    out = d / name
    G.train(G.GRPOConfig(init=str(ckpt), out=str(out), prompts=prompts, eval_prompts=held, eval_n=3, eval_every=2,
                         pass_k=2, group_size=4, prompts_per_step=2, max_new_tokens=6, lr=1e-2, steps=3, save_every=0,
                         recurrence=2, seed=11, threads=1, **kw))
    by_step: dict[int, dict] = {}  # a step's train record and its evaluation (if any), merged
    for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()):
        if any(k in r for k in GRPO_KEYS):
            by_step.setdefault(r["step"], {}).update({k: r[k] for k in GRPO_KEYS if k in r})
    return {"steps": [by_step[s] for s in sorted(by_step)], "weights": weight_summary(ckpt, out / "final")}


# ------------------------------------------------------------------------------------ recorded numbers
# Produced by the code of commit a58d188 (before loop.py) with `python tests/train/test_no_change.py OUT.json`.
EXPECTED: dict = {'pretrain': {'loss': [5.794032335281372, 5.768339157104492, None, 5.780835866928101,
                                        5.773045778274536],
                               'depth': [2, 2, 1, 3, 1],
                               'eval': [{'val/text/loss@2': 5.770717144012451,
                                         'val/text/bpb@2': 7.722096237486085,
                                         'val/text/loss@3': 5.770740985870361,
                                         'val/text/bpb@3': 7.722128141514071,
                                         'val/text/loss@4': 5.770750522613525,
                                         'val/text/bpb@4': 7.722140903125266},
                                        {'val/text/loss@2': 5.768217086791992,
                                         'val/text/bpb@2': 7.718750781111458,
                                         'val/text/loss@3': 5.768182754516602,
                                         'val/text/bpb@3': 7.718704839311158,
                                         'val/text/loss@4': 5.768153190612793,
                                         'val/text/bpb@4': 7.718665278316455},
                                        {'val/text/loss@2': 5.768374443054199,
                                         'val/text/bpb@2': 7.718961347696166,
                                         'val/text/loss@3': 5.768328666687012,
                                         'val/text/bpb@3': 7.718900091962434,
                                         'val/text/loss@4': 5.768290996551514,
                                         'val/text/bpb@4': 7.718849683598216}],
                               'weights': {'abs': 233.00379309846892,
                                           'proj': -0.7937323849188002,
                                           'sq': 1.171939120207354,
                                           'values': [0.02581026405096054, -0.008807041682302952,
                                                      -0.0016723910812288523, -0.0005549461347982287]}},
                  'sft': {'loss': [5.7621211682335804, 5.730419493558114, 5.670274353027343, 5.594603474934896],
                          'depth': [3, 4, 8, 2],
                          'eval': [{'val/replay/loss@2': 5.7122118549962195,
                                    'val/replay/bpb@2': 7.715653538074564,
                                    'val/replay/loss@3': 5.711463189894153,
                                    'val/replay/bpb@3': 7.7145691819130455},
                                   {'val/replay/loss@2': 5.638448407573085,
                                    'val/replay/bpb@2': 7.613327810864335,
                                    'val/replay/loss@3': 5.637180451423891,
                                    'val/replay/bpb@3': 7.611565288275673}],
                          'weights': {'abs': 147.87466590843127,
                                      'proj': 1.0096562664341822,
                                      'sq': 0.4071966478188298,
                                      'values': [0.029285134747624397, -0.010517529211938381, 0.008142447099089622,
                                                 0.008158762939274311]}},
                  'grpo': {'steps': [{'loss': -7.450580596923828e-09,
                                      'grad_norm': 0.7058771252632141,
                                      'reward_mean': 0.625,
                                      'kl': 0.0,
                                      'completion_len_mean': 6.0,
                                      'ratio_mean': 1.0,
                                      'entropy': 5.760965824127197,
                                      'resampled_groups': 0},
                                     {'loss': 0.00020329654216766357,
                                      'grad_norm': 0.9143055081367493,
                                      'reward_mean': 0.625,
                                      'kl': 0.005082227289676666,
                                      'completion_len_mean': 6.0,
                                      'ratio_mean': 1.0,
                                      'entropy': 5.759228229522705,
                                      'resampled_groups': 0,
                                      'eval/pass@1': 1.0,
                                      'eval/pass@2': 1.0},
                                     {'loss': 0.0004130825400352478,
                                      'grad_norm': 0.92792809009552,
                                      'reward_mean': 0.375,
                                      'kl': 0.010327055118978024,
                                      'completion_len_mean': 6.0,
                                      'ratio_mean': 1.0,
                                      'entropy': 5.756155490875244,
                                      'resampled_groups': 0,
                                      'eval/pass@1': 1.0,
                                      'eval/pass@2': 1.0}],
                           'weights': {'abs': 909.0248937702613,
                                       'proj': 3.9165601657984057,
                                       'sq': 18.49921208729171,
                                       'values': [0.028929835185408592, -0.0423598475754261, -0.012542960233986378,
                                                  -0.001560679404065013]}},
                  'grpo_dapo': {'steps': [{'loss': -0.18449388444423676,
                                           'grad_norm': 0.2959311008453369,
                                           'reward_mean': 0.375,
                                           'kl': 0.06086607649922371,
                                           'completion_len_mean': 6.0,
                                           'ratio_mean': 1.0385874509811401,
                                           'entropy': 5.7569146156311035,
                                           'resampled_groups': 0},
                                          {'loss': -0.153238907456398,
                                           'grad_norm': 0.6516198515892029,
                                           'reward_mean': 0.375,
                                           'kl': 0.04949338361620903,
                                           'completion_len_mean': 6.0,
                                           'ratio_mean': 0.9863860011100769,
                                           'entropy': 5.752109527587891,
                                           'resampled_groups': 2,
                                           'eval/pass@1': 1.0,
                                           'eval/pass@2': 1.0},
                                          {'loss': -0.12882523238658905,
                                           'grad_norm': 0.609230101108551,
                                           'reward_mean': 0.375,
                                           'kl': 0.08657871931791306,
                                           'completion_len_mean': 6.0,
                                           'ratio_mean': 1.0101288557052612,
                                           'entropy': 5.737826824188232,
                                           'resampled_groups': 2,
                                           'eval/pass@1': 1.0,
                                           'eval/pass@2': 0.6666666666666666}],
                                'weights': {'abs': 1336.4841761908974,
                                            'proj': -0.8559581312721063,
                                            'sq': 39.98600136202545,
                                            'values': [0.008408114314079285, -0.050075896084308624, 0.04599018394947052,
                                                       0.02588590234518051]}}}


def test_pretrain_unchanged(base, monkeypatch):
    close(run_pretrain(base, monkeypatch), EXPECTED["pretrain"], "pretrain")


def test_sft_unchanged(base):
    close(run_sft(base), EXPECTED["sft"], "sft")


def test_grpo_unchanged(base, monkeypatch):
    close(run_grpo(base, monkeypatch, "grpo"), EXPECTED["grpo"], "grpo")


GRPO_VARIANT = dict(loss_type="dapo", scale="batch", iterations=2, beta=0.1, warmup=1, weight_decay=0.1,
                    dynamic_sampling=True, max_resample=2, top_k=20, eps_high=0.28)


def test_grpo_variant_unchanged(base, monkeypatch):
    """DAPO aggregation, batch scaling, two updates per rollout batch, dynamic sampling, masking."""
    close(run_grpo(base, monkeypatch, "grpo_dapo", **GRPO_VARIANT), EXPECTED["grpo_dapo"], "grpo_dapo")


if __name__ == "__main__":  # the numbers of the current code, to record them above: `python THIS_FILE OUT.json`
    import tempfile

    class _Patch:
        def setattr(self, obj, name, value):
            setattr(obj, name, value)

        def setenv(self, name, value):
            import os
            os.environ[name] = value

    torch.set_num_threads(1)
    from looplm.checkpoint import save_checkpoint
    from looplm.config import ModelConfig
    from looplm.model import RecursiveCausalLM
    from looplm.tokenizer import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        tok = Tokenizer.train(TEXTS, vocab_size=300)
        torch.manual_seed(1234)
        b = (save_checkpoint(d / "init", RecursiveCausalLM(ModelConfig(**MODEL)), tok), tok, d)
        p = _Patch()
        got = {"pretrain": run_pretrain(b, p)}
        import os
        os.environ.pop("LOOPLM_TEST_NAN_STEPS")
        got["sft"] = run_sft(b)
        got["grpo"] = run_grpo(b, p, "grpo")
        got["grpo_dapo"] = run_grpo(b, p, "grpo_dapo", **GRPO_VARIANT)
    import sys
    Path(sys.argv[1]).write_text(json.dumps(got, indent=1) + "\n")
