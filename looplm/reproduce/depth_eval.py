"""Test-time depth (the report's "unroll to 24 or 32 steps"): the final checkpoint decoded at R, 2R and 4R
recurrence steps on graphs larger than any it was trained on.

Sizes (`larger_sizes(budget)`), from the preset's training sizes:
- `dfs-verbal`: max(9, hi + 1) .. max(10, hi + 2) nodes, where hi is the largest verbal-DFS graph of
  pre-training/SFT/GRPO (`Budget.logic_nodes`); 9-10 nodes for every preset of today;
- `clrs-dfs`: n = top + 1 and top + 2, where top is the largest CLRS-DFS graph trained
  (`Budget.clrs_nodes`).
Items are generated from the eval split (seed = the run's seed) with those options, prompted as
`looplm eval` prompts them (chat for verbal DFS, the raw pre-training format for CLRS), decoded
greedily by `evaluate.scoring.eval_generation` with each task's answer budget (longest reference
answer + slack) and scored by the task's exact-match `score`. A task whose items cannot fit the
model context (prompt + answer budget > max_seq_len) is skipped and the reason is returned.

`depth_sweep.json`: {task: {"depths": [R, 2R, 4R], "sizes": "9-10 nodes", "n": int,
"correct": [int per depth], "accuracy": [float per depth]}}; depths beyond the model's max_steps are
left out.

Simplification: one seed, greedy decoding, fixed depth per run (no AdaExit).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SWEEP_JSON = "depth_sweep.json"
MAX_LABELS = 26  # verbal DFS labels nodes A..Z


def larger_sizes(budget: Any) -> dict[str, dict[str, Any]]:
    """Per eval task: generator options for graphs larger than trained, and both sizes in words."""
    lo, hi = budget.logic_nodes
    v_lo, v_hi = min(max(9, hi + 1), MAX_LABELS), min(max(10, hi + 2), MAX_LABELS)
    if v_lo <= hi:
        raise ValueError(f"verbal DFS was trained up to {hi} nodes: no larger graph has {MAX_LABELS} labels or fewer")
    top = max(budget.clrs_nodes)
    counts = (top + 1, top + 2)
    return {"dfs-verbal": {"opts": {"min_nodes": v_lo, "max_nodes": v_hi}, "sizes": f"{v_lo}-{v_hi} nodes",
                           "trained": f"{lo}-{hi} nodes" if lo != hi else f"{lo} nodes"},
            "clrs-dfs": {"opts": {"node_counts": counts}, "sizes": f"n = {counts[0]}, {counts[1]}",
                         "trained": "n = " + ", ".join(str(k) for k in budget.clrs_nodes)}}


def sweep_depths(recurrence: int, max_steps: int) -> list[int]:
    """[R, 2R, 4R] within the model's max_steps."""
    return [d for d in (recurrence, 2 * recurrence, 4 * recurrence) if d <= max_steps]


def sweep_entry(depths: list[int], sizes: str, n: int, correct: list[int]) -> dict[str, Any]:
    """One task's entry of depth_sweep.json."""
    if len(correct) != len(depths) or not all(0 <= c <= n for c in correct):
        raise ValueError(f"correct={correct} must give one count in 0..{n} per depth of {depths}")
    return {"depths": list(depths), "sizes": sizes, "n": n, "correct": [int(c) for c in correct],
            "accuracy": [c / n for c in correct]}


def check_sweep(obj: Any) -> dict[str, Any]:
    """`obj` if it has the depth_sweep.json shape, else ValueError naming the problem."""
    if not isinstance(obj, dict):
        raise ValueError("depth sweep: not a JSON object")
    for task, e in obj.items():
        if not isinstance(e, dict) or set(e) != {"depths", "sizes", "n", "correct", "accuracy"}:
            raise ValueError(f"depth sweep {task!r}: keys must be depths, sizes, n, correct, accuracy")
        k = len(e["depths"])
        if not (isinstance(e["n"], int) and e["n"] >= 1 and isinstance(e["sizes"], str)
                and len(e["correct"]) == k and len(e["accuracy"]) == k and k >= 1):
            raise ValueError(f"depth sweep {task!r}: one count and one accuracy per depth, n >= 1")
        if any(abs(a - c / e["n"]) > 1e-9 for a, c in zip(e["accuracy"], e["correct"])):
            raise ValueError(f"depth sweep {task!r}: accuracy must be correct / n")
    return obj


def depth_sweep(ckpt: str | Path, sizes: dict[str, dict[str, Any]], n: int, seed: int, out: str | Path,
                batch_size: int = 32, device: str = "cpu") -> dict[str, Any]:
    """Decode `n` larger items per task at R, 2R, 4R; write `out` (depth_sweep.json). Returns
    {"sweep": the file's content, "skipped": {task: reason}}."""
    from looplm.checkpoint import load_checkpoint
    from looplm.evaluate.items import EVAL_TASKS, answer_budget, format_prompt, prompt_format
    from looplm.evaluate.scoring import GenSpec, eval_generation
    from looplm.tasks import get_task

    model, tok, _ = load_checkpoint(ckpt, map_location=device)
    model.eval()
    mc = model.config
    depths = sweep_depths(mc.recurrence, mc.max_steps)
    sweep: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for task, spec in sizes.items():
        exs = get_task(EVAL_TASKS[task]).generate(n, seed=seed, split="eval", **spec["opts"])
        fmt = prompt_format(task, "auto")
        budget = answer_budget(tok, exs)
        longest = max(len(format_prompt(tok, e, fmt)[1]) for e in exs)
        if longest + budget > mc.max_seq_len:
            skipped[task] = (f"{spec['sizes']}: prompt ({longest} tokens) + answer budget ({budget}) exceed the "
                             f"context max_seq_len={mc.max_seq_len}")
            print(f"eval-depth: {task} skipped: {skipped[task]}")
            continue
        correct = []
        for d in depths:
            res = eval_generation(model, tok, exs, task, GenSpec(steps=d, max_new_tokens=budget,
                                                                 batch_size=batch_size, fmt=fmt))
            correct.append(int(sum(r["score"] for r in res["records"])))
            print(f"eval-depth: {task} ({spec['sizes']}) at {d} steps: {correct[-1]}/{n}")
        sweep[task] = sweep_entry(depths, spec["sizes"], n, correct)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(check_sweep(sweep), indent=2) + "\n")
    return {"sweep": sweep, "skipped": skipped}
