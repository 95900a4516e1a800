"""The training recipe of the recurrence: how many steps each update runs, how many of them get
gradients, and the loss, as `benchmarks/bench_learning.py` trains looplm (the research trials of
`benchmarks/LEARNING_LOG.md` vary these fields). The Huginn sampler is the one `looplm pretrain` and
`looplm sft` use (`looplm.train.common.sample_depth`); the values the trials chose are the `tiny`
budget of `looplm reproduce` (`looplm/reproduce/config.py`: r̄ = R - 1, a floor of 2 steps, every step
with gradients).

- Depth per update (`Recipe.depth`):
  - `"huginn"`: `n = Poisson(LogNormal(log r̄ - σ²/2, σ)) + 1` (`looplm.train.common.sample_depth`),
    so E[n] = r̄ + 1, plus a share `deep_fraction` of updates at n ~ U[16, 32]; draws below
    `min_steps` are raised to it (a depth floor: the model is never asked to answer after fewer steps,
    so it can rely on them);
  - `"uniform"`: n ~ U{min_steps .. max_train_steps};
  - `"fixed"`: n = R every update.
- Curriculum (`curriculum` = c > 0): during the first fraction c of training (by elapsed budget or by
  updates) the mean depth ramps linearly from 1 to its value (Huginn's and McLeish et al. 2025's
  recurrence curriculum); n is capped at the ramped mean's `2x` so early updates are cheap.
- Backprop window: the last `k = min(n, bptt)` steps (`bptt = 0`: all n), the earlier steps under
  `no_grad` (truncated backprop; Bansal et al. 2022's progressive loss trains the same way: a
  detached state after a random number of steps, then gradients through the steps that follow).
- Loss: cross-entropy on the target tokens the caller did not mask (the answer, never the random graph
  description), at the depth n of the update.

Simplification: one depth per update for the whole batch (as Huginn); no per-example depth.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = -100
DEPTH_MODES = ("huginn", "uniform", "fixed")


@dataclass(frozen=True)
class Recipe:
    lr: float = 1e-3
    """looplm learning rate (peak of the warm-up/cosine schedule; the sweep's pick for `tiny`)."""
    gpt_lr: float = 1e-3
    """The plain GPT baseline's learning rate (benchmarks only; its own sweep's pick)."""
    batch_size: int = 8
    warmup: int = 60
    weight_decay: float = 0.1
    clip: float = 1.0
    depth: str = "huginn"
    """Depth per update: huginn | uniform | fixed (module docstring)."""
    mean_steps: float = 0.0
    """r̄ of the Huginn sampler (0 = the model's R - 1, so that E[n] = R)."""
    sigma: float = 0.5
    deep_fraction: float = 0.0
    min_steps: int = 2
    """Smallest n of the uniform sampler; the floor of the Huginn sampler's draws (2: the `tiny` model is
    never asked to answer after one step, so it uses its second; trial G2 of the learning log)."""
    max_train_steps: int = 0
    """Largest n of the uniform sampler and cap of every sampler (0 = 2R)."""
    bptt: int = 0
    """Steps with gradients (the last ones); 0 = all."""
    curriculum: float = 0.0
    """Fraction of training over which the mean depth ramps from 1 (0 = no curriculum)."""

    def __post_init__(self) -> None:
        def bad(name, allowed):
            raise ValueError(f"Recipe.{name}={getattr(self, name)!r} is invalid: {allowed}")

        for name in ("lr", "gpt_lr"):
            if not getattr(self, name) > 0:
                bad(name, "must be > 0")
        for name in ("batch_size", "warmup", "min_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "must be an integer >= 1")
        for name in ("bptt", "max_train_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                bad(name, "must be an integer >= 0")
        if self.depth not in DEPTH_MODES:
            bad("depth", f"allowed: {', '.join(DEPTH_MODES)}")
        if not 0 <= self.curriculum <= 1:
            bad("curriculum", "must be in [0, 1]")
        if not 0 <= self.deep_fraction <= 1:
            bad("deep_fraction", "must be in [0, 1]")
        for name in ("mean_steps", "sigma", "weight_decay"):
            if not getattr(self, name) >= 0:
                bad(name, "must be >= 0")
        if not self.clip > 0:
            bad("clip", "must be > 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_overrides(cls, pairs: list[str], **direct) -> "Recipe":
        """A recipe from `FIELD=VALUE` strings (values parsed as the field's type) and keyword values
        (None = keep the default)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in direct.items() if v is not None}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep or name not in fields:
                raise ValueError(f"--recipe {pair!r}: expected FIELD=VALUE with FIELD one of {', '.join(fields)}")
            typ = type(getattr(cls(), name))
            try:
                kw[name] = typ(value)
            except ValueError:
                raise ValueError(f"--recipe {pair!r}: Recipe.{name} must be a {typ.__name__}") from None
        return cls(**kw)


def depth_for_update(recipe: Recipe, cfg, seed: int, update: int, frac: float) -> tuple[int, int]:
    """(n, k) of update `update` at training progress `frac` in [0, 1]: steps run and steps with grads."""
    from looplm.train.common import sample_depth

    R = cfg.recurrence
    cap = recipe.max_train_steps or 2 * R
    ramp = 1.0 if recipe.curriculum == 0 else min(1.0, frac / recipe.curriculum)
    if recipe.depth == "fixed":
        n = max(1, round(1 + (R - 1) * ramp))
    elif recipe.depth == "uniform":
        hi = max(recipe.min_steps, round(recipe.min_steps + (cap - recipe.min_steps) * ramp))
        n = int(np.random.default_rng([seed, 7, update]).integers(recipe.min_steps, hi + 1))
    else:
        mean = recipe.mean_steps or (R - 1)
        mean = max(1e-3, mean * ramp)
        n = sample_depth(seed, update, mean, recipe.sigma, cfg.max_steps, recipe.deep_fraction, recipe.min_steps)
        n = min(n, max(recipe.min_steps, math.ceil(2 * (mean + 1))) if ramp < 1 else max(cap, recipe.min_steps))
    n = max(1, min(n, cfg.max_steps))
    k = n if recipe.bptt == 0 else min(n, recipe.bptt)
    return n, k


def recipe_loss(model, ids: torch.Tensor, targets: torch.Tensor, n: int, k: int, recipe: Recipe) -> torch.Tensor:
    """Mean cross-entropy over the unmasked targets at depth n, gradients through the last k steps."""
    logits = model(ids, n, grad_steps=k).logits
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
