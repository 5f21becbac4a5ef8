"""The `rest` console command: one entry point, one module per subcommand in `rest/commands/`."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading

from rest.errors import RestError

# Each module defines `register(subparsers)`, which adds its parser and sets `func` to a callable(args) -> int.
COMMANDS = [
    "rest.commands.animate",
    "rest.commands.avatar",
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


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (`kill`, `docker stop`, a CI timeout, a closed terminal), raised in the main thread like
    Ctrl-C's KeyboardInterrupt, so that the same cleanup runs: no partial or temporary file is left behind."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _terminate_like_ctrl_c():
    """While the block runs, SIGTERM and SIGHUP raise `Terminated`; a second one during the cleanup is ignored, so
    the cleanup finishes (SIGKILL still ends the process). Outside the main thread signals cannot be caught: no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = ("SIGTERM", "SIGHUP")  # Windows has no SIGHUP
    signums = [getattr(signal, name) for name in names if hasattr(signal, name)]

    def terminate(signum, frame):
        for s in signums:
            signal.signal(s, signal.SIG_IGN)
        raise Terminated(signum)

    previous = {s: signal.signal(s, terminate) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: a handler set outside Python


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _terminate_like_ctrl_c():
            return int(args.func(args) or 0)
    except Terminated as err:
        print(f"terminated ({err})", file=sys.stderr)
        return 128 + err.signum  # the shell's code for a process ended by that signal
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
