"""`looplm reproduce` settings: the run config and the per-preset budgets of every phase.

`ReproduceConfig` is what the user chooses (preset, output, sources, replay share, range of phases);
`Budget` is what a preset spends per phase (tokens, steps, set sizes). `tiny` is sized so the whole
pipeline, ablations included, runs on a 2-core CPU in about half an hour; `report-200m` follows the
report (60M-token mixture, 21,000 SFT records, 250 + 150 GRPO steps) and wants one GPU.

Simplification: budgets are fixed per preset (override a phase by running its own subcommand).
"""

from __future__ import annotations

from dataclasses import dataclass

from looplm.config import ConfigError

PRESETS = ("tiny", "report-200m", "smoke")


@dataclass(frozen=True)
class Budget:
    model_preset: str
    model_overrides: tuple[str, ...]
    vocab_size: int
    mix_tokens: int
    mix: tuple[tuple[str, float], ...]  # pre-training domain shares (clrs, math, text), summing to 1
    clrs_nodes: tuple[int, ...]
    logic_nodes: tuple[int, int]
    # pre-training
    pretrain_steps: int
    pretrain_batch: int
    pretrain_seq_len: int
    pretrain_lr: float
    pretrain_warmup: int
    pretrain_loss_on: str  # "answers" (the data's loss mask) or "all" tokens
    pretrain_windows: str  # "documents" (windows open at a document) or "random"
    mean_steps: float
    min_depth: int  # floor of the sampled depth in pre-training and SFT
    bptt_steps: int
    # SFT (three-domain and math-heavy sizes: logic, math, chat)
    sft_sizes: tuple[int, int, int]
    sft_math_sizes: tuple[int, int, int]
    sft_steps: int
    sft_batch: int
    sft_lr: float
    sft_exit_share: float  # share of positions leaving the core after one step in SFT (`LoopConfig.exit_share`)
    # GRPO
    grpo_outcome_steps: int
    grpo_process_steps: int
    grpo_prompts: int  # RL prompt set size
    grpo_prompts_per_step: int
    grpo_group: int
    grpo_max_new: int
    grpo_lr: float
    # speed phases, audit, evaluation
    calib_n: int
    spec_n: int
    spec_epochs: int
    eval_n: int
    audit_elastic_n: int
    # core-KV ablation (pre-training only, on the CLRS + maths mixture)
    ablation_steps: int
    ablation_eval_n: int
    # test-time depth: items per task decoded at R, 2R, 4R on graphs larger than trained (eval-depth)
    depth_eval_n: int


