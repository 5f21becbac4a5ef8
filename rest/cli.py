"""The `rest` console command: one entry point, one module per subcommand in `rest/commands/`."""

from __future__ import annotations

import argparse
import importlib
import sys

from rest.errors import RestError

# Each module defines `register(subparsers)`, which adds its parser and sets `func` to a callable(args) -> int.
COMMANDS = [
    "rest.commands.bench",
    "rest.commands.evaluate",
    "rest.commands.export_pipeline",
    "rest.commands.generate",
    "rest.commands.preprocess",
    "rest.commands.serve",
    "rest.commands.synth",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rest", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
