"""Command line: `python -m engine
info|convert|detect|dump|quantize|compare|report|export|explain|montecarlo|worst-images ...`
(a contract other tools rely on). This module assembles the parser from one module per
subcommand family and dispatches; shared options live in engine/cli/options.py."""
from __future__ import annotations

import argparse
import errno
import functools
import io
import os
import sys
import warnings
from typing import Sequence

from engine.cli.batch import add_montecarlo_parser, add_worst_parser
from engine.cli.detect import add_detect_parser
from engine.cli.explain import add_explain_parser
from engine.cli.export import add_export_parser
from engine.cli.info import add_convert_parser, add_dump_parser, add_info_parser
from engine.cli.quantize import add_compare_parser, add_quantize_parser
from engine.cli.report import add_report_parser
from engine.errors import EngineError, EngineWarning


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine", description="Darknet models in NumPy")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (add_info_parser, add_convert_parser, add_detect_parser, add_dump_parser, add_quantize_parser,
                add_compare_parser, add_report_parser, add_export_parser, add_explain_parser, add_montecarlo_parser,
                add_worst_parser):
        add(sub)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None, *, others):
    """The engine's own warnings as one `warning:` line (no source line); the rest as before (`others`)."""
    if issubclass(category, EngineWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        others(message, category, filename, lineno, file, line)


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """parse_args, but an argument no option takes is refused by the subcommand's parser: its usage and
    "python -m engine compare: error: unrecognized arguments: kl" (exit 2), not the top-level usage with
    "..." that argparse prints (it only knows the extra arguments once the subcommand has parsed)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    closed = _stand_in_for_closed_streams("stderr")
    try:
        args = parse(build_parser(), argv)   # -h with stdout closed: argparse prints the help to stderr
        closed.update(_stand_in_for_closed_streams("stdout"))
        with warnings.catch_warnings():      # restores the caller's showwarning (main is called in-process too)
            warnings.showwarning = functools.partial(_show_warning, others=warnings.showwarning)
            return _run(args)
    finally:
        for name, stand_in in closed.items():
            if getattr(sys, name) is stand_in:
                setattr(sys, name, None)


class _ClosedStream(io.TextIOBase):
    """A standard stream the shell closed (`cmd >&-`, `2>&-`), which Python leaves as None: a result printed
    to it vanished, an error line went to stdout, and tqdm and our final flush raised AttributeError (a
    traceback and exit 1 after `quantize` had written its file). Closed stdout refuses what a command prints
    (its result is lost: one error, exit 2); closed stderr discards what is written (diagnostics have nowhere
    to go; the exit code still tells)."""

    def __init__(self, refuse: bool) -> None:
        super().__init__()
        self.refuse = refuse

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self.refuse and text:
            raise OSError(errno.EBADF, "standard output is closed, so the result cannot be printed (redirect it to "
                                       "a file, or to /dev/null to discard it)")
        return len(text)


def _stand_in_for_closed_streams(name: str) -> dict[str, _ClosedStream]:
    closed = {name: _ClosedStream(refuse=name == "stdout")} if getattr(sys, name) is None else {}
    for name, stand_in in closed.items():
        setattr(sys, name, stand_in)
    return closed


class _NamedStdout:
    """stdout whose OS errors say it was stdout: `--json > /dev/full` printed "error: No space left on device",
    as if a file the command writes had failed (those errors name their file). Else the stream itself."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def __getattr__(self, name: str):
        return getattr(self._stream, name)

    def _named(self, call, *args):
        try:
            return call(*args)
        except BrokenPipeError:     # the reader left: _run stops quietly
            raise
        except OSError as err:
            err.filename = err.filename or "writing the output to stdout"
            raise

    def write(self, text: str) -> int:
        return self._named(self._stream.write, text)

    def flush(self) -> None:
        self._named(self._stream.flush)


def _run(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "size", None) is not None:
            # every subcommand's --size ends in parse_size, deep in the model loaders, whose errors say "size"
            from engine.darknet.cfg import parse_size
            parse_size(args.size, name="--size")
        stdout = sys.stdout
        if not isinstance(stdout, _ClosedStream):       # whose own error already says it is stdout
            sys.stdout = _NamedStdout(stdout)
        try:
            code = args.func(args)
            sys.stdout.flush()   # a closed pipe shows here, not in the interpreter's exit flush
        finally:
            if isinstance(sys.stdout, _NamedStdout):
                sys.stdout = stdout
        return code
    except (EngineError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... --json | head`: the reader left; stop quietly, as other Unix tools do
        _silence_stdout()
        return 141           # 128 + SIGPIPE, the shell's status for a tool killed by the closed pipe
    except OSError as err:   # a file the OS refused (permissions, disk full): one line, no traceback
        print(f"error: {err.filename or ''}{': ' if err.filename else ''}{err.strerror or err}", file=sys.stderr)
        return 2
    except MemoryError:      # a size/model this machine cannot hold: one line, no traceback
        print(f"error: {args.command}: out of memory (a smaller --size, a smaller model or more RAM is needed)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush of what is still buffered for the
    closed pipe does not print 'Exception ignored ... BrokenPipeError' after we return."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):    # stdout replaced by an object without a descriptor (in-process callers)
        pass
