"""Command line: ``fastdistill <command>`` (also ``python -m fastdistill.cli``). common.py: the error path
and argument types; commands.py: the commands; parsers.py: their argument parsers."""
from __future__ import annotations

import os

from .common import fail
from .parsers import build_parser

__all__ = ["main", "build_parser"]


def main(argv: list[str] | None = None) -> int:
    """Parse, run the command, and give every error the user caused one path: one line
    ``fastdistill <command>: <message>`` on stderr and exit code 2 (``--debug`` or
    ``FASTDISTILL_DEBUG=1``: the traceback instead). Bugs keep their tracebacks."""
    from ..engine.entry import USER_ERRORS

    args = build_parser().parse_args(argv)
    if getattr(args, "verbose", False):
        from ..teachers.pipelines import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"
    try:
        return args.func(args)
    except USER_ERRORS as exc:  # each command catches these already; this covers a func set elsewhere
        return fail(args.command, exc, args)
