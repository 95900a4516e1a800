"""`looplm audit`: the three pathology checks of docs/audit.md, with numbers, thresholds and verdicts.

Modules: `checks.py` (the three checks, pure functions of states / gradients), `run.py`
(`AuditConfig`, the held-out batch, `run_audit(config)`), `report.py` (text report, PNG plots),
`cli.py` (the `looplm audit` subcommand). Definitions:

All three run on one batch of held-out text (`--data`, see `audit_batch`): N windows of T tokens,
inputs `x = w[:, :-1]`, targets `y = w[:, 1:]`. R is the model's training depth (config.recurrence).

1. Update shock. From the states s_0..s_D of a D = max(depths)-step run, the relative update of
   every token `u_t = ||s_{t+1} - s_t|| / ||s_t||` for t = 1..D-1 (u_0 is undefined: s_0 = 0).
   The curve m_t (mean of u_t over tokens) is judged on t = 1..J-1 (J = `shock_steps`, default
   max(R, 4): a shallow loop, R = 2, has one judged update within R, so it is judged up to 2R):
   `mean` and `std` of m_t across those steps (population std, the report's numbers), and spikes: a
   step t >= 2 with m_t > `spike_factor` x the median of its neighbours m_{t-1}, m_{t+1}. The first
   update is where a contracting loop moves most (s_1 starts from s_0 = 0), so it is not judged:
   neither as a spike nor in `std_after_first`, the std of m_2..m_{J-1} that the verdict uses (a
   smooth decay from a large first step would otherwise fail). The share of tokens whose own curve
   spikes is reported too. PASS iff no spike and std_after_first <= `shock_max_std`.
2. Elastic depth. Runs at k*R steps for k in `depth_multiples` (default 1, 2, 3, 4): the mean
   cosine similarity of each token's final state s_{kR} with s_R, the share of tokens whose greedy
   next-token prediction equals the R-step run's, and the accuracy on held-out items of
   `elastic_tasks` (greedy decoding through `looplm.evaluate`, default dfs-verbal). PASS iff at
   every k > 1 the agreement is >= `elastic_min_agreement` and no accuracy falls more than
   `elastic_max_acc_drop` below its R-step value.
3. Gradient starvation. The LM loss (mean next-token cross-entropy) of a G-step run
   (`grad_depth`, default 2R) is back-propagated twice: with truncation off, and with the
   trainer's truncation (only the last `bptt_steps` steps build a graph, default 8 as in pre-training).
   Reported for every step i = 1..G: `||dL/ds_i||` (s_i is the state step i produces, the gradient
   taken through everything after it) and `||g_i||`, the gradient of the core parameters through
   their use in step i alone: each step runs on its own copy of the core's parameters (see
   `per_step_parameters`), so the copies' gradients add up exactly to the shared gradient (the
   anchored latents, computed once per token outside the loop, are reported as `shared`). The
   deepest/shallowest ratios are `||dL/ds_G|| / ||dL/ds_1||` and `||g_G|| / ||g_1||`. A step is
   "starved" when its norm is below `starve_min_ratio` x the largest one; PASS iff no step of the
   untruncated run is starved. In the truncated run the steps under no_grad have exactly zero
   gradient: they are labelled "truncated" (a structural zero), never "starved".

Writes `audit.json` (config, every per-step number, thresholds, verdicts) and `update_shock.png`,
`elastic_depth.png`, `gradient_starvation.png` to `out` (default `<checkpoint>-audit`).

Simplification: one batch, one seed; the checks are diagnostics, not significance tests.
"""

from __future__ import annotations

from looplm.audit.checks import (FAIL, PASS, depth_runs, elastic_depth, find_spikes, gradient_starvation,
                                 per_step_parameters, step_gradients, update_shock)
from looplm.audit.run import AuditConfig, audit_batch, run_audit

__all__ = ["AuditConfig", "run_audit", "audit_batch", "find_spikes", "update_shock", "depth_runs", "elastic_depth",
           "per_step_parameters", "step_gradients", "gradient_starvation", "PASS", "FAIL"]
