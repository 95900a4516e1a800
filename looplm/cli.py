"""The `looplm` command line: a table of subcommands, each implemented in its own module.

`COMMANDS` maps a subcommand name to the module that implements it. Each module exposes
`add_parser(subparsers)`, which creates the subparser (with its `--help`) and calls
`parser.set_defaults(func=main)` where `main(args) -> int`.

Modules are imported lazily: `looplm NAME ...` imports only NAME's module; `looplm --help` (or an
unknown name) imports them all to list them. A module that fails to import is still listed, with
the import error as its help, and running it reports that error.

Errors: a user error (ValueError, incl. ConfigError; CheckpointError; DataSourceError; a missing
file) prints `error: <message>` to stderr and exits 2, without a traceback unless LOOPLM_DEBUG=1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterable, Sequence

from looplm import __version__

COMMANDS: dict[str, str] = {
    "reproduce": "looplm.reproduce",
    "info": "looplm.commands.info",
    "init": "looplm.commands.init",
    "generate": "looplm.commands.generate_cmd",
    "chat": "looplm.commands.chat",
    "data": "looplm.data.cli",
    "pretrain": "looplm.train.pretrain",
    "sft": "looplm.train.sft",
    "plot": "looplm.plot",
    "calibrate-halt": "looplm.calibrate.halt_cmd",
    "train-spec": "looplm.calibrate.spec_cmd",
    "audit": "looplm.audit.cli",
    "grpo": "looplm.train.grpo",
    "eval": "looplm.evaluate.cli",
    "export-hf": "looplm.commands.export_hf",
}

USER_ERROR_NAMES = ("CheckpointError", "DataSourceError", "ConfigError")


def build_parser(names: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser with the subcommands in `names` (default: all) registered."""
    parser = argparse.ArgumentParser(
        prog="looplm",
        description="Train, align, speed up, audit and evaluate small recursive (depth-looped) causal LMs.",
        epilog="Run `looplm COMMAND --help` for a command's options. LOOPLM_DEBUG=1 shows tracebacks.",
    )
    parser.add_argument("--version", action="version", version=f"looplm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in COMMANDS if names is None else names:
        _register(subparsers, name)
    return parser


def _register(subparsers: argparse._SubParsersAction, name: str) -> None:
    try:
        module = importlib.import_module(COMMANDS[name])
    except ImportError as e:
        err = e
        broken = subparsers.add_parser(name, help=f"(unavailable: {e})")
        broken.set_defaults(func=lambda args: _raise(err))
        return
    module.add_parser(subparsers)
    if name not in subparsers.choices:
        raise RuntimeError(f"{COMMANDS[name]}.add_parser did not register the subcommand {name!r}")


def _raise(err: BaseException) -> int:
    raise err


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: sys.argv[1:]), run the chosen subcommand, return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser([chosen] if chosen in COMMANDS else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0) and usage errors (2): return instead of exiting
        return e.code if isinstance(e.code, int) else 2
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - user errors become one line, others keep their traceback
        if os.environ.get("LOOPLM_DEBUG") == "1" or not is_user_error(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


def is_user_error(e: BaseException) -> bool:
    """Errors caused by the user's input (bad option, config, file), reported without a traceback."""
    if isinstance(e, (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return True
    return any(cls.__name__ in USER_ERROR_NAMES for cls in type(e).__mro__)


if __name__ == "__main__":
    sys.exit(main())
