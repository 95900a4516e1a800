"""`python -m looplm.hf.lm_eval_cli ...`: lm-eval's own command line, with the `looplm` model registered.

lm-eval looks models up in its registry and has no plugin hook, so `lm_eval --model looplm` cannot
find a model defined outside lm-eval. This entry point imports looplm/hf/lm_eval_adapter.py (which
registers `looplm`) and hands the arguments to lm-eval unchanged:

    python -m looplm.hf.lm_eval_cli --model looplm --model_args ckpt=DIR,steps=8,adaptive=true \\
        --tasks gsm8k --batch_size 16 --output_path results/
"""

from __future__ import annotations

import looplm.hf.lm_eval_adapter  # noqa: F401  (registers the `looplm` model)


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
