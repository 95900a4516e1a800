"""`looplm info`: parameter counts, FLOPs per token and KV-cache bytes per token of a model config.

The model is built on the `meta` device (shapes only, no memory, no init cost), so even
`report-200m` is instant; counts and FLOPs come from the model's own `param_counts` and
`flops_per_token` and `kv_cache_bytes_per_token` (prelude/coda GQA keys and values per layer; the
core's latents: once per token when `core_kv="anchored"`, once per step when `"per_step"`).
"""

from __future__ import annotations

import argparse
from typing import Any

from looplm.commands import add_model_args, config_from_args, parse_overrides, print_json

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "info", help="parameter counts, FLOPs/token and KV-cache bytes/token of a preset or checkpoint",
        description="Print physical, per-step and virtual(R) parameter counts, forward FLOPs per token "
                    "at R steps, and core/prelude/coda KV-cache bytes per token.")
    add_model_args(p)
    p.add_argument("--ckpt", metavar="DIR", help="read the config from a checkpoint directory instead of --preset")
    p.add_argument("--steps", type=int, metavar="R", help="recurrence steps R (default: the config's recurrence)")
    p.add_argument("--core-kv", choices=("anchored", "per_step"), help="override ModelConfig.core_kv")
    p.add_argument("--seq-len", type=int, metavar="T",
                   help="context length for the attention FLOPs (default: the config's max_seq_len)")
    p.add_argument("--kv-dtype", choices=tuple(DTYPE_BYTES), default="float32",
                   help="element type of the KV cache (default: float32, the model's default dtype)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    config = _config(args)
    steps = config.recurrence if args.steps is None else args.steps
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    seq_len = config.max_seq_len if args.seq_len is None else args.seq_len
    if seq_len < 1:
        raise ValueError(f"--seq-len must be >= 1, got {seq_len}")
    report = model_info(config, steps, seq_len, DTYPE_BYTES[args.kv_dtype])
    report.update(preset=None if args.ckpt else args.preset, checkpoint=args.ckpt, kv_dtype=args.kv_dtype)
    if args.json:
        print_json(report)
    else:
        print(format_info(report))
    return 0


def _config(args: argparse.Namespace):
    extra = {} if args.core_kv is None else {"core_kv": args.core_kv}
    if args.ckpt is None:
        return config_from_args(args, **extra)
    from looplm.checkpoint import load_config

    overrides = {**parse_overrides(args.overrides), **extra}
    config = load_config(args.ckpt)
    return config.replace(**overrides) if overrides else config


def model_info(config: Any, steps: int, seq_len: int, kv_bytes: int) -> dict[str, Any]:
    """The numbers `looplm info` prints, as a JSON-able dict."""
    import torch

    from looplm.model import RecursiveCausalLM

    with torch.device("meta"):
        model = RecursiveCausalLM(config)
    counts = model.param_counts(steps)
    kv = {k: int(v) for k, v in model.kv_cache_bytes_per_token(steps, kv_bytes).items()}
    return {
        "physical_params": int(counts["physical"]),
        "per_step_params": int(counts["per_step"]),
        "virtual_params": int(counts["virtual"]),
        "recurrence": steps,
        "core_block_passes": steps * config.n_core,
        "seq_len": seq_len,
        "flops_per_token": int(model.flops_per_token(steps, seq_len)),
        "kv_cache_bytes_per_token": kv,
        "core_kv": config.core_kv,
        "config": config.to_dict(),
    }


def format_info(r: dict[str, Any]) -> str:
    source = f"checkpoint {r['checkpoint']}" if r["checkpoint"] else f"preset {r['preset']}"
    kv = r["kv_cache_bytes_per_token"]
    return "\n".join([
        f"{source}: core_kv={r['core_kv']}, R={r['recurrence']} steps ({r['core_block_passes']} core block passes)",
        f"parameters   physical {_m(r['physical_params'])}   per step {_m(r['per_step_params'])}   "
        f"virtual(R={r['recurrence']}) {_m(r['virtual_params'])}",
        f"FLOPs/token  {r['flops_per_token'] / 1e9:.3f} GFLOP (forward, R={r['recurrence']}, seq_len={r['seq_len']})",
        f"KV cache/token ({r['kv_dtype']})  core {kv['core']:,} B   prelude {kv['prelude']:,} B   "
        f"coda {kv['coda']:,} B   total {kv['total']:,} B",
    ])


def _m(n: int) -> str:
    return f"{n / 1e6:.2f}M ({n:,})"
