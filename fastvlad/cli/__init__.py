"""The ``fastvlad`` command line: demo, train, predict, evaluate, encode, bench, explain, models, info.

One module per command family (``model``: train, predict, encode; ``evaluate``; ``demo``;
``models``; ``info``; ``bench``; ``explain``) and their shared options (``options``). This module
holds the app, the global options and ``main`` (error messages, exit codes, SIGTERM) and
registers the commands.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, Optional

import typer

from .. import progress
from ..errors import FastVLADError, printable
from . import bench, demo, evaluate, explain, info, model, models

# rich_markup_mode=None: help texts are plain text, so "fastvlad[dask]" is not eaten as a markup tag.
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="VLAD codes of CNN hypercolumns for microscopy image classification.")
app.add_typer(models.models_app, name="models")
log = logging.getLogger("fastvlad")
_VERBOSE = False


def _version(value: bool) -> None:
    if value:
        from .._version import __version__

        typer.echo(f"fastvlad {__version__}")
        raise typer.Exit()


@app.callback()
def _global(quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or notices."),
            verbose: bool = typer.Option(False, "--verbose", "-v", help="fastvlad's debug lines and tracebacks."),
            show_progress: Optional[bool] = typer.Option(
                None, "--progress/--no-progress",
                help="Show progress (default: yes unless -q): bars on a terminal, plain lines otherwise (batch jobs)."),
            version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                         help="Print the version and exit.")) -> None:
    global _VERBOSE
    _VERBOSE = verbose
    progress.ENABLED = show_progress if show_progress is not None else (False if quiet else None)
    progress.MODE = "bar"  # the command line: bars on a terminal, plain lines in a log file
    # Other libraries stay at WARNING: -v is for fastvlad's own debug lines, not, say, Pillow's
    # chunk-by-chunk PNG parsing. A record of the fastvlad logger reaches the root handler
    # whatever the root's level (propagation checks handlers, not ancestor levels).
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=logging.WARNING)
    log.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


# The commands, in the order `fastvlad --help` lists them.
app.command()(model.train)
app.command()(model.predict)
app.command()(evaluate.evaluate)
app.command()(model.encode)
app.command()(demo.demo)
app.command()(info.info)
app.command("bench")(bench.bench_command)
app.command("explain")(explain.explain_command)


def one_line(text: str) -> str:
    """A message for the terminal: control characters escaped but the newlines of a deliberate list."""
    return printable(text, keep="\n")


def shown_path(name: object) -> str:
    """A path for a message, its middle cut when it runs past 120 characters."""
    text = os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else str(name)
    return text if len(text) <= 120 else f"{text[:60]}…{text[-40:]} ({len(text)} characters)"


def empty_argument(args: Sequence[str]) -> str | None:
    """Which command-line argument is empty, in words, or None. Click reads an empty path as the
    current folder: ``fastvlad train "$DATA"`` with DATA unset had trained on whatever was there."""
    for i, arg in enumerate(args):
        if arg.startswith("--") and arg.endswith("=") and len(arg) > 3:
            return f"the value of {arg[:-1]}"
        if arg == "":
            return f"the value of {args[i - 1]}" if i and args[i - 1].startswith("-") else f"argument {i + 1}"
    return None


def offers_on_error(args: Sequence[str]) -> bool:
    """Whether the command ``args`` name (``models quantize`` has none) takes ``--on-error``: the hint
    to skip unreadable images is given only where it can be followed."""
    command: Any = typer.main.get_command(app)
    for arg in args:
        if arg.startswith("-"):  # the global options take no value
            continue
        command = getattr(command, "commands", {}).get(arg)
        if command is None or not hasattr(command, "commands"):
            break
    return command is not None and any(p.name == "on_error" for p in command.params)


def _stop(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM (kill, a job scheduler): one line for the log, which had ended at the last
    progress line (Click handles Ctrl-C before ``main`` sees it), then unwind, so that atomic writes
    remove their temp files."""
    import signal

    interrupted = signum == signal.SIGINT
    sys.stderr.write(f"{'interrupted' if interrupted else 'terminated'}: stopped; nothing more is written, and "
                     "files from earlier runs are as they were\n")
    sys.stderr.flush()
    if interrupted:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def main() -> None:
    """Entry point: an error prints one message and exits non-zero (traceback with --verbose).

    Exit codes: 2 bad input (FastVLADError) or usage, 1 other failures, 130 Ctrl-C, 143 SIGTERM.
    """
    import signal

    from ..errors import ImageReadError

    empty = empty_argument(sys.argv[1:])
    if empty:
        typer.echo(f"error: {empty} is empty; give a path or value (is a shell variable unset?)", err=True)
        sys.exit(2)
    previous = signal.signal(signal.SIGTERM, _stop)
    # Ctrl-C only where it interrupts at all (a job started with SIGINT ignored keeps ignoring it).
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, _stop)
    try:
        app()
    except FastVLADError as exc:
        if _VERBOSE:
            raise
        hint = " (to skip unreadable images and report them instead: --on-error skip)" \
            if isinstance(exc, ImageReadError) and "--on-error skip" not in str(exc) \
            and offers_on_error(sys.argv[1:]) else ""
        typer.echo(f"error: {one_line(str(exc))}{hint}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # said by _stop
        sys.exit(130)
    except OSError as exc:
        if _VERBOSE:
            raise
        if exc.errno == errno.ENAMETOOLONG:  # a path given is at fault, not the machine: bad input
            typer.echo(f"error: {one_line(shown_path(exc.filename))}: a name in this path is longer than the file "
                       "system allows; choose a shorter one", err=True)
            sys.exit(2)
        typer.echo(f"error: {one_line(str(exc))}", err=True)
        sys.exit(1)
    except MemoryError:
        if _VERBOSE:
            raise
        typer.echo("error: out of memory; lower --image-size, --density or the batch size", err=True)
        sys.exit(1)
    except Exception as exc:  # a bug: say what, and how to see where
        if _VERBOSE:
            raise
        typer.echo(f"error: unexpected {type(exc).__name__}: {one_line(str(exc))} (run with -v for the traceback, and please "
                   "report it)", err=True)
        sys.exit(1)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if previous_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous_int)
