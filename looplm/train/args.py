"""Stage configs <-> argparse: build a subcommand's options from a config dataclass and back, and
`--config FILE`, which replays a run's `run_config.json`.

Each stage (pretrain, sft, grpo) declares one dataclass whose fields carry their help text in
`field(metadata={"help": ...})`; `add_config_args` turns every field into `--field-name` with a
parser that matches its annotation, and `config_from_args` builds (and so validates) the dataclass
from the parsed namespace. Validation helpers (`need`, `need_int`, ...) raise `ConfigError` naming
`Class.field`, its bad value and the allowed range.

`--config FILE` (`add_config_file_option`): the file's fields are the defaults, options given on the
command line override them. The parser's actions record which options were given (`GIVEN`), so an
option given with its default value still overrides the file. The file is a JSON object of the
config's fields (a run directory's `run_config.json`, whose `stage` must be this command's; or a
results file holding them under `"config"`); an unknown field or a value of the wrong type is an
error naming the file and the field. `resume` is never replayed (pass `--resume` to continue a run).

Supported field types: int, float, str, bool (a `--flag` switch; `--no-flag` too when the default
is True or a `--config` file may set it), `T | None` of those, `tuple[int, ...]` (comma-separated)
and `list[str]` (repeatable option, e.g. `--set d_model=64`). Torch-free, so `looplm --help` stays
fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

from looplm.config import ConfigError

MODEL_SET_FIELD = "model_overrides"  # list[str] field exposed as the repeatable `--set FIELD=VALUE`
GIVEN = "_given"  # namespace attribute: the dests of the options given on the command line
CONFIG_DEST = "config_file"  # dest of --config FILE
REQUIRED_DEST = "_required"  # dests that must come from the command line or the --config file
NOT_REPLAYED = ("resume",)
FROM_FILE = "__from_file__"  # key of `replay_values`' result: (file, fields taken from it)


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


def add_config_args(parser: argparse.ArgumentParser, cls: type, required: tuple[str, ...] = (),
                    config_file: bool = False) -> None:
    """Add one option per field of dataclass `cls`; names in `required` become required options
    (with `config_file`: required on the command line or in the `--config` file, which is added)."""
    if config_file:
        add_config_file_option(parser, required)
    track_given(parser)
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
        if tp is bool:  # with a --config file, --no-flag too (to override the file's true)
            replayed = config_file and f.name not in NOT_REPLAYED
            kw["action"] = _BooleanOptional if default or replayed else "store_true"
            kw["default"] = default
        elif typing.get_origin(tp) is list:
            kw.update(action="append", default=list(default or []), metavar=f.metadata.get("metavar", "VALUE"))
        elif typing.get_origin(tp) is tuple:
            kw.update(type=_int_tuple, default=default, metavar=f.metadata.get("metavar", "N,N,..."))
        else:
            kw.update(type=tp, default=default, metavar=f.metadata.get("metavar", tp.__name__.upper()))
        if f.name in required and config_file:
            kw["help"] = f"{help_text} (required, here or in --config FILE)"
        elif f.name in required:
            kw["required"] = True
            kw.pop("default", None)
        elif tp is not bool and kw.get("default") is not None and "%(default)" not in help_text:
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            kw["help"] = f"{help_text} (default: {shown})".strip()
        elif optional and tp is not bool and not default and help_text and "default" not in help_text:
            kw["help"] = f"{help_text} (default: off)"
        parser.add_argument(flag, **kw)


def config_from_args(cls: type, args: argparse.Namespace, stage: str | None = None) -> Any:
    """Build `cls` from the namespace produced by a parser made with `add_config_args` (merged with
    the `--config` file when one was given; `stage` is the run kind the file must come from)."""
    names = [f.name for f in dataclasses.fields(cls)]
    values = {n: getattr(args, n) for n in names if hasattr(args, n)}
    return build_config(cls, replay_values(cls, values, args, stage=stage))


# ------------------------------------------------------------------------------- --config FILE
def _mark(namespace: argparse.Namespace, dest: str) -> None:
    setattr(namespace, GIVEN, set(getattr(namespace, GIVEN, ())) | {dest})


class _Store(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        _mark(namespace, self.dest)


class _StoreTrue(argparse.Action):
    def __init__(self, option_strings, dest, default=False, required=False, help=None):
        super().__init__(option_strings, dest, nargs=0, const=True, default=default, required=required, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True)
        _mark(namespace, self.dest)


class _Append(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, list(getattr(namespace, self.dest, None) or []) + [values])
        _mark(namespace, self.dest)


class _BooleanOptional(argparse.BooleanOptionalAction):
    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _mark(namespace, self.dest)


def track_given(parser: argparse.ArgumentParser) -> None:
    """Make the plain, `store_true` and `append` options added to `parser` from now on record that they
    were given (in the namespace's `GIVEN` set)."""
    for name, action in ((None, _Store), ("store", _Store), ("store_true", _StoreTrue), ("append", _Append)):
        parser.register("action", name, action)


def add_config_file_option(parser: argparse.ArgumentParser, required: tuple[str, ...] = ()) -> None:
    """`--config FILE` (see the module docstring); `required`: dests needed from the command line or
    the file (checked by `replay_values`)."""
    track_given(parser)
    parser.add_argument("--config", dest=CONFIG_DEST, metavar="FILE",
                        help="replay a run: every option (but --resume) from this JSON file, e.g. a run "
                             "directory's run_config.json; options given here override the file")
    parser.set_defaults(**{REQUIRED_DEST: tuple(required)})


KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _check_value(where: str, name: str, tp: Any, v: Any) -> Any:
    """`v` (from JSON) as a value of annotation `tp`; a mismatch names the file and the field."""
    base, optional = _base_type(tp)
    origin, args = typing.get_origin(base), typing.get_args(base)

    def bad(kind: str) -> ConfigError:
        return ConfigError(f"{where}: field {name!r} must be {kind}{' or null' if optional else ''}, got {v!r}")

    def fits(t: Any, x: Any) -> bool:
        if t is bool:
            return isinstance(x, bool)
        if t is int:
            return isinstance(x, int) and not isinstance(x, bool)
        if t is float:
            return isinstance(x, (int, float)) and not isinstance(x, bool)
        return isinstance(x, t)

    if origin in (tuple, list):
        elem = args[0]
        if v is None and optional:
            return None
        if not isinstance(v, list) or not all(fits(elem, x) for x in v):
            raise bad(f"a list of {elem.__name__} values")
        return tuple(v) if origin is tuple else list(v)
    if v is None and optional:
        return None
    if v is None or not fits(base, v):
        raise bad(KINDS.get(base, f"a {getattr(base, '__name__', base)}"))
    return float(v) if base is float else v


def read_config_file(path: str | Path, cls: type, stage: str | None = None) -> dict[str, Any]:
    """The fields of `cls` stored in a config file (see the module docstring), type-checked."""
    p = Path(path)
    where = f"--config {p}"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: not a JSON file ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]  # a results file that records its config
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object of {cls.__name__} fields, got {type(data).__name__}")
    data = dict(data)
    saved_stage = data.pop("stage", None)
    if stage is not None and saved_stage is not None and saved_stage != stage:
        raise ConfigError(f"{where}: field 'stage' is {saved_stage!r}: the config of a {saved_stage} run, "
                          f"not of `looplm {stage}`")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(hints) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}: {cls.__name__} has no "
                          f"such field")
    return {k: _check_value(where, k, hints[k], v) for k, v in data.items() if k not in NOT_REPLAYED}


