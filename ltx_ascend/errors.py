"""Whose fault an error is: bad input (one line naming the problem and the fix, exit 2, no
traceback) or a bug of ours (exit 1, the traceback kept so it can be reported)."""

from __future__ import annotations

import argparse
import functools
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn, TypeVar

EXIT_USAGE = 2
EXIT_INTERNAL = 1

F = TypeVar("F", bound=Callable[..., int | None])


class UserError(Exception):
    """Bad input the user can fix. The message is printed alone, so it must say what to do."""


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors as one `error:` line naming the fix, not a usage block.

    Subparsers made by `add_subparsers` inherit the class, so `ltx-run NOPE` and
    `ltx-run X --num-frames abc` both answer in one line (exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def cli_entry(fn: F) -> F:
    """Wrap a console-script main: library log records become console lines; UserError becomes
    `error: ...` on stderr and exit 2; any other exception is an internal error: its traceback, one
    line saying it is a bug, exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ltx_ascend.console import to_console

        to_console()
        try:
            code = fn(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        except Exception as exc:  # a bug of ours, not bad input: keep the traceback
            traceback.print_exc()
            print(
                f"internal error: {type(exc).__name__} (a bug in ltx-ascend, not in your input): "
                "please report it with the traceback above",
                file=sys.stderr,
            )
            raise SystemExit(EXIT_INTERNAL) from None
        return 0 if code is None else code

    return wrapper  # type: ignore[return-value]


class Cancelled(Exception):
    """A generation stopped between sampling steps because its `cancelled()` check returned True.
    Not an error of the input or of ours: the engine that raised it stays usable."""
