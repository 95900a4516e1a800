"""`looplm export-hf`: the directory loads with transformers' Auto classes where looplm cannot be
imported, computes what looplm computes, round-trips through save_pretrained; the bundler follows the
model's imports; the checkpoint is never written."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from looplm.checkpoint import load_checkpoint, verify_checkpoint  # noqa: E402
from looplm.cli import main  # noqa: E402
from looplm.generate import GenerationConfig, generate  # noqa: E402
from looplm.hf.bundle import BundleError, _looplm_imports, _rewrite, bundle_sources, export_name  # noqa: E402
from tests.hf.conftest import make_checkpoint, tiny_config  # noqa: E402

PROMPTS = ["What is 12 + 30?", "The capital of France is", "Graph: A-[B,C], B-[D]. Start: A"]

# Runs in a fresh interpreter where any `looplm` import fails; prints one JSON line.
NO_LOOPLM_SCRIPT = r'''
import importlib.abc, json, sys

class NoLooplm(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "looplm" or name.startswith("looplm."):
            raise ModuleNotFoundError(f"looplm is blocked in this test: {name}")
        return None

sys.meta_path.insert(0, NoLooplm())
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

def check(out_dir, copy_dir, prompts):
    model = AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(out_dir)  # no trust_remote_code: the tokenizer needs none
    tok.padding_side = "left"
    batch = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch, use_cache=False).logits
        gen = model.generate(**batch, max_new_tokens=10, do_sample=False)
    model.save_pretrained(copy_dir)
    again = AutoModelForCausalLM.from_pretrained(copy_dir, trust_remote_code=True).eval()
    with torch.no_grad():
        same = torch.equal(again(**batch, use_cache=False).logits, logits)
    mask = batch.attention_mask.tolist()
    return {"ids": [[t for t, m in zip(r, k) if m] for r, k in zip(batch.input_ids.tolist(), mask)],
            "last_logits": logits[:, -1].tolist(), "new": gen[:, batch.input_ids.shape[1]:].tolist(),
            "roundtrip_equal": same, "class_module": type(model).__module__}


jobs = json.loads(sys.argv[1])
results = {name: check(out_dir, copy_dir, prompts) for name, (out_dir, copy_dir, prompts) in jobs.items()}
try:
    import looplm  # noqa: F401
    blocked = False
except ModuleNotFoundError:
    blocked = True
print("RESULT " + json.dumps({"results": results, "blocked": blocked,
                              "looplm_modules": sorted(m for m in sys.modules if m.split(".")[0] == "looplm")}))
'''


def run_without_looplm(tmp_path: Path, jobs: dict[str, tuple]) -> dict:
    """Run NO_LOOPLM_SCRIPT on {name: (export dir, save_pretrained copy dir, prompts)}."""
    script = tmp_path / "load_without_looplm.py"
    script.write_text(NO_LOOPLM_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), json.dumps(jobs)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("RESULT ", 1)[1])  # (transformers may print its remote-code question)


@pytest.fixture(scope="module")
def both_layouts(tmp_path_factory, small_tokenizer):
    """Checkpoints and exports for both core K/V layouts, loaded in one interpreter without looplm."""
    from looplm.hf.export import export_hf

    root = tmp_path_factory.mktemp("no_looplm")
    ckpts = {kv: make_checkpoint(root / f"ck_{kv}", small_tokenizer, tiny_config(kv)) for kv in ("anchored", "per_step")}
    jobs = {kv: (str(export_hf(ck, root / f"hf_{kv}")), str(root / f"copy_{kv}"), PROMPTS) for kv, ck in ckpts.items()}
    return ckpts, run_without_looplm(root, jobs)


def test_the_subprocess_could_not_import_looplm(both_layouts):
    _, got = both_layouts
    assert got["blocked"] and got["looplm_modules"] == []


@pytest.mark.parametrize("core_kv", ["anchored", "per_step"])
def test_export_loads_and_matches_without_looplm(both_layouts, core_kv):
    ckpts, out = both_layouts
    got = out["results"][core_kv]
    model, tok, _ = load_checkpoint(ckpts[core_kv])
    assert got["class_module"].startswith("transformers_modules.")
    ids = [tok.encode(p) for p in PROMPTS]
    assert got["ids"] == ids  # AutoTokenizer encodes as looplm's tokenizer
    with torch.no_grad():
        last = torch.stack([model(torch.tensor([p]), model.config.recurrence).logits[0, -1] for p in ids])
    assert torch.allclose(torch.tensor(got["last_logits"]), last, atol=1e-5, rtol=0)
    ref = generate(model, ids, GenerationConfig(max_new_tokens=10, stop_tokens=(tok.eos_id,), pad_id=tok.pad_id))
    for row, want in zip(got["new"], ref.tokens):
        assert (row[:row.index(tok.eos_id) + 1] if tok.eos_id in row else row) == want
    assert got["roundtrip_equal"]  # save_pretrained of the loaded model, loaded again: the same logits


def test_export_files_and_config(ckpt, exported):
    names = {p.name for p in exported.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "configuration_looplm.py", "modeling_looplm.py", "cache_looplm.py"} <= names
    assert not any(n.startswith(".") for n in names)
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "looplm" and config["halt_threshold"] is None
    assert config["auto_map"] == {"AutoConfig": "configuration_looplm.LoopLMConfig",
                                  "AutoModelForCausalLM": "modeling_looplm.LoopLMForCausalLM"}
    meta = verify_checkpoint(ckpt)
    assert config["looplm_source"]["weights_sha256"] == meta["files"]["model.safetensors"]


def test_export_cli_refusals_and_the_checkpoint_untouched(tmp_path, small_tokenizer, capsys):
    ck = make_checkpoint(tmp_path / "ck", small_tokenizer, tiny_config())
    before = {p.name: p.read_bytes() for p in ck.iterdir()}
    out = tmp_path / "hf"
    assert main(["export-hf", "--ckpt", str(ck), "--out", str(out), "--adaptive"]) == 0
    assert json.loads((out / "config.json").read_text())["halt_threshold"] == 0.5
    assert main(["export-hf", "--ckpt", str(ck), "--out", str(out)]) == 2
    assert "not empty (pass --force" in capsys.readouterr().err
    assert main(["export-hf", "--ckpt", str(ck), "--out", str(out), "--force"]) == 0
    assert json.loads((out / "config.json").read_text())["halt_threshold"] is None
    for bad_out in (ck, ck / "hf", tmp_path):
        assert main(["export-hf", "--ckpt", str(ck), "--out", str(bad_out)]) == 2
        assert "overlaps the checkpoint" in capsys.readouterr().err
    plain = make_checkpoint(tmp_path / "plain", small_tokenizer, tiny_config(), meta={})
    assert main(["export-hf", "--ckpt", str(plain), "--out", str(tmp_path / "hf2"), "--adaptive"]) == 2
    assert "no calibrated halt threshold" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in ck.iterdir()} == before
    verify_checkpoint(ck)  # every sha256 still matches
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_bundle_follows_the_model_imports():
    """The bundle holds exactly the looplm modules that importing the wrapper loads (a reference
    read from a fresh interpreter's sys.modules), each with no looplm import left."""
    code = ("import sys, looplm.hf.configuration_looplm, looplm.hf.modeling_looplm; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('looplm.'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split()) - {"looplm.hf", "looplm.model"}  # parent packages, imported implicitly
    files = bundle_sources()
    assert set(files) == {export_name(m) + ".py" for m in loaded}
    for name, text in files.items():
        assert text.startswith("# Generated by `looplm export-hf` from looplm/")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert not (node.module or "").startswith("looplm"), f"{name}:{node.lineno}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("looplm") for a in node.names), f"{name}:{node.lineno}"


def test_bundle_rewrites_imports_and_names_what_it_cannot(tmp_path):
    src = ('"""doc"""\nfrom __future__ import annotations\nimport torch\n'
           'from looplm.model.layers import (\n    RMSNorm,\n    rms,\n)\n\ndef f():\n'
           '    from looplm.config import ModelConfig as MC\n    return MC\n')
    imports = _looplm_imports(src, "looplm.model.fake", tmp_path / "fake.py")
    assert [t for _, t in imports] == ["looplm.model.layers", "looplm.config"]
    out = _rewrite(src, imports)
    assert "from .looplm_model_layers import (\n    RMSNorm,\n    rms,\n)" in out
    assert "    from .looplm_config import ModelConfig as MC\n" in out and out.startswith('"""doc"""\n')
    rel = _looplm_imports("from .layers import rms\n", "looplm.model.fake", tmp_path / "fake.py")
    assert [t for _, t in rel] == ["looplm.model.layers"]
    for bad, why in (("import looplm.model.layers\n", "cannot be bundled"),
                     ("x = 1\nfrom looplm import get_preset\n", "package root"),
                     ("from looplm.model import cache\n", "imports a module")):
        with pytest.raises(BundleError, match=why) as e:
            _looplm_imports(bad, "looplm.model.fake", tmp_path / "fake.py")
        assert f"fake.py:{bad.count(chr(10))}" in str(e.value)
