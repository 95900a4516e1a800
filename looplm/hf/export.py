"""`export_hf(ckpt, out)`: write a looplm checkpoint as a Hugging Face model directory.

The directory loads with `AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)` and
`AutoTokenizer.from_pretrained(out)` where looplm is not installed:

    config.json             LoopLMConfig (model_type "looplm", every ModelConfig field, auto_map, the
                            special token ids, `looplm_source`: the checkpoint's path, weights sha256
                            and the looplm version that exported it)
    model.safetensors       the weights under `model.<looplm name>` (the tied LM head stored once)
    generation_config.json  bos / eos / pad ids, greedy by default
    tokenizer.json, tokenizer_config.json   as `Tokenizer.save` writes them (chat template included)
    configuration_looplm.py, modeling_looplm.py, cache_looplm.py, looplm_*.py
                            the model code, generated from looplm's source (looplm/hf/bundle.py)

The checkpoint is read with `load_checkpoint` (every sha256 in its meta.json verified) and never
written: `out` may not be the checkpoint directory, inside it, or above it. With `adaptive=True` the
checkpoint's calibrated AdaExit threshold (`looplm calibrate-halt`) becomes the model's default
`halt_threshold` / `halt_min_steps`. The directory is written next to `out` and renamed into place,
so an interrupted export leaves no half directory; an existing non-empty `out` needs `force=True`.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from looplm.checkpoint import _move_into_place as move_into_place
from looplm.hf.bundle import CONFIG_CLASS, MODEL_CLASS, write_bundle

AUTO_MAP = {"AutoConfig": CONFIG_CLASS, "AutoModelForCausalLM": MODEL_CLASS}


def export_hf(ckpt: str | os.PathLike, out: str | os.PathLike, *, adaptive: bool = False,
              force: bool = False) -> Path:
    """Write the HF directory for checkpoint `ckpt` at `out`; return its absolute path."""
    import torch

    from looplm import __version__
    from looplm.checkpoint import WEIGHTS_FILE, load_checkpoint
    from looplm.hf.configuration_looplm import LoopLMConfig
    from looplm.hf.modeling_looplm import LoopLMForCausalLM

    src, dst = Path(ckpt).resolve(), Path(out).resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise ValueError(f"--out {dst} overlaps the checkpoint {src}: the export is a separate directory "
                         "(writing into the checkpoint would break its sha256 record)")
    if dst.exists() and not dst.is_dir():
        raise ValueError(f"--out {dst} exists and is not a directory")
    if dst.is_dir() and any(dst.iterdir()) and not force:
        raise ValueError(f"--out {dst} exists and is not empty (pass --force to replace it)")
    model, tokenizer, meta = load_checkpoint(src)
    halt = {}
    if adaptive:
        if meta.get("halt_threshold") is None:
            raise ValueError(f"--adaptive: {src} has no calibrated halt threshold (run looplm calibrate-halt)")
        halt = {"halt_threshold": float(meta["halt_threshold"]), "halt_min_steps": int(meta.get("halt_min_steps", 1))}
    config = LoopLMConfig.from_model_config(
        model.config, **halt, bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id, auto_map=dict(AUTO_MAP), architectures=["LoopLMForCausalLM"],
        looplm_source={"checkpoint": str(src), "weights_sha256": meta.get("files", {}).get(WEIGHTS_FILE),
                       "looplm_version": __version__})
    with torch.random.fork_rng(devices=[]):
        hf_model = LoopLMForCausalLM(config)
    hf_model.model.load_state_dict(model.state_dict(), strict=True)
    gen = hf_model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id, gen.do_sample = (
        tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, False)

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        hf_model.save_pretrained(tmp)
        tokenizer.save(tmp)
        write_bundle(tmp)
        move_into_place(tmp, dst)  # the checkpoint writer's atomic swap (old directory set aside, restored on failure)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst
