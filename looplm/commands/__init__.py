"""Small CLI commands (`info`, `init`, `generate`) and the option helpers they share.

Each module exposes `add_parser(subparsers)` and `main(args) -> int` (see `looplm.cli`). Modules
keep their top-level imports light (no torch): heavy imports happen inside `main`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """`--preset NAME` plus repeatable `--set FIELD=VALUE` overrides of ModelConfig fields."""
    parser.add_argument("--preset", default="tiny", metavar="NAME",
                        help="model preset: tiny, small or report-200m (default: tiny)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a ModelConfig field, e.g. --set d_model=256 --set core_kv=per_step "
                             "(VALUE is parsed as JSON when it can be, else taken as a string); repeatable")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["d_model=256", "core_kv=per_step"]` -> `{"d_model": 256, "core_kv": "per_step"}`."""
    out: dict[str, Any] = {}
    for item in items:
        field, sep, raw = item.partition("=")
        if not sep or not field:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[field.strip()] = value
    return out


def config_from_args(args: argparse.Namespace, **extra: Any):
    """The preset named by `args.preset` with `--set` overrides and `extra` applied (validated)."""
    from looplm.config import get_preset

    overrides = parse_overrides(args.overrides)
    overrides.update(extra)
    return get_preset(args.preset, **overrides)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))
