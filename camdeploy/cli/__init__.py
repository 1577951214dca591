"""The ``camdeploy`` command line: argument parsing and calls into the library, one module per
command. Heavy modules are imported inside each command, so that ``--help`` and the runtime
commands never import torch.

Exit status: 0 done; 1 an error (one line on stderr, no traceback); 2 bad arguments; 3 ``run``
finished but left some inputs out (see ``failures.jsonl``; ``--allow-partial`` makes it 0); 130
interrupted (Ctrl-C or SIGTERM); 141 the reader of the output went away (``camdeploy ... | head``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from camdeploy.errors import CamdeployError

if TYPE_CHECKING:
    import argparse

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE, as a shell reports a command whose output pipe closed."""


def build_parser() -> argparse.ArgumentParser:
    # The command modules are imported here, not when this package is: the entry point imports it
    # first, and Ctrl-C during those imports must end as an interruption, not a traceback.
    import argparse

    import camdeploy
    from camdeploy.cli import bench, calibrate, demo, evaluate, export, info, run, serve, tensorrt, triton, units

    parser = argparse.ArgumentParser(
        prog="camdeploy",
        description="Deploy GAP CNN classifiers with class activation maps and boxes computed in the exported graph.",
        epilog="exit status: 0 done, 1 error, 2 bad arguments, 3 run left some inputs out, 130 interrupted, "
               "141 output pipe closed")
    parser.add_argument("--version", action="version", version=f"camdeploy {camdeploy.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (export, run, serve, info, demo, evaluate, bench, calibrate, tensorrt, triton, units):
        command.add_parsers(sub)
    return parser


@contextlib.contextmanager
def interrupt_after() -> Iterator[None]:
    """Ctrl-C during the block takes effect at its end (KeyboardInterrupt then): for imports of
    compiled modules, some of which end the process when interrupted while they load (onnx's
    nanobind module calls terminate()). Outside the main thread the block runs as it is."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def _preload(command: str | None) -> None:
    """Import what ``command`` will need from compiled libraries now, where Ctrl-C waits for them."""
    if command in ("run", "info", "eval", "bench", "calibrate", "convert", "serve", "triton", "check", "build",
                   "units"):
        import cv2  # noqa: F401
        import onnx  # noqa: F401

        with contextlib.suppress(ImportError):  # a missing runtime is the command's to report
            import onnxruntime  # noqa: F401


def main(argv: Sequence[str] | None = None) -> int:
    name = "camdeploy"
    try:
        with interrupt_after():
            args = build_parser().parse_args(argv)
            _preload(args.command)
        name = f"camdeploy {args.command}"
        return int(args.func(args))
    except CamdeployError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of our output went away (`camdeploy ... | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the flush at exit does not fail again
        return EXIT_BROKEN_PIPE
