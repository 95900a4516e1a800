"""`run_audit(config)`: the held-out batch, the three checks on one checkpoint, audit.json and plots.

Order of work: validate the config (errors name the field) -> check the checkpoint directory (it must
hold tokenizer.json; the depths must fit its max_steps) -> generate the elastic-depth items -> load
the model -> build the batch -> run the checks -> print the report, write `audit.json` and the PNGs.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from looplm.audit.checks import depth_runs, elastic_depth, gradient_starvation, step_gradients, update_shock
from looplm.audit.report import format_report, plot_audit
from looplm.config import ConfigError

GENERATED_DOC_TASKS = ("clrs_dfs", "dfs_verbal", "arith", "word_problems")


@dataclass
class AuditConfig:
    """What `looplm audit` runs; every threshold is a field with its documented default."""

    ckpt: str
    out: str | None = None  # default: "<ckpt>-audit" next to the checkpoint
    data: str = "generated"  # "generated" | a pre-training data directory | a text file (local:PATH)
    n_seqs: int = 8  # N windows of held-out text
    seq_len: int | None = None  # T; None = min(128, max_seq_len - 1)
    seed: int = 0
    depth_multiples: tuple[int, ...] = (1, 2, 3, 4)  # elastic depth: k*R steps
    elastic_tasks: tuple[str, ...] = ("dfs-verbal",)  # generated eval tasks scored at each depth; () = none
    elastic_n: int = 32  # items per elastic task
    elastic_max_new_tokens: int | None = None  # None = longest reference answer + slack
    batch_size: int = 32
    shock_steps: int | None = None  # J: update shock judged on t < J; None = max(R, 4)
    spike_factor: float = 3.0  # spike: m_t > factor x median(neighbours)
    shock_max_std: float = 0.1  # PASS needs the std of m_2..m_{J-1} <= this
    elastic_min_agreement: float = 0.7  # PASS needs greedy agreement with the R-step run >= this
    elastic_max_acc_drop: float = 0.1  # PASS needs accuracy >= acc(R) - this at every depth
    grad_depth: int | None = None  # G; None = 2R
    bptt_steps: int = 8  # steps with a graph in the truncated run (the pre-training default)
    starve_min_ratio: float = 1e-3  # a step is starved below this x the largest gradient norm
    device: str = "cpu"
    progress: bool = True
    plots: bool = True
    write: bool = True
    print_report: bool = True

    def validate(self) -> "AuditConfig":
        from looplm.evaluate.items import GENERATED, canonical_task

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"AuditConfig.{name}={getattr(self, name)!r}: {why}")

        for name in ("n_seqs", "elastic_n", "batch_size", "bptt_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(name, "must be an integer >= 1")
        for name in ("seq_len", "shock_steps", "grad_depth", "elastic_max_new_tokens"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 2):
                raise bad(name, "must be an integer >= 2 (or None for the default)")
        mult = tuple(self.depth_multiples)
        if not mult or mult[0] != 1 or list(mult) != sorted(set(mult)) or any(not isinstance(k, int) for k in mult):
            raise bad("depth_multiples", "must be increasing integers starting with 1, e.g. 1,2,3,4")
        tasks = tuple(canonical_task(t) for t in self.elastic_tasks)
        if any(t not in GENERATED for t in tasks):
            raise bad("elastic_tasks", f"must be generated tasks ({', '.join(GENERATED)})")

        def number(name: str, lo: float, hi: float, allowed: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise bad(name, allowed)

        number("spike_factor", 1.0 + 1e-9, math.inf, "must be a number > 1")
        number("shock_max_std", 0.0, math.inf, "must be a number >= 0")
        for name in ("elastic_min_agreement", "elastic_max_acc_drop", "starve_min_ratio"):
            number(name, 0.0, 1.0, "must be a number in [0, 1]")
        return dataclasses.replace(self, depth_multiples=mult, elastic_tasks=tasks)


# ----------------------------------------------------------------------------------- held-out text
def _stream_windows(docs: Iterator[str], tokenizer: Any, n: int, T: int) -> list[list[int]]:
    """Documents joined as in pre-training (each after an EOS), cut into n windows of T + 1 tokens."""
    need, stream = n * (T + 1), []
    for doc in docs:
        stream += [tokenizer.eos_id] + tokenizer.encode(doc)
        if len(stream) >= need:
            return [stream[i * (T + 1):(i + 1) * (T + 1)] for i in range(n)]
    raise ValueError(f"AuditConfig.data: the held-out text has {len(stream)} tokens, fewer than "
                     f"n_seqs x (seq_len + 1) = {need}; lower n_seqs or seq_len")


def _generated_docs(seed: int) -> Iterator[str]:
    from looplm.data.sources import join_qa
    from looplm.tasks import get_task

    streams = [get_task(t).iter_examples(seed, split="eval") for t in GENERATED_DOC_TASKS]
    while True:
        for s in streams:
            ex = next(s)
            yield join_qa(ex.prompt, ex.answer)


def audit_batch(data: str, tokenizer: Any, n: int, T: int, seed: int) -> tuple[Any, str]:
    """A LongTensor [n, T + 1] of held-out tokens and a description of where it came from:
    `generated`: eval-split documents of the generated tasks, round-robin, as pre-training documents;
    a directory: a pre-training build's validation files (`PretrainData.val`, the domains in turn,
    seeded random windows; its tokenizer must be the checkpoint's); a file (`local:PATH` or a path):
    its paragraphs as documents (e.g. ../shared/data/wikitext2/wiki.test.raw)."""
    import numpy as np
    import torch

    if data == "generated":
        rows = _stream_windows(_generated_docs(seed), tokenizer, n, T)
        return (torch.tensor(rows, dtype=torch.long),
                f"generated eval-split documents ({', '.join(GENERATED_DOC_TASKS)})")
    path = Path(data[len("local:"):] if data.startswith("local:") else data)
    if path.is_dir():
        from looplm.data.shards import PretrainData

        pd = PretrainData.open(path)
        pd.check_tokenizer(tokenizer)
        domains = sorted(pd.val)
        if not domains:
            raise ValueError(f"AuditConfig.data={data!r}: the pre-training build has no validation files")
        counts = [n // len(domains) + (i < n % len(domains)) for i in range(len(domains))]
        parts = [pd.sample_batch(c, T, np.random.default_rng(seed), split=d) for d, c in zip(domains, counts) if c]
        return torch.from_numpy(np.concatenate(parts)), f"validation windows of {path} ({', '.join(domains)})"
    if path.is_file():
        from looplm.tasks import get_task

        texts = get_task("text").load_texts(str(path), unit="paragraph")
        return torch.tensor(_stream_windows(iter(texts), tokenizer, n, T), dtype=torch.long), f"paragraphs of {path}"
    raise FileNotFoundError(f"AuditConfig.data={data!r}: expected 'generated', a pre-training data directory "
                            f"or a text file")


# ------------------------------------------------------------------------------------------- run
def _resolve(cfg: AuditConfig, mc: Any) -> dict[str, int]:
    """R, depths, J, G and T for this model; errors name the field."""
    R = mc.recurrence
    sizes = {"R": R, "D": R * cfg.depth_multiples[-1], "J": cfg.shock_steps or max(R, 4), "G": cfg.grad_depth or 2 * R,
             "T": cfg.seq_len or min(128, mc.max_seq_len - 1)}
    for name, key in (("depth_multiples", "D"), ("grad_depth", "G")):
        if sizes[key] > mc.max_steps:
            raise ConfigError(f"AuditConfig.{name}: {sizes[key]} steps exceed the model's max_steps={mc.max_steps}")
    if sizes["J"] > sizes["D"]:
        raise ConfigError(f"AuditConfig.shock_steps={sizes['J']} exceeds the deepest run ({sizes['D']} steps)")
    if sizes["J"] < 3:
        raise ConfigError(f"AuditConfig.shock_steps: update shock needs >= 3 steps (u_1, u_2), got {sizes['J']}")
    if sizes["T"] > mc.max_seq_len:
        raise ConfigError(f"AuditConfig.seq_len={sizes['T']} exceeds the model's max_seq_len={mc.max_seq_len}")
    return sizes


def run_audit(cfg: AuditConfig) -> dict[str, Any]:
    """Run the three checks on `cfg.ckpt` (see the module docstring); returns what audit.json holds."""
    from looplm.checkpoint import load_checkpoint
    from looplm.evaluate.items import answer_budget, load_items, prompt_format
    from looplm.evaluate.run import check_checkpoint_dir, default_out
    from looplm.evaluate.scoring import GenSpec, eval_generation, no_progress, tqdm_progress

    cfg = cfg.validate()
    mc = check_checkpoint_dir(cfg.ckpt, "audit")
    z = _resolve(cfg, mc)
    items = {t: load_items(t, cfg.elastic_n, cfg.seed).examples for t in cfg.elastic_tasks}
    model, tokenizer, meta = load_checkpoint(cfg.ckpt, map_location=cfg.device)
    batch, source = audit_batch(cfg.data, tokenizer, cfg.n_seqs, z["T"], cfg.seed)
    batch = batch.to(cfg.device)
    x, y = batch[:, :-1], batch[:, 1:]  # [N, T] each
    depths = [k * z["R"] for k in cfg.depth_multiples]
    finals, preds, states = depth_runs(model, x, depths)
    shock = update_shock(states, z["J"], cfg.spike_factor, cfg.shock_max_std)
    del states
    progress = tqdm_progress if cfg.progress else no_progress
    accuracy: dict[str, dict[int, float]] = {}
    for task, exs in items.items():
        budget = cfg.elastic_max_new_tokens or answer_budget(tokenizer, exs)
        accuracy[task] = {}
        for d in depths:
            spec = GenSpec(steps=d, max_new_tokens=budget, batch_size=cfg.batch_size, fmt=prompt_format(task, "auto"))
            accuracy[task][d] = eval_generation(model, tokenizer, exs, task, spec, progress)["metrics"]["score"]
    elastic = elastic_depth(finals, preds, accuracy, cfg.elastic_min_agreement, cfg.elastic_max_acc_drop)
    full = step_gradients(model, x, y, z["G"], None)
    trunc = step_gradients(model, x, y, z["G"], cfg.bptt_steps)
    grads = gradient_starvation(full, trunc, cfg.starve_min_ratio)
    result = {"kind": "looplm-audit", "config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
              "checkpoint": {"path": str(Path(cfg.ckpt).absolute()), "stage": meta.get("stage"), "recurrence": z["R"]},
              "data": {"source": source, "n_seqs": int(x.shape[0]), "seq_len": int(x.shape[1])},
              "update_shock": shock, "elastic_depth": elastic, "gradient_starvation": grads}
    result = _finite(result)
    if cfg.print_report:
        print(format_report(result), flush=True)
    if cfg.write:
        out = Path(cfg.out) if cfg.out else default_out(cfg.ckpt, "audit")
        out.mkdir(parents=True, exist_ok=True)
        (out / "audit.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        if cfg.plots:
            plot_audit(result, out)
    return result


def _finite(obj: Any) -> Any:
    """Non-finite floats -> None, so audit.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
