"""Library messages on the console: library code logs through `logging` (logger `ltx_ascend.*`),
and the CLIs show those records as the plain lines they always printed."""

from __future__ import annotations

import logging
import sys


class ConsoleHandler(logging.Handler):
    """The message alone: warnings and worse on stderr, info on stdout. The streams are looked up per
    record, so a redirected (or test-captured) sys.stdout / sys.stderr receives them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # logging's own policy: a failing handler never breaks the caller
            self.handleError(record)


def to_console() -> None:
    """Route the `ltx_ascend` loggers to the console (what every CLI entry point does); idempotent."""
    logger = logging.getLogger("ltx_ascend")
    if not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        logger.addHandler(ConsoleHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False  # one line per message, also when the application configured the root logger
