"""The job store on PostgreSQL (psycopg 3): the fleet's one queue, shared by API processes and workers on any
host. Same schema and transitions as SQLite (`jobs.SqlJobStore`); what differs is how they are made safe:

- claim: `SELECT ... FOR UPDATE SKIP LOCKED`, so concurrent claimers on many hosts never wait on or take
  the same row;
- time: every transaction reads the database clock (hosts' clocks differ; a lease means the same on all);
- outages: a call that loses its connection (server restart, failover, network) reconnects and runs its
  transaction again, with backoff, for up to `retry_s` seconds, then raises `StoreUnavailable`. Each
  transition is written to be safe to run twice (the job id is chosen before the insert, finishing is
  idempotent for the same holder, a retried claim returns the job the first try took).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ltx_ascend.errors import UserError
from ltx_ascend.serve.jobs import DEFAULT_MAX_ATTEMPTS, SqlJobStore, StoreUnavailable, Tx, schema_sql

log = logging.getLogger(__name__)

T = TypeVar("T")

# pg_advisory_xact_lock keys (any fixed numbers): schema setup, and create's max_queue count + insert.
_SCHEMA_LOCK = 0x17A5_0001
_CREATE_LOCK = 0x17A5_0002

# Connection errors that no retry fixes: say so at once instead of retrying for retry_s.
_PERMANENT = ("does not exist", "authentication failed", "no pg_hba.conf entry")


class _PgTx:
    def __init__(self, cur: psycopg.Cursor, retry: bool) -> None:
        self.cur = cur
        self.retry = retry
        (self.now,) = cur.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()

    def execute(self, sql: str, params: tuple = ()) -> int:
        return self.cur.execute(sql.replace("?", "%s"), params).rowcount

    def one(self, sql: str, params: tuple = ()) -> tuple | None:
        return self.cur.execute(sql.replace("?", "%s"), params).fetchone()

    def all(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self.cur.execute(sql.replace("?", "%s"), params).fetchall()


def display_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        d = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable postgresql URL>"
    user = f"{d['user']}@" if d.get("user") else ""
    return f"postgresql://{user}{d.get('host', '')}:{d.get('port', 5432)}/{d.get('dbname', '')}"


class PostgresJobStore(SqlJobStore):
    """One connection per store (per process), behind a lock so threads may share it."""

    _claim_lock = " FOR UPDATE SKIP LOCKED"
    _expired_lock = " FOR UPDATE SKIP LOCKED"

    def __init__(
        self,
        url: str,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_s: float = 30.0,
        connect_timeout_s: int = 5,
    ) -> None:
        super().__init__(max_attempts=max_attempts)
        self.url = url
        self.where = display_url(url)
        self.retry_s = retry_s
        self.connect_timeout_s = connect_timeout_s
        self._lock = threading.RLock()
        self._conn: psycopg.Connection | None = None
        self._pid = os.getpid()
        self._closed = False
        self.reconnects = 0  # connections re-made after a loss (metrics, tests)
        self._connected_once = False

        def setup(tx: Tx) -> None:
            tx.one("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))  # many processes may start at once
            for statement in schema_sql("BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"):
                tx.execute(statement)
            self._check_schema(tx, self.where)

        try:
            self._run(setup)
        except StoreUnavailable as exc:
            self.close()
            raise UserError(f"{exc}: start the server or fix the store URL") from None
        except BaseException:
            self.close()
            raise

    def _soft_commit(self, tx: Tx) -> None:
        # Progress and renewals are most of a job's writes; they need not wait for the WAL flush (a crash
        # loses at most the last few hundred milliseconds of them). Every state change stays synchronous.
        tx.execute("SET LOCAL synchronous_commit = off")

    def _connect(self) -> psycopg.Connection:
        try:
            conn = psycopg.connect(
                self.url,
                autocommit=True,  # transactions are explicit: `with conn.transaction()`
                connect_timeout=self.connect_timeout_s,
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
                application_name="ltx-serve",
            )
        except psycopg.OperationalError as exc:
            text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            if any(p in text for p in _PERMANENT):
                raise UserError(f"job store {self.where}: {text}: fix the store URL or create the database") from None
            raise
        if self._connected_once:
            self.reconnects += 1
        self._conn, self._pid, self._connected_once = conn, os.getpid(), True
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):  # already broken: nothing to release
                conn.close()

    def _run(self, body: Callable[[Tx], T], *, write: bool = True) -> T:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"job store {self.where} is closed")
            if self._pid != os.getpid():  # a forked child: never use the parent's socket
                self._conn = None
            deadline: float | None = None
            delay = 0.05
            retry = False
            while True:
                try:
                    conn = self._conn or self._connect()
                    with conn.transaction():
                        return body(_PgTx(conn.cursor(), retry))
                except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    # Connection lost (server restart, failover, network), or a transient conflict
                    # (deadlock, serialization): the transaction did not commit, or its retry is harmless.
                    self._drop()
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + self.retry_s
                        log.warning("job store %s: %s; reconnecting (up to %.0f s)", self.where, _one_line(exc),
                                    self.retry_s)  # fmt: skip
                    if now >= deadline:
                        raise StoreUnavailable(
                            f"job store {self.where} unreachable for {self.retry_s:.0f} s ({_one_line(exc)});"
                            " the jobs are kept in the database"
                        ) from exc
                    time.sleep(min(delay, max(0.0, deadline - now)))
                    delay = min(delay * 2, 2.0)
                    retry = True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()

    def __repr__(self) -> str:
        return f"PostgresJobStore({self.where!r})"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
