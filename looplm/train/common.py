"""The pieces of the training loop (`looplm/train/loop.py`) and of its stages: distributed setup,
optimizer and schedule, depth sampling, FLOPs/MFU, the LM loss, the non-finite guard,
compile/autocast, and evaluation at fixed depths.

- Distributed: `setup_distributed` reads torchrun's env (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
  `LOCAL_WORLD_SIZE`), uses gloo on CPU and NCCL on GPU, and sets the CPU threads per rank to
  `--threads`, else `OMP_NUM_THREADS`, else cores / ranks on this node. Ranks split every *global*
  batch by rows (rank r takes rows r·B/W .. (r+1)·B/W), so W ranks compute exactly what one process
  computes with the same global batch (up to float summation order).
- Optimizer: AdamW, weight decay on matrices (dim >= 2: linear weights, the tied embedding, the
  Ouroboros U/V/G), none on vectors (biases, norm gains, the depth-gate bias); fused kernels when the
  device has them. Schedule: linear warmup to `lr`, cosine down to `lr * min_lr_ratio`; a pure
  function of the step, so resuming needs no scheduler state.
- Depth (Huginn): `τ ~ LogNormal(log r̄ − σ²/2, σ)`, `n = Poisson(τ) + 1` (so E[n] = r̄ + 1), a
  share `deep_fraction` of steps draws `n ~ U[16, 32]` instead; clipped to `[1, max_steps]`. The
  generator is keyed by (seed, step): every rank, and every resumed run, draws the same n.
- FLOPs per trained token at depth n with backprop through the last k steps: forward everything
  (outer + n core steps), backward (2x) the outer layers and the last k steps only:
  `3·outer + (n + 2k)·per_step`, with `outer`/`per_step` taken from `looplm.model.flops_per_token`.
- Non-finite guard: an update whose loss or gradient norm is NaN/inf is not applied (the loop counts
  consecutive bad updates). Test hook: env `LOOPLM_TEST_NAN_STEPS="3,4"` poisons the loss of those
  (0-based) steps with NaN.

FSDP (`--fsdp`): FSDP2 `fully_shard` on the whole model (runs on CPU/gloo as well as GPU/NCCL);
checkpoints gather the full weights and a name-keyed optimizer state on rank 0, so an FSDP run
saves ordinary checkpoints. Simplification: one FSDP unit (the core blocks are re-used n times per
forward, which per-block units handle poorly), so parameters, gradients and optimizer state are
sharded but communication is not overlapped layer by layer.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from looplm.config import ConfigError

IGNORE = -100  # target id that carries no loss
DEPTH_STREAM, DATA_STREAM, EXIT_STREAM = 1, 2, 3  # sub-streams of the per-step seeded generators
DEEP_RANGE = (16, 32)
UNTRAINED_PREFIXES = ("speculative_projs.", "speculative_biases.", "core.halt.")  # later stages train these


class TrainingDiverged(RuntimeError):
    """Too many consecutive updates had a non-finite loss or gradient; none of them was applied."""


# ------------------------------------------------------------------------------------ distributed
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # we called init_process_group (and so destroy it)
    threads: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' asked for but CUDA is not available (option --device; use cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r} is invalid: allowed: auto, cpu, cuda (option --device)")
    return torch.device(name)


def setup_distributed(device: str, threads: int | None, need_group: bool = False) -> Dist:
    """Join the torchrun process group when `WORLD_SIZE > 1` (or a 1-process group if `need_group`,
    e.g. for FSDP); set this rank's device and CPU threads."""
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    owns = False
    if (world > 1 or need_group) and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if world > 1:
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        owns = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    env_threads = os.environ.get("OMP_NUM_THREADS", "")
    n_threads = threads or (int(env_threads) if env_threads.isdigit() and int(env_threads) > 0
                            else max(1, (os.cpu_count() or 1) // max(1, local_world)))
    torch.set_num_threads(n_threads)
    return Dist(rank, world, local_rank, local_world, dev, owns, n_threads)


def teardown_distributed(d: Dist) -> None:
    if d.owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled and d.world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def rank_rows(batch: Any, d: Dist) -> Any:
    """This rank's rows of a global batch (its first dimension must divide by the world size)."""
    per = len(batch) // d.world_size
    return batch[d.rank * per:(d.rank + 1) * per]


# ------------------------------------------------------------------------------------ model setup
def freeze_untrained(model: nn.Module) -> list[str]:
    """Switch off gradients of the heads a language-modelling stage does not train (speculative and
    halt heads: their own stages fit them); returns their names."""
    frozen = []
    for name, p in model.named_parameters():
        if name.startswith(UNTRAINED_PREFIXES):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def compile_blocks(model: nn.Module, cache_dir: Path) -> list[str]:
    """`torch.compile` in place every module whose forward takes tensors only: the prelude and coda
    blocks, and inside the core the norms and the (modulated) linears. The core blocks themselves
    take the step index t (a Python int used to pick per-step terms), which would recompile once
    per step, so the step loop and the attention stay eager. Inductor/triton caches go under
    `cache_dir`. Returns the names of the compiled modules."""
    from looplm.model.layers import RMSNorm
    from looplm.model.modulation import ModulatedLinear

    cache_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(cache_dir / "triton"))
    names = [f"prelude.{i}" for i in range(len(model.prelude))] + [f"coda.{i}" for i in range(len(model.coda))]
    names += [f"core.{n}" for n, m in model.core.named_modules() if isinstance(m, (RMSNorm, ModulatedLinear))]
    for name in names:
        model.get_submodule(name).compile(dynamic=False)
    return names


def default_compile_cache() -> Path:
    return Path(os.environ.get("LOOPLM_CACHE", Path.home() / ".cache" / "looplm")) / "compile"


def wrap_model(model: nn.Module, d: Dist, fsdp: bool) -> nn.Module:
    """DDP when several ranks run, FSDP2 (`fully_shard`, one unit, in place) when asked, else the
    model itself."""
    if fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        return fully_shard(model, mesh=init_device_mesh(d.device.type, (d.world_size,)))
    if d.enabled and d.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    return model


def no_sync(model: nn.Module, sync: bool):
    """Skip the gradient all-reduce on accumulation micro-steps (DDP/FSDP); a no-op otherwise."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def full_state_for_save(model: nn.Module, raw: nn.Module, opt: torch.optim.Optimizer, fsdp: bool
                        ) -> tuple[nn.Module, dict]:
    """(a model holding the full weights, the full optimizer state dict). Collective under FSDP
    (the optimizer state is then keyed by parameter name); only rank 0's result is complete."""
    if not fsdp:
        return raw, opt.state_dict()
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    from looplm.model import RecursiveCausalLM

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, opt, options=opts)
    with torch.random.fork_rng(devices=[]):
        copy = RecursiveCausalLM(raw.config)
    if state:  # rank 0 only
        copy.load_state_dict(state)
    return copy, osd


