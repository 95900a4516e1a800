"""GRPO whose rollouts depend on the prompt row alone, for comparing W ranks with one process.

The real generator draws every sampled token of a batch from one generator, so a row's sample depends
on its batch companions (and each rank samples with its own seed). Here `generate` decodes each row
alone with a seed taken from the row (its prompt ids and which copy of the prompt it is), so the
global batch of rollouts is the same whatever the ranks; the reward is the length of the completion's
text mod 3 (varied for an untrained model). Run as a script (`python grpo_ranks.py CONFIG_JSON`,
under torchrun or not) it trains `looplm.train.grpo.GRPOConfig(**CONFIG)` and exits with its code.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import zlib


def row_seeded(real):
    """`generate` with every row decoded alone, seeded by (prompt ids, copy index) when sampling."""
    from looplm.generate import GenerationOutput

    def generate(model, prompts, cfg, on_tokens=None):
        outs, copies = [], {}
        for p in prompts:
            j = copies[tuple(p)] = copies.get(tuple(p), -1) + 1
            seed = None if cfg.seed is None else zlib.crc32(json.dumps([p, j]).encode())
            outs.append(real(model, [p], dataclasses.replace(cfg, seed=seed)))
        return GenerationOutput(tokens=[o.tokens[0] for o in outs], exit_steps=[o.exit_steps[0] for o in outs],
                                finished=[o.finished[0] for o in outs])

    return generate


def score(text, row, reward, mode):
    r = float(len(text) % 3 == 0)
    return {"reward": r, "answer_correct": r}


def patch(setattr_=setattr) -> None:
    """Install both stand-ins in `looplm.train.grpo_rollouts` (pass a monkeypatch's setattr in tests)."""
    import looplm.train.grpo_rollouts as GR

    setattr_(GR, "generate", row_seeded(GR.generate))
    setattr_(GR, "score_completion", score)


if __name__ == "__main__":
    from looplm.train.grpo import GRPOConfig, main

    patch()
    sys.exit(main(GRPOConfig(**json.loads(sys.argv[1]))))
