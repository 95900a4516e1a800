"""Speed calibrations on a frozen model: the AdaExit halt head and the speculative draft heads.

- `configs`: `HaltCalibConfig`, `SpecTrainConfig` (validated run configs), the halt meta key names;
- `halt`: `calibrate_halt(HaltCalibConfig)`, the stage behind `looplm calibrate-halt` (`halt_cmd`);
- `spec`: `train_spec(SpecTrainConfig)`, the stage behind `looplm train-spec` (`spec_cmd`);
- `common`: data loading, greedy continuations, bit-for-bit parameter checks, interleaved timing.

The stage functions are exported lazily so that importing this package (e.g. for the CLI) does not
import torch.
"""

from __future__ import annotations

from looplm.calibrate.configs import META_MIN_STEPS, META_STEPS, META_THRESHOLD, HaltCalibConfig, SpecTrainConfig

__all__ = ["HaltCalibConfig", "SpecTrainConfig", "calibrate_halt", "train_spec", "META_THRESHOLD",
           "META_MIN_STEPS", "META_STEPS"]


def __getattr__(name: str):
    if name == "calibrate_halt":
        from looplm.calibrate.halt import calibrate_halt

        return calibrate_halt
    if name == "train_spec":
        from looplm.calibrate.spec import train_spec

        return train_spec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