BUDGETS: dict[str, Budget] = {
    "tiny": Budget(
        model_preset="tiny", model_overrides=(), vocab_size=2048, mix_tokens=5_000_000,
        # CLRS-Text gets most of pre-training: it is the skill the alignment tax is measured on. Scoring the
        # answers in windows opened at a document took CLRS-DFS before SFT from 9.4% to 43.0% at 2,400
        # updates; 2,800 updates on 75% CLRS reached 51.6 / 39.8 / 46.1% (seeds 0 / 1 / 2) in 24-27 minutes
        # in all (LEARNING_LOG 2026-12-08); the held-out CLRS loss still halved over the last 700 updates, so
        # 3,000 updates on 80% CLRS (maths 20 -> 15%: its answer loss had flattened at 0.74)
        mix=(("clrs", 0.8), ("math", 0.15), ("text", 0.05)), clrs_nodes=(4, 5),
        logic_nodes=(4, 6),
        pretrain_steps=3000, pretrain_batch=8, pretrain_seq_len=256, pretrain_lr=1e-3, pretrain_warmup=60,
        pretrain_loss_on="answers", pretrain_windows="documents",
        # r̄ + 1 = R = 2, never 1 step, gradients through every step (benchmarks/LEARNING_LOG.md)
        mean_steps=1.0, min_depth=2, bptt_steps=8,
        sft_sizes=(3000, 1000, 1000), sft_math_sizes=(500, 1000, 166), sft_steps=500, sft_batch=8, sft_lr=1e-3,
        # SFT with a share of positions exiting after one step makes AdaExit save more at 99% agreement (the coda
        # learns contexts of mixed depth): seed 1's SFT model 36.7% -> 41.3% (LEARNING_LOG 2026-12-08, third session)
        sft_exit_share=0.3,
        grpo_outcome_steps=20, grpo_process_steps=20, grpo_prompts=400, grpo_prompts_per_step=4, grpo_group=4,
        grpo_max_new=96, grpo_lr=2e-5,
        calib_n=192, spec_n=96, spec_epochs=2, eval_n=128, audit_elastic_n=16,
        ablation_steps=60, ablation_eval_n=32, depth_eval_n=100,
    ),
    "report-200m": Budget(
        model_preset="report-200m", model_overrides=(), vocab_size=50304, mix_tokens=60_000_000,
        mix=(("clrs", 0.5), ("math", 0.33), ("text", 0.17)), clrs_nodes=(4, 5, 10, 11, 12, 15, 19, 23), logic_nodes=(4, 8),
        pretrain_steps=7500, pretrain_batch=32, pretrain_seq_len=256, pretrain_lr=6e-4, pretrain_warmup=500,
        pretrain_loss_on="all", pretrain_windows="random",  # the report's pre-training
        mean_steps=8.0, min_depth=1, bptt_steps=8,
        sft_sizes=(10_000, 1_000, 10_000), sft_math_sizes=(1_000, 333, 333), sft_steps=2000, sft_batch=32,
        sft_lr=1e-4, sft_exit_share=0.0,  # untested at R = 8: the report's SFT
        grpo_outcome_steps=250, grpo_process_steps=150, grpo_prompts=2000, grpo_prompts_per_step=2, grpo_group=4,
        grpo_max_new=128, grpo_lr=1e-6,
        calib_n=512, spec_n=1024, spec_epochs=2, eval_n=500, audit_elastic_n=64,
        ablation_steps=2000, ablation_eval_n=200, depth_eval_n=200,
    ),
    # every phase at toy size: a test of the plumbing, not of learning (used by the test suite)
    "smoke": Budget(
        model_preset="tiny", model_overrides=("d_model=64", "n_heads=2", "n_kv_heads=1", "mlp_hidden=128",
                                              "core_mlp_hidden=96", "max_seq_len=384", "recurrence=3"),
        vocab_size=2048, mix_tokens=60_000, mix=(("clrs", 0.5), ("math", 0.33), ("text", 0.17)), clrs_nodes=(4,), logic_nodes=(4, 4),
        pretrain_steps=6, pretrain_batch=4, pretrain_seq_len=64, pretrain_lr=1e-3, pretrain_warmup=2,
        pretrain_loss_on="answers", pretrain_windows="documents",
        mean_steps=3.0, min_depth=1, bptt_steps=2,
        sft_sizes=(40, 20, 20), sft_math_sizes=(10, 20, 5), sft_steps=4, sft_batch=4, sft_lr=1e-3, sft_exit_share=0.3,
        grpo_outcome_steps=2, grpo_process_steps=2, grpo_prompts=24, grpo_prompts_per_step=2, grpo_group=2,
        grpo_max_new=12, grpo_lr=1e-5,
        calib_n=8, spec_n=8, spec_epochs=1, eval_n=4, audit_elastic_n=2,
        ablation_steps=3, ablation_eval_n=4, depth_eval_n=4,
    ),
}


@dataclass
class ReproduceConfig:
    preset: str = "tiny"
    out: str = "runs/tiny"
    start: str | None = None  # --from PHASE
    stop: str | None = None  # --until PHASE
    replay: float = 0.1  # share of CLRS-Text DFS (pre-training format) mixed into SFT and GRPO
    ablation: bool = True  # run the core-KV (anchored vs per_step) ablation
    text: str = "generated"  # English pre-training text: generated | local:PATH | hub
    chat: str = "generated"  # SFT chat rows: generated | a local Alpaca JSON | hub
    gsm8k: str | None = None  # also evaluate on GSM8K from this JSONL/dir (or hub)
    device: str = "auto"
    allow_cpu: bool = False  # let report-200m run on a CPU
    seed: int = 0
    force: bool = False  # re-run phases even when up to date
    threads: int | None = None

    def validate(self) -> None:
        def need(name: str, ok: bool, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"ReproduceConfig.{name}={getattr(self, name)!r} is invalid: {allowed}")

        need("preset", self.preset in PRESETS, f"allowed: {', '.join(PRESETS)}")
        need("replay", 0.0 <= self.replay < 1.0, "must be in [0, 1)")
        need("out", bool(self.out), "an output directory is required")
        need("device", self.device in ("auto", "cpu", "cuda"), "allowed: auto, cpu, cuda")

    @property
    def budget(self) -> Budget:
        return BUDGETS[self.preset]