def replay_values(cls: type, values: dict[str, Any], args: argparse.Namespace, stage: str | None = None,
                  dest_of: dict[str, str] | None = None) -> dict[str, Any]:
    """`values` (config field -> value parsed from the command line) with the `--config` file's value
    for every field whose option was not given; `dest_of` maps a field to its option's dest where the
    two differ. Raises ConfigError for a required option found in neither."""
    dest_of = dest_of or {}
    path = getattr(args, CONFIG_DEST, None)
    out = dict(values)
    if path:
        given = getattr(args, GIVEN, set())
        saved = read_config_file(path, cls, stage)
        taken = {k for k in saved if dest_of.get(k, k) not in given}
        out.update({k: saved[k] for k in taken})
        out[FROM_FILE] = (str(path), taken)
    missing = [d for d in getattr(args, REQUIRED_DEST, ()) if out.get(d) in (None, "")]
    if missing:
        raise ConfigError(f"missing option(s) {', '.join(_flag(m) for m in missing)}: give them on the command "
                          f"line or in the --config file")
    return out


def build_config(cls: type, values: dict[str, Any]) -> Any:
    """`cls(**values)`; a validation error about a field taken from the --config file says so."""
    values = dict(values)
    path, from_file = values.pop(FROM_FILE, (None, set()))
    try:
        return cls(**values)
    except ConfigError as e:
        named = [k for k in from_file if f"{cls.__name__}.{k}=" in str(e)]
        if named:
            raise ConfigError(f"{e} [{named[0]} from --config {path}]") from None
        raise


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


def validate_run(cfg: Any) -> None:
    """Checks of the fields every stage shares (`loop_config.RunConfig`)."""
    need_str(cfg, "out")
    for name in ("steps", "keep", "max_bad_steps", "log_every"):
        need_int(cfg, name, 1)
    for name in ("warmup", "eval_every", "save_every", "seed"):
        need_int(cfg, name, 0)
    need_int(cfg, "threads", 0, optional=True)
    need_float(cfg, "lr", 0.0, lo_open=True)
    need_float(cfg, "min_lr_ratio", 0.0, 1.0)
    need_float(cfg, "weight_decay", 0.0)
    need_float(cfg, "beta1", 0.0, 1.0)
    need_float(cfg, "beta2", 0.0, 1.0)
    need_float(cfg, "grad_clip", 0.0)
    need_float(cfg, "max_minutes", 0.0, lo_open=True, optional=True)
    need_choice(cfg, "device", ("auto", "cpu", "cuda"))


def validate_stage(cfg: Any) -> None:
    """Checks shared by the language-modelling configs (pretrain, SFT: `loop_config.LoopConfig`)."""
    validate_run(cfg)
    need_str(cfg, "init", optional=True)
    for name in ("batch_size", "seq_len", "grad_accum", "bptt_steps", "eval_batches"):
        need_int(cfg, name, 1)
    need_int(cfg, "fixed_depth", 1, optional=True)
    need_int(cfg, "min_depth", 1)
    need_float(cfg, "mean_steps", 0.0, lo_open=True, optional=True)
    need_float(cfg, "depth_sigma", 0.0)
    need_float(cfg, "deep_fraction", 0.0, 1.0)
    need_float(cfg, "exit_share", 0.0, 1.0)
    need_float(cfg, "peak_flops", 0.0, lo_open=True, optional=True)
    need_ints(cfg, "eval_depths", 1)
