"""Shared fixtures: one tiny checkpoint set per test session (built in about a second)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ltx_ascend.checkpoints.tiny import TinySet, write_tiny_set
from ltx_ascend.console import to_console


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinySet:
    return write_tiny_set(tmp_path_factory.mktemp("tiny") / "set", seed=0)


@pytest.fixture(scope="session", autouse=True)
def _library_messages_on_the_console() -> None:
    """As under every CLI: `ltx_ascend` log records print as console lines (tests read them with capsys)."""
    to_console()


@pytest.fixture(autouse=True)
def _deterministic():
    """Every test starts from one seed and leaves torch's thread count as it found it: a CLI run in-process
    with --threads (or a test acting as one rank) must not change the kernels, and so the rounding, of
    the tests after it (the tiny set built twice must be byte-identical)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run_cli(main, argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Call a console-script main in-process; return (exit code, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


__all__ = ["Path", "run_cli"]


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server for the session (tests/pg_server.py: initdb in a temp folder, 127.0.0.1 and a free
    port), stopped and removed at the end. Skips where PostgreSQL is not installed, unless LTX_REQUIRE_POSTGRES=1
    (CI), where that is a failure."""
    import os

    from tests.pg_server import PgServer, missing_reason

    reason = missing_reason()
    if reason:
        if os.environ.get("LTX_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"LTX_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    server = PgServer.start_new()
    yield server
    server.close()


@pytest.fixture
def postgres_url(pg_server) -> str:
    """A fresh, empty database on the session's server: "postgresql://postgres@127.0.0.1:PORT/t_<hex>"."""
    return pg_server.create_database()
