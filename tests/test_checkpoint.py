"""Checkpoint directories: exact round trip, refusal of missing/corrupt/mismatched files, atomic save,
and bit-for-bit resumable training state."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from looplm import checkpoint as ckpt
from looplm.checkpoint import (CheckpointError, capture_rng_state, load_checkpoint, load_train_state,
                               restore_rng_state, save_checkpoint)

FILES = ("config.json", "model.safetensors", "tokenizer.json", "meta.json")


def make_model(config, seed: int = 0):
    from looplm.model import RecursiveCausalLM

    torch.manual_seed(seed)
    model = RecursiveCausalLM(config)
    with torch.no_grad():  # move every weight off its init so a fresh model cannot pass for the saved one
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def logits(model, config, steps: int = 3) -> torch.Tensor:
    ids = torch.arange(12).remainder(config.vocab_size).view(1, 12)
    with torch.no_grad():
        return model(ids, steps).logits


@pytest.fixture()
def saved(tmp_path, micro_config, small_tokenizer):
    model = make_model(micro_config)
    path = save_checkpoint(tmp_path / "ck", model, small_tokenizer, meta={"stage": "test", "step": 7})
    return path, model


def rewrite_meta_hash(path: Path, name: str) -> None:
    meta = json.loads((path / "meta.json").read_text())
    meta["files"][name] = ckpt._sha256_file(path / name)
    (path / "meta.json").write_text(json.dumps(meta))


# ------------------------------------------------------------------------------------------ round trip
def test_round_trip_identical_logits_and_tokenizer(saved, micro_config, small_tokenizer):
    path, model = saved
    rng_before = torch.get_rng_state()
    loaded, tok, meta = load_checkpoint(path)
    assert torch.equal(torch.get_rng_state(), rng_before), "loading must not consume the global torch RNG"
    assert torch.equal(logits(model, micro_config), logits(loaded, micro_config))
    assert loaded.config == micro_config
    assert not loaded.training
    text = "Algorithm: DFS 12 + 30"
    assert tok.encode(text) == small_tokenizer.encode(text)
    assert (meta["stage"], meta["step"]) == ("test", 7)
    assert set(meta["files"]) == set(FILES) - {"meta.json"}
    assert {"created", "looplm_version", "torch_version", "format_version"} <= set(meta)


def test_tied_weights_stored_once_and_retied(saved):
    from safetensors import safe_open

    path, model = saved
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert len(names) == len(model.state_dict()) - 1  # the tied embedding / lm_head appears once
    loaded, _, _ = load_checkpoint(path)
    ptrs = [p.data_ptr() for p in loaded.state_dict().values()]
    assert len(set(ptrs)) == len(ptrs) - 1, "the tie must survive loading"


def test_overwrite_replaces_and_leaves_no_siblings(saved, micro_config, small_tokenizer):
    path, _ = saved
    new = make_model(micro_config, seed=1)
    save_checkpoint(path, new, small_tokenizer, meta={"step": 8})
    loaded, _, meta = load_checkpoint(path)
    assert meta["step"] == 8
    assert torch.equal(logits(loaded, micro_config), logits(new, micro_config))
    assert sorted(p.name for p in path.parent.iterdir()) == ["ck"]


# ----------------------------------------------------------------------------------- refused inputs
@pytest.mark.parametrize("name", FILES)
def test_missing_file_named(saved, name):
    path, _ = saved
    (path / name).unlink()
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_checkpoint(path)


@pytest.mark.parametrize("name", FILES[:3])
def test_corrupt_file_fails_hash_check(saved, name):
    path, _ = saved
    data = bytearray((path / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (path / name).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{name.replace('.', '[.]')}: sha256 mismatch"):
        load_checkpoint(path)


@pytest.mark.parametrize("name", FILES)
def test_unparseable_file_named_even_without_hashes(saved, name):
    path, _ = saved
    meta = json.loads((path / "meta.json").read_text())
    del meta["files"]
    (path / "meta.json").write_text(json.dumps(meta))
    (path / name).write_text("{ not json" if name != "model.safetensors" else "garbage")
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_checkpoint(path)


def test_truncated_weights_refused(saved):
    path, _ = saved
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(path)
    rewrite_meta_hash(path, "model.safetensors")  # even with a "valid" hash, truncation is detected
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_checkpoint(path)


@pytest.mark.parametrize("strict", [True, False])
def test_config_mismatch_refused_before_loading(saved, strict):
    path, _ = saved
    raw = json.loads((path / "config.json").read_text())
    raw["model"]["core_mlp_hidden"] += 16
    (path / "config.json").write_text(json.dumps(raw))
    rewrite_meta_hash(path, "config.json")
    with pytest.raises(CheckpointError, match=r"weights do not match config\.json: shape mismatch"):
        load_checkpoint(path, strict=strict)


def test_missing_tensor_refused_when_strict(tmp_path, micro_config, small_tokenizer):
    model = make_model(micro_config)
    path = save_checkpoint(tmp_path / "ck", model, small_tokenizer)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / "model.safetensors"))
    dropped = sorted(tensors)[-1]
    del tensors[dropped]
    save_file(tensors, str(path / "model.safetensors"))
    rewrite_meta_hash(path, "model.safetensors")
    with pytest.raises(CheckpointError, match=rf"missing tensors \(1\): {dropped}"):
        load_checkpoint(path)


def test_invalid_config_value_named(saved):
    path, _ = saved
    raw = json.loads((path / "config.json").read_text())
    raw["model"]["n_kv_heads"] = 3
    (path / "config.json").write_text(json.dumps(raw))
    rewrite_meta_hash(path, "config.json")
    with pytest.raises(CheckpointError, match=r"config\.json: invalid model config: ModelConfig\.n_kv_heads"):
        load_checkpoint(path)


def test_tokenizer_larger_than_vocab_refused(tmp_path, micro_config, small_tokenizer):
    small = micro_config.replace(vocab_size=small_tokenizer.vocab_size - 1)
    with pytest.raises(CheckpointError, match="tokenizer has"):
        save_checkpoint(tmp_path / "x", make_model(small), small_tokenizer)
    assert not (tmp_path / "x").exists()
    path = save_checkpoint(tmp_path / "ck", make_model(micro_config), small_tokenizer)
    raw = json.loads((path / "config.json").read_text())
    raw["model"]["vocab_size"] = small_tokenizer.vocab_size - 1
    (path / "config.json").write_text(json.dumps(raw))
    rewrite_meta_hash(path, "config.json")
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: tokenizer has \d+ tokens but .* vocab_size="):
        load_checkpoint(path)


def test_bad_meta_refused_before_writing(tmp_path, micro_config, small_tokenizer):
    model = make_model(micro_config)
    with pytest.raises(CheckpointError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path / "ck", model, small_tokenizer, meta={"x": object()})
    with pytest.raises(CheckpointError, match="reserved"):
        save_checkpoint(tmp_path / "ck", model, small_tokenizer, meta={"files": {}})
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ atomicity
class Crash(Exception):
    pass


def crash(*args, **kwargs):
    raise Crash("simulated crash after the weights were written")


def test_crash_mid_save_keeps_old_checkpoint(saved, micro_config, small_tokenizer, monkeypatch):
    path, old = saved
    monkeypatch.setattr(ckpt, "_save_tokenizer", crash)
    with pytest.raises(Crash):
        save_checkpoint(path, make_model(micro_config, seed=2), small_tokenizer, meta={"step": 99})
    loaded, _, meta = load_checkpoint(path)
    assert meta["step"] == 7
    assert torch.equal(logits(loaded, micro_config), logits(old, micro_config))
    assert sorted(p.name for p in path.parent.iterdir()) == ["ck"]


def test_killed_save_leaves_unloadable_temp_that_next_save_removes(saved, micro_config, small_tokenizer,
                                                                     monkeypatch):
    path, old = saved
    monkeypatch.setattr(ckpt, "_save_tokenizer", crash)
    monkeypatch.setattr(ckpt, "_cleanup_tmp", lambda tmp: None)  # a kill runs no cleanup
    with pytest.raises(Crash):
        save_checkpoint(path, make_model(micro_config, seed=2), small_tokenizer)
    leftovers = [p for p in path.parent.iterdir() if p.name != "ck"]
    assert len(leftovers) == 1 and (leftovers[0] / "model.safetensors").is_file()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(leftovers[0])
    assert load_checkpoint(path)[2]["step"] == 7
    monkeypatch.undo()
    save_checkpoint(path, old, small_tokenizer, meta={"step": 8})
    assert sorted(p.name for p in path.parent.iterdir()) == ["ck"]


def test_failed_swap_restores_old(saved, micro_config, small_tokenizer, monkeypatch):
    path, _ = saved
    real_rename, calls = ckpt.os.rename, []

    def flaky_rename(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # rename(tmp, target), after the old one was moved aside
            raise Crash("simulated failure between the two renames")
        real_rename(src, dst)

    monkeypatch.setattr(ckpt.os, "rename", flaky_rename)
    with pytest.raises(Crash):
        save_checkpoint(path, make_model(micro_config, seed=2), small_tokenizer, meta={"step": 99})
    monkeypatch.undo()
    assert calls[0][0] == "ck" and calls[0][1].startswith(".ck.old-")
    assert load_checkpoint(path)[2]["step"] == 7
    assert sorted(p.name for p in path.parent.iterdir()) == ["ck"]


def test_kill_between_renames_is_recoverable(saved, micro_config, small_tokenizer):
    path, old = saved
    aside = path.parent / ".ck.old-123-abcd"
    path.rename(aside)  # the state a kill right after the first rename leaves
    with pytest.raises(CheckpointError, match=r"interrupted save left the previous complete checkpoint at .*\.ck\.old-"):
        load_checkpoint(path)
    assert load_checkpoint(aside)[2]["step"] == 7  # the old checkpoint is complete
    save_checkpoint(path, make_model(micro_config, seed=3), small_tokenizer, meta={"step": 9})
    assert load_checkpoint(path)[2]["step"] == 9
    assert sorted(p.name for p in path.parent.iterdir()) == ["ck"]


# ------------------------------------------------------------------------------------- train state
def train_steps(model, opt, n: int) -> None:
    for _ in range(n):
        steps = random.randint(1, 3)  # python RNG
        ids = torch.randint(0, model.config.vocab_size, (2, 10))  # torch RNG
        scale = float(np.random.uniform(0.5, 1.5))  # numpy RNG
        out = model(ids[:, :-1], steps)
        loss = scale * torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_resume_from_train_state_is_bit_exact(tmp_path, micro_config, small_tokenizer):
    def fresh():
        model = make_model(micro_config).train()
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))

    def seed_all():
        random.seed(1), np.random.seed(1), torch.manual_seed(1)

    model, opt = fresh()
    seed_all()
    train_steps(model, opt, 4)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    model, opt = fresh()
    seed_all()
    train_steps(model, opt, 2)
    state = {"optimizer": opt.state_dict(), "step": 2, "rng": capture_rng_state()}
    path = save_checkpoint(tmp_path / "ck", model, small_tokenizer, meta={"step": 2}, train_state=state)
    seed_all()  # clobber the RNG: the resume must restore it
    model, _, _ = load_checkpoint(path)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    restored = load_train_state(path)
    opt.load_state_dict(restored["optimizer"])
    restore_rng_state(restored["rng"])
    assert restored["step"] == 2
    train_steps(model, opt, 2)
    for k, v in model.state_dict().items():
        assert torch.equal(v, reference[k]), k


def test_train_state_encodes_python_and_numpy_types(tmp_path, micro_config, small_tokenizer):
    state = {"t": (1, 2.5, None, "x", b"\x00\xff"), 3: [np.arange(5, dtype=np.uint32), np.float32(1.5)],
             "__odd": {"nested": torch.tensor([[1.0, float("nan")]], dtype=torch.bfloat16)},
             "big": 2**70, "f": 0.1 + 0.2, "rng": np.random.get_state()}
    path = save_checkpoint(tmp_path / "ck", make_model(micro_config), small_tokenizer, train_state=state)
    back = load_train_state(path)
    assert back["t"] == state["t"] and back["big"] == 2**70 and back["f"] == 0.1 + 0.2
    assert back[3][0].dtype == np.uint32 and (back[3][0] == np.arange(5)).all()
    assert isinstance(back[3][1], np.float32) and back[3][1] == 1.5
    assert torch.equal(back["__odd"]["nested"].isnan(), state["__odd"]["nested"].isnan())
    assert back["__odd"]["nested"].dtype == torch.bfloat16
    assert back["rng"][0] == "MT19937" and (back["rng"][1] == state["rng"][1]).all()
    meta = json.loads((path / "meta.json").read_text())
    assert {"train_state/tensors.safetensors", "train_state/state.json"} <= set(meta["files"])


def test_train_state_rejects_unknown_objects(tmp_path, micro_config, small_tokenizer):
    with pytest.raises(CheckpointError, match=r"train_state at state/opt: cannot store a object"):
        save_checkpoint(tmp_path / "ck", make_model(micro_config), small_tokenizer, train_state={"opt": object()})
    assert list(tmp_path.iterdir()) == []


def test_load_train_state_without_one(saved):
    path, _ = saved
    with pytest.raises(CheckpointError, match="train_state/tensors.safetensors: missing"):
        load_train_state(path)


@pytest.mark.slow
def test_report_200m_round_trip(tmp_path, small_tokenizer):
    from looplm.config import get_preset

    config = get_preset("report-200m", max_seq_len=64)
    model = make_model(config)
    path = save_checkpoint(tmp_path / "ck", model, small_tokenizer)
    physical = sum(p.numel() for p in model.parameters())  # counts the tied embedding once
    size = (path / "model.safetensors").stat().st_size
    assert 4 * physical < size < 4 * physical + 200_000  # float32 data + header: the tie is not duplicated
    loaded, _, _ = load_checkpoint(path)
    assert torch.equal(logits(model, config, steps=2), logits(loaded, config, steps=2))


def test_checkpoint_from_another_architecture_version_is_refused(tmp_path, micro_config, small_tokenizer,
                                                                 monkeypatch):
    import json

    import looplm.checkpoint as C
    from looplm.model import RecursiveCausalLM

    ck = C.save_checkpoint(tmp_path / "ck", RecursiveCausalLM(micro_config), small_tokenizer)
    assert json.loads((ck / "config.json").read_text())["arch_version"] == C.ARCH_VERSION
    monkeypatch.setattr(C, "ARCH_VERSION", C.ARCH_VERSION + 1)  # this looplm now computes something else
    with pytest.raises(C.CheckpointError, match="architecture version"):
        C.load_checkpoint(ck)
