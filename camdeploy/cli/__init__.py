"""The ``camdeploy`` command line: argument parsing and calls into the library, one module per
command. Heavy modules are imported inside each command, so that ``--help`` and the runtime
commands never import torch.

Exit status: 0 done; 1 an error (one line on stderr, no traceback); 2 bad arguments; 3 ``run``
finished but left some inputs out (see ``failures.jsonl``; ``--allow-partial`` makes it 0); 130
interrupted (Ctrl-C or SIGTERM); 141 the reader of the output went away (``camdeploy ... | head``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import camdeploy
from camdeploy.cli import bench, calibrate, demo, evaluate, export, info, run, serve, tensorrt, triton, units
from camdeploy.errors import CamdeployError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE, as a shell reports a command whose output pipe closed."""
COMMANDS = (export, run, serve, info, demo, evaluate, bench, calibrate, tensorrt, triton, units)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="camdeploy",
        description="Deploy GAP CNN classifiers with class activation maps and boxes computed in the exported graph.",
        epilog="exit status: 0 done, 1 error, 2 bad arguments, 3 run left some inputs out, 130 interrupted, "
               "141 output pipe closed")
    parser.add_argument("--version", action="version", version=f"camdeploy {camdeploy.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CamdeployError as exc:
        print(f"camdeploy {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"camdeploy {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of our output went away (`camdeploy ... | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the flush at exit does not fail again
        return EXIT_BROKEN_PIPE
