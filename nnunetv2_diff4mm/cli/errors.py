"""One error path for every ``diff4mm_*`` command: a failure is one line on stderr and exit code 1, never a
traceback (issue #18, "nothing silently wrong").

    @reported_errors(PROG)
    def main(argv=None) -> int: ...

The library raises its own error types (DatasetError, BundleError, InpaintingError, InputError, SplitError, ...,
all ValueError subclasses) with messages of the form ``<file>: <what is wrong>; <fix>``; the wrapper prints
``PROG: error: <first line of the message>``. Anything else that escapes (a bug, or a library error nobody
anticipated) is reported the same way, with its type and a hint, still as one line and exit 1. ``--debug`` on
the command line (every command accepts it, see ``add_common_arguments``) or ``DIFF4MM_DEBUG=1`` re-raises
instead, so the full traceback is there when someone needs it. Ctrl-C exits 130 with one line.

``add_common_arguments`` gives every parser the flags all commands share: ``--debug`` and ``--version``
(``PROG VERSION``, from the installed package's metadata, else setup.py's ``version=``) (issue #19).
"""
from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence

DEBUG_ENV = "DIFF4MM_DEBUG"
DEBUG_FLAG = "--debug"
# what the library raises for bad input (its own error types are subclasses of these): reported as is
EXPECTED = (ValueError, OSError, RuntimeError)


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help=f"on an error, show the full Python traceback instead of one line (also "
                             f"{DEBUG_ENV}=1)")


DISTRIBUTION = "nnunetv2-diff4mm"
DEVICE_FLAGS = ("-device", "--device")  # nnU-Net's spelling first; --device kept for existing scripts


def package_version() -> str:
    """The installed distribution's version (importlib.metadata); from a source tree that was never installed,
    the ``version="..."`` in setup.py; "unknown" if neither is there."""
    from importlib import metadata
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pass
    setup_py = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "setup.py")
    try:
        with open(setup_py, encoding="utf-8") as handle:
            found = re.search(r"""\bversion\s*=\s*["']([^"']+)["']""", handle.read())
    except OSError:
        found = None
    return found.group(1) if found else "unknown"


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"{parser.prog} {package_version()}",
                        help="print the command's name and the package version, then exit")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every ``diff4mm_*`` command takes: ``--debug`` and ``--version``."""
    add_debug_argument(parser)
    add_version_argument(parser)


def add_device_argument(parser: argparse.ArgumentParser, choices: Sequence[str] = ("cpu", "cuda", "auto"),
                        default: str | None = "auto", help: str | None = None) -> None:
    """``-device`` as in nnU-Net, ``--device`` accepted as well (same dest)."""
    text = help if help is not None else f"default: {default}"
    parser.add_argument(*DEVICE_FLAGS, dest="device", choices=tuple(choices), default=default,
                        help=f"{text} (-device as in nnU-Net; --device also accepted)")


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    args = sys.argv[1:] if argv is None else list(argv)
    return DEBUG_FLAG in args or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def error_line(err: BaseException, expected: tuple[type, ...] = EXPECTED) -> str:
    """The first non-empty line of an exception's message; unexpected types are named, with a hint."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    first = lines[0].strip() if lines else ""
    if isinstance(err, OSError) and getattr(err, "filename", None) and str(err.filename) not in first:
        first = f"{err.filename}: {first}"
    if isinstance(err, expected) and first:
        return first
    what = f"{type(err).__name__}: {first}" if first else type(err).__name__
    return f"unexpected {what}; rerun with {DEBUG_FLAG} (or {DEBUG_ENV}=1) for the traceback and report it"


def report(prog: str, err: BaseException, expected: tuple[type, ...] = EXPECTED) -> None:
    print(f"{prog}: error: {error_line(err, expected)}", file=sys.stderr, flush=True)


def reported_errors(prog: str, exit_codes: Mapping[type, int] | None = None
                    ) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a command's ``main(argv=None) -> int``: exceptions become one stderr line and exit code 1 (or
    ``exit_codes[type]`` for the first listed type the exception is an instance of). argparse's own exits
    (``SystemExit``, code 2 for usage errors) pass through."""
    codes = dict(exit_codes or {})

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapped(argv: Sequence[str] | None = None) -> int:
            debug = debug_requested(argv)
            try:
                return main(argv)
            except KeyboardInterrupt:
                if debug:
                    raise
                print(f"{prog}: interrupted; re-run the same command to resume", file=sys.stderr, flush=True)
                return 130
            except Exception as err:  # noqa: BLE001 - the one place where everything becomes one line
                if debug:
                    raise
                report(prog, err, EXPECTED + tuple(codes))
                return next((code for kind, code in codes.items() if isinstance(err, kind)), 1)

        return wrapped

    return decorate