def load_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict, fsdp: bool) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))
        return
    opt.load_state_dict(state)


# ------------------------------------------------------------------------------ optimizer/schedule
def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                    device: torch.device) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # tied weights appear once
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for this device/dtype
        return torch.optim.AdamW(groups, lr=lr, betas=betas)


def lr_at(step: int, base: float, warmup: int, total: int, min_ratio: float, time_frac: float = 0.0) -> float:
    """Learning rate of update `step` (0-based): linear warmup over `warmup` updates, then cosine to
    `base * min_ratio` at `total`. Under a time budget, `time_frac` (elapsed / budget) advances the
    cosine when it is ahead of the step count, so the decay finishes when the budget does."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, max((step - warmup) / max(1, total - warmup), time_frac))
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


# ------------------------------------------------------------------------------------------ depth
def sample_depth(seed: int, step: int, mean: float, sigma: float, max_steps: int, deep_fraction: float,
                 min_depth: int = 1) -> int:
    """Recurrence depth n of update `step` (see the module docstring), raised to `min_depth`; the same on
    every rank."""
    rng = np.random.default_rng([seed, DEPTH_STREAM, step])
    deep = rng.random() < deep_fraction
    if deep:
        n = int(rng.integers(DEEP_RANGE[0], DEEP_RANGE[1] + 1))
    else:
        tau = rng.lognormal(math.log(mean) - sigma ** 2 / 2, sigma)
        n = int(rng.poisson(tau)) + 1
    return max(1, min(max(n, min_depth), max_steps))


def step_rng(seed: int, step: int, micro: int) -> np.random.Generator:
    """The data generator of micro-batch `micro` of update `step`: stateless, so resume is exact."""
    return np.random.default_rng([seed, DATA_STREAM, step, micro])


def lm_depth(cfg: Any, model_cfg: Any, step: int) -> tuple[int, int]:
    """(n, k) of update `step` of a language-modelling stage (a `LoopConfig`): the sampled depth (or the
    fixed one, default the model's recurrence, at most max_steps) and the steps back-propagated."""
    if cfg.sample_depth:
        n = sample_depth(cfg.seed, step, cfg.mean_steps or float(model_cfg.recurrence), cfg.depth_sigma,
                         model_cfg.max_steps, cfg.deep_fraction, cfg.min_depth)
    else:
        n = min(cfg.fixed_depth or model_cfg.recurrence, model_cfg.max_steps)
    return n, min(n, cfg.bptt_steps)


# ------------------------------------------------------------------------------------- FLOPs / MFU
def train_flops_per_token(model_cfg: Any, n: int, k: int, seq_len: int) -> float:
    """Training FLOPs per token at depth n, backprop through the last k steps (module docstring)."""
    from looplm.model import flops_per_token

    f1 = flops_per_token(model_cfg, 1, seq_len)
    per_step = flops_per_token(model_cfg, 2, seq_len) - f1
    outer = f1 - per_step
    return float(3 * outer + (n + 2 * k) * per_step)


def measure_peak_flops(device: torch.device, bf16: bool, seconds: float = 0.3) -> float:
    """Achieved FLOP/s of a large square matmul on this device and thread count (the MFU peak)."""
    size = 4096 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if bf16 else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)  # leaves the global RNG (training state) alone
    a = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
    for _ in range(2):
        a @ b
    sync(device)
    iters, t0 = 0, time.perf_counter()
    while True:
        a @ b
        iters += 1
        sync(device)
        dt = time.perf_counter() - t0
        if dt >= seconds and iters >= 3:
            return 2 * size ** 3 * iters / dt


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------- numerics
def autocast(device: torch.device, bf16: bool):
    """bf16 autocast when asked (CPU or GPU); never fp16."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _wide(logits: torch.Tensor) -> torch.Tensor:
    """Logits in at least float32 (bf16 autocast output is up-cast; float64 stays float64)."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy (>= float32) over targets != IGNORE. logits [B, T, V], targets [B, T]."""
    return F.cross_entropy(_wide(logits).flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum")


def nan_test_steps() -> set[int]:
    raw = os.environ.get("LOOPLM_TEST_NAN_STEPS", "")
    return {int(s) for s in raw.split(",") if s.strip()}


def grad_norm(model: nn.Module, params: list[torch.Tensor], clip: float) -> torch.Tensor:
    """Total gradient 2-norm (before clipping); clips to `clip` when clip > 0 and the norm is finite.
    Under FSDP2 the parameters are DTensors and the norm is reduced over the shards."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"), error_if_nonfinite=False)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a DTensor


def is_finite(*xs: float) -> bool:
    return all(math.isfinite(x) for x in xs)


def to_device_batch(inputs: np.ndarray, targets: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.from_numpy(np.ascontiguousarray(inputs)).to(device, non_blocking=True),
            torch.from_numpy(np.ascontiguousarray(targets)).to(device, non_blocking=True))


# ------------------------------------------------------------------------------------- evaluation
def token_byte_lengths(tokenizer: Any, n: int) -> np.ndarray:
    """UTF-8 bytes each token id decodes to (byte-level BPE: one byte per symbol of its string);
    special tokens and ids beyond the tokenizer (padding rows of the embedding) count 0 bytes."""
    from tokenizers import pre_tokenizers

    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    added = tokenizer.hf.get_added_tokens_decoder()
    out = np.zeros(n, dtype=np.int64)
    for i in range(min(n, tokenizer.vocab_size)):
        if i in added:
            out[i] = 0 if added[i].special else len(added[i].content.encode("utf-8"))
            continue
        s = tokenizer.hf.id_to_token(i)
        if s is None:
            continue
        out[i] = len(s) if all(c in alphabet for c in s) else len(tokenizer.decode([i]).encode("utf-8"))
    return out


@torch.no_grad()
def eval_sums(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], depths: list[int],
              token_bytes: torch.Tensor, device: torch.device, bf16: bool, d: Dist) -> dict[int, dict[str, float]]:
    """Per depth: mean loss over scored targets and bits per byte (loss of targets that decode to
    >= 1 byte, in bits, over their bytes). Sums are all-reduced over ranks (each passes its rows)."""
    batches = list(batches)
    out = {}
    for n in depths:
        acc = torch.zeros(4, dtype=torch.float64, device=device)  # loss, count, loss on bytes, bytes
        for x, y in batches:
            with autocast(device, bf16):
                logits = model(x, n).logits
            nll = F.cross_entropy(_wide(logits).flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="none")
            valid = y.flatten() != IGNORE
            nbytes = token_bytes[y.flatten().clamp(min=0)] * valid
            acc += torch.stack([nll.sum().double(), valid.sum().double(),
                                (nll * (nbytes > 0)).sum().double(), nbytes.sum().double()])
        all_reduce_sum(acc, d)
        loss, count, lb, nb = acc.tolist()
        # nothing scored (e.g. no answer fits the window): NaN, not a loss of 0
        out[n] = {"loss": loss / count if count else float("nan"),
                  "bpb": (lb / math.log(2)) / nb if nb > 0 else float("nan"), "tokens": int(count)}
    return out


def eval_depths(requested: tuple[int, ...] | list[int], train_depth: int, max_steps: int) -> list[int]:
    """The fixed depths to evaluate: the requested ones that fit max_steps, plus the model's
    nominal depth, sorted and unique."""
    return sorted({n for n in requested if n <= max_steps} | {min(train_depth, max_steps)})


# ------------------------------------------------------------------------------------ one update
def forced_exits(seed: int, step: int, micro: int, local_shape: tuple[int, int], share: float,
                 d: Dist) -> torch.Tensor | None:
    """This rank's rows [b, T] of the positions of micro-batch `micro` of update `step` that leave the core
    after one step (`LoopConfig.exit_share`): each with probability `share`, drawn for the global batch from
    a stateless generator (exact resume; W ranks draw what one process draws)."""
    if share <= 0:
        return None
    b, T = local_shape
    rng = np.random.default_rng([seed, EXIT_STREAM, step, micro])
    full = rng.random((b * d.world_size, T)) < share  # [B, T] global rows
    return torch.from_numpy(full[d.rank * b:(d.rank + 1) * b]).to(d.device)


def accumulate(model: nn.Module, micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]], n: int, k: int,
               n_targets: int, d: Dist, bf16: bool, poison: bool = False,
               exits: list[torch.Tensor | None] | None = None) -> torch.Tensor:
    """Forward n steps (gradients through the last k) and backward every micro-batch of one update;
    gradients end up as d(global summed loss / n_targets), where n_targets counts the scored targets
    of the whole update over all ranks. `exits[i]` (optional, bool like micro-batch i's inputs): positions
    forced to leave the core after one step. Returns this rank's summed loss (float64, detached)."""
    micro_batches = list(micro_batches)
    total = torch.zeros((), dtype=torch.float64, device=d.device)
    for i, (x, y) in enumerate(micro_batches):
        force = exits[i] if exits is not None and n > 1 else None
        with no_sync(model, i == len(micro_batches) - 1):
            with autocast(d.device, bf16):
                ls = loss_sum(model(x, n, grad_steps=k, init_noise=True, force_exit=force).logits, y)
            if poison:  # test hook (LOOPLM_TEST_NAN_STEPS)
                ls = ls * float("nan")
            (ls * (d.world_size / n_targets)).backward()  # DDP/FSDP average over ranks -> global mean
        total += ls.detach().double()
    return total


def finish_update(model: nn.Module, opt: torch.optim.Optimizer, params: list[torch.Tensor], local_loss: torch.Tensor,
                  n_targets: int, flags: list[bool], clip: float, d: Dist, values: list[float] = ()
                  ) -> tuple[float, float, bool, list[bool], list[float]]:
    """All-reduce the loss, stop flags (e.g. [signal received, time limit reached]: true if true on
    any rank, so every rank stops at the same update) and `values` (averaged over ranks, e.g. the
    elapsed training time, so every rank derives the same learning rate from it); clip; apply the
    update only if the loss and the gradient norm are finite.
    Returns (mean loss, grad norm, applied, reduced flags, averaged values)."""
    packed = torch.tensor([0.0] + [float(f) for f in flags] + list(values), dtype=torch.float64, device=d.device)
    packed[0] = local_loss
    reduced = all_reduce_sum(packed, d).tolist()
    nf = len(flags)
    loss, any_flags = reduced[0] / n_targets, [v > 0 for v in reduced[1:1 + nf]]
    means = [v / d.world_size for v in reduced[1 + nf:]]
    gnorm = float(grad_norm(model, params, clip))
    ok = is_finite(loss, gnorm)
    if ok:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return loss, gnorm, ok, any_flags, means


# ------------------------------------------------------------------------------ evaluation loop
def evaluate(model: nn.Module, raw: nn.Module, val: dict[str, list], depths: list[int], token_bytes: torch.Tensor,
             bf16: bool, d: Dist) -> dict[str, dict[int, dict[str, float]]]:
    """`eval_sums` for every validation domain: results[domain][depth] = {loss, bpb, tokens}."""
    raw.eval()
    try:
        return {dom: eval_sums(model, bs, depths, token_bytes, d.device, bf16, d) for dom, bs in val.items()}
    finally:
        raw.train()
