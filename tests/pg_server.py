"""A real, throwaway PostgreSQL server for tests: initdb in a temp folder, listening on 127.0.0.1 and a free
port, its unix socket in the same folder; restartable (fault tests) and removed at the end.

`initdb` refuses to run as root, so as root the folder is given to the `postgres` user and the binaries run
through `su postgres`. Use the `pg_server` / `postgres_url` fixtures (tests/conftest.py), or directly:

    with PgServer.start_new() as server:
        url = server.create_database()   # postgresql://postgres@127.0.0.1:PORT/t_<hex>, empty
        server.restart()                 # pg_ctl restart (mode "fast", or "immediate": a crash)
"""

from __future__ import annotations

import os
import pwd
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

# The settings only a throwaway test server may use: no fsync (the OS does not crash under a test; a crash of
# the server itself, `restart("immediate")`, is still recovered from the WAL).
TEST_SETTINGS = "-c fsync=off -c full_page_writes=off -c max_connections=200 -c listen_addresses=127.0.0.1"


def missing_reason() -> str | None:
    """Why no test server can run here (None: it can)."""
    for tool in ("initdb", "pg_ctl"):
        if shutil.which(tool) is None:
            return f"PostgreSQL's `{tool}` is not on PATH (install PostgreSQL 15+ server binaries to run these tests)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run initdb as (initdb refuses root)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'ltx-ascend[fleet]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.port = port
        self.log = root / "server.log"

    # -- running the binaries as the right user ------------------------------------------------------------
    def _sh(self, command: str, *, check: bool = True) -> subprocess.CompletedProcess:
        if os.geteuid() == 0:
            argv = ["su", "postgres", "-s", "/bin/bash", "-c", command]
        else:
            argv = ["/bin/bash", "-c", command]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"`{command}` failed ({done.returncode}): {done.stderr.strip()}\n{log}")
        return done

    def _ctl(self, action: str, *extra: str) -> None:
        options = f"{TEST_SETTINGS} -p {self.port} -k {self.root}"
        self._sh(
            f"pg_ctl -D {shlex.quote(str(self.data))} -l {shlex.quote(str(self.log))} -w -t 60 "
            f"-o {shlex.quote(options)} {' '.join(extra)} {action}"
        )

    @classmethod
    def start_new(cls) -> PgServer:
        root = Path(tempfile.mkdtemp(prefix="ltx-pg-"))  # under /tmp: reachable by the postgres user
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        server = cls(root, _free_port())
        server._sh(f"initdb -D {shlex.quote(str(server.data))} -U postgres --auth=trust -E UTF8 --no-sync")
        for attempt in range(3):
            try:
                server._ctl("start")
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                server.port = _free_port()  # another process took the port meanwhile
        return server

    # -- use ----------------------------------------------------------------------------------------------
    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh empty database; its URL."""
        import psycopg

        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def restart(self, mode: str = "fast") -> None:
        """pg_ctl restart: every connection is dropped (mode "immediate": the server crashes and recovers)."""
        self._ctl("restart", "-m", mode)

    def stop(self, mode: str = "fast") -> None:
        self._sh(f"pg_ctl -D {shlex.quote(str(self.data))} -w -t 60 -m {mode} stop", check=False)

    def start(self) -> None:
        self._ctl("start")

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
