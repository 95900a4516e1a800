"""Stage configs <-> argparse: build a subcommand's options from a config dataclass and back.

Each stage (pretrain, sft) declares one dataclass whose fields carry their help text in
`field(metadata={"help": ...})`; `add_config_args` turns every field into `--field-name` with a
parser that matches its annotation, and `config_from_args` builds (and so validates) the dataclass
from the parsed namespace. Validation helpers (`need`, `need_int`, ...) raise `ConfigError` naming
`Class.field`, its bad value and the allowed range.

Supported field types: int, float, str, bool (a `--flag` switch; `--no-flag` too when the default
is True), `T | None` of those, `tuple[int, ...]` (comma-separated) and `list[str]` (repeatable
option, e.g. `--set d_model=64`). Torch-free, so `looplm --help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import field
import typing
from typing import Any

from looplm.config import ConfigError

MODEL_SET_FIELD = "model_overrides"  # list[str] field exposed as the repeatable `--set FIELD=VALUE`


def _flag(name: str) -> str:
    return "--" + ("set" if name == MODEL_SET_FIELD else name.replace("_", "-"))


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(underlying type, optional?) for `T`, `T | None` and `Optional[T]`."""
    args = typing.get_args(tp)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def add_config_args(parser: argparse.ArgumentParser, cls: type, required: tuple[str, ...] = ()) -> None:
    """Add one option per field of dataclass `cls`; names in `required` become required options."""
    hints = typing.get_type_hints(cls)
    base = {f.name for b in cls.__mro__[1:] if dataclasses.is_dataclass(b) for f in dataclasses.fields(b)}
    fields = dataclasses.fields(cls)  # the stage's own fields first, then those it shares with every stage
    for f in [f for f in fields if f.name not in base] + [f for f in fields if f.name in base]:
        tp, optional = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        flag = _flag(f.name)
        kw: dict[str, Any] = {"dest": f.name, "help": help_text}
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction if default else "store_true"
            kw["default"] = default
        elif typing.get_origin(tp) is list:
            kw.update(action="append", default=list(default or []), metavar=f.metadata.get("metavar", "VALUE"))
        elif typing.get_origin(tp) is tuple:
            kw.update(type=_int_tuple, default=default, metavar=f.metadata.get("metavar", "N,N,..."))
        else:
            kw.update(type=tp, default=default, metavar=f.metadata.get("metavar", tp.__name__.upper()))
        if f.name in required:
            kw["required"] = True
            kw.pop("default", None)
        elif tp is not bool and kw.get("default") is not None and "%(default)" not in help_text:
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            kw["help"] = f"{help_text} (default: {shown})".strip()
        elif optional and tp is not bool and not default and help_text and "default" not in help_text:
            kw["help"] = f"{help_text} (default: off)"
        parser.add_argument(flag, **kw)


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Build `cls` from the namespace produced by a parser made with `add_config_args`."""
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**{n: getattr(args, n) for n in names if hasattr(args, n)})


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-able dict of a stage config (tuples become lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


# ----------------------------------------------------------------------------------- validation
def need(cfg: Any, name: str, ok: bool, allowed: str) -> None:
    """Raise ConfigError naming `Class.name` unless `ok`."""
    if not ok:
        raise ConfigError(f"{type(cfg).__name__}.{name}={getattr(cfg, name)!r} is invalid: {allowed} "
                          f"(option {_flag(name)})")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def need_int(cfg: Any, name: str, lo: int, hi: int | None = None, optional: bool = False) -> None:
    v = getattr(cfg, name)
    if optional and v is None:
        return
    rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
    need(cfg, name, _is_int(v) and v >= lo and (hi is None or v <= hi), f"must be an integer {rng}")


def need_float(cfg: Any, name: str, lo: float, hi: float | None = None, lo_open: bool = False,
               optional: bool = False) -> None:
    v = getattr(cfg, name)
    if optional and v is None:
        return
    ok = _is_num(v) and (v > lo if lo_open else v >= lo) and (hi is None or v <= hi)
    rng = f"{'>' if lo_open else '>='} {lo}" + ("" if hi is None else f" and <= {hi}")
    need(cfg, name, ok, f"must be a finite number {rng}")


def need_choice(cfg: Any, name: str, choices: tuple[str, ...]) -> None:
    need(cfg, name, getattr(cfg, name) in choices, f"allowed: {', '.join(choices)}")


def need_ints(cfg: Any, name: str, lo: int) -> None:
    v = getattr(cfg, name)
    need(cfg, name, isinstance(v, (tuple, list)) and len(v) > 0 and all(_is_int(x) and x >= lo for x in v),
         f"must be a non-empty list of integers >= {lo}")


def need_str(cfg: Any, name: str, optional: bool = False) -> None:
    v = getattr(cfg, name)
    if optional and v is None:
        return
    need(cfg, name, isinstance(v, str) and v.strip() != "", "must be a non-empty path or string")


def opt_field(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its CLI help (and optional `metavar`) in the metadata."""
    meta = {"help": help, **kw}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def validate_stage(cfg: Any) -> None:
    """Checks shared by the pretrain and SFT configs."""
    need_str(cfg, "out")
    need_str(cfg, "init", optional=True)
    for name in ("steps", "batch_size", "seq_len", "grad_accum", "bptt_steps", "eval_batches", "save_every",
                 "keep", "max_bad_steps", "log_every"):
        need_int(cfg, name, 1)
    for name in ("warmup", "eval_every", "seed"):
        need_int(cfg, name, 0)
    need_int(cfg, "fixed_depth", 1, optional=True)
    need_int(cfg, "threads", 1, optional=True)
    need_float(cfg, "lr", 0.0, lo_open=True)
    need_float(cfg, "min_lr_ratio", 0.0, 1.0)
    need_float(cfg, "weight_decay", 0.0)
    need_float(cfg, "beta1", 0.0, 1.0)
    need_float(cfg, "beta2", 0.0, 1.0)
    need_float(cfg, "grad_clip", 0.0)
    need_float(cfg, "mean_steps", 0.0, lo_open=True, optional=True)
    need_float(cfg, "depth_sigma", 0.0)
    need_float(cfg, "deep_fraction", 0.0, 1.0)
    need_float(cfg, "peak_flops", 0.0, lo_open=True, optional=True)
    need_float(cfg, "max_minutes", 0.0, lo_open=True, optional=True)
    need_ints(cfg, "eval_depths", 1)
    need_choice(cfg, "device", ("auto", "cpu", "cuda"))
