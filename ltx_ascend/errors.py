"""Whose fault an error is: bad input (one line naming the problem and the fix, exit 2, no
traceback) or a bug of ours (exit 1, the traceback kept so it can be reported)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import NoReturn, TypeVar

EXIT_USAGE = 2
EXIT_INTERNAL = 1
EXIT_ENVIRONMENT = 1  # a full disk: the same command works once there is room (docs/design/bad-input.md)
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143, as a shell reports a process ended by SIGTERM
EXIT_SIGINT = 130

F = TypeVar("F", bound=Callable[..., int | None])


class UserError(Exception):
    """Bad input the user can fix. The message is printed alone, so it must say what to do."""


class DiskFull(Exception):
    """The disk filled while we wrote (ENOSPC / EDQUOT): the environment, neither bad input nor a bug.

    One line naming the folder and the bytes it needs; exit 1 without a traceback (HTTP: 507)."""

    def __init__(self, folder: str | os.PathLike[str], needed: int | None = None, what: str = "writing") -> None:
        self.folder, self.needed = os.fspath(folder), needed
        free = None
        with contextlib.suppress(OSError):
            import shutil

            free = shutil.disk_usage(self.folder).free
        need = f"needs more than {_bytes(needed)}" if needed else "needs more room"
        have = f", {_bytes(free)} free" if free is not None else ""
        super().__init__(
            f"no space left on device in {self.folder}: {what} {need}{have}; free space there (or pass another "
            "output folder) and run the command again"
        )


def _bytes(n: int) -> str:
    return f"{n} bytes ({n / 2**20:.1f} MiB)" if n >= 2**20 else f"{n} bytes"


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "os error 28")


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, whether raised as OSError or by a library that wraps it in its own type and
    message (safetensors' SafetensorError: "No space left on device (os error 28)")."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    return any(text in str(exc) for text in _DISK_FULL_TEXT)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt for SIGINT: every `finally` (temporary
    outputs, `.partial` builds) runs before the process exits 143."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (a test, an embedding): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors as one `error:` line naming the fix, not a usage block.

    Subparsers made by `add_subparsers` inherit the class, so `ltx-run NOPE` and
    `ltx-run X --num-frames abc` both answer in one line (exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def cli_entry(fn: F) -> F:
    """Wrap a console-script main: library log records become console lines; UserError becomes
    `error: ...` on stderr and exit 2; a full disk is one `error:` line, exit 1 (the environment: no
    traceback); SIGINT and SIGTERM clean up temporary outputs and exit 130 / 143; any other exception
    is an internal error: its traceback, one line saying it is a bug, exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ltx_ascend.console import to_console

        to_console()
        try:
            with _sigterm_raises():
                code = fn(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None
        except DiskFull as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_ENVIRONMENT) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(EXIT_SIGINT) from None
        except Terminated:
            print("terminated (SIGTERM): temporary outputs removed", file=sys.stderr)
            raise SystemExit(EXIT_SIGTERM) from None
        except Exception as exc:
            if is_disk_full(exc):  # a write we did not wrap: name its folder at least
                where = getattr(exc, "filename", None)
                print(f"error: {DiskFull(os.path.dirname(where) if where else os.getcwd())}", file=sys.stderr)
                raise SystemExit(EXIT_ENVIRONMENT) from None
            # a bug of ours, not bad input: keep the traceback
            traceback.print_exc()
            detail = str(exc).splitlines()[0] if str(exc) else ""
            print(
                f"internal error: {type(exc).__name__}{': ' + detail if detail else ''} "
                "(a bug in ltx-ascend, not in your input): "
                "please report it with the traceback above",
                file=sys.stderr,
            )
            raise SystemExit(EXIT_INTERNAL) from None
        return 0 if code is None else code

    return wrapper  # type: ignore[return-value]


class Cancelled(Exception):
    """A generation stopped between sampling steps because its `cancelled()` check returned True.
    Not an error of the input or of ours: the engine that raised it stays usable."""
