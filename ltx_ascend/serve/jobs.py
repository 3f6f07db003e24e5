"""The job store the API processes and the workers share: one table, every transition one transaction.

Two engines, one schema and one behaviour: SQLite (embedded, one host: WAL, BEGIN IMMEDIATE) and PostgreSQL
(a fleet: `SELECT ... FOR UPDATE SKIP LOCKED`, the database clock; `jobs_postgres.py`). A worker claims a job
with a lease it renews while running; a job whose lease ran out is queued again (the note says so) and the
late worker's `complete` / `fail` is refused (fencing), so a job is never published twice. Design notes:
docs/design/service-store.md.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from ltx_ascend.errors import UserError

log = logging.getLogger(__name__)

STATUSES = ("queued", "in_progress", "completed", "failed", "cancelled")
TERMINAL = ("completed", "failed", "cancelled")
SCHEMA_VERSION = "1"
DEFAULT_MAX_ATTEMPTS = 3

T = TypeVar("T")


@dataclass(frozen=True)
class Job:
    id: str  # unguessable: "video_" + secrets.token_hex(16)
    status: str
    model: str  # the pipeline name served
    params: dict  # the validated request as a JSON-able dict (what the worker runs)
    created_at: int  # unix seconds
    started_at: int | None
    completed_at: int | None
    progress: int  # 0..100
    error: dict | None  # {"code": str, "message": str}
    attempts: int  # times claimed
    note: str | None  # e.g. "requeued after worker w1 stopped renewing its lease (attempt 2)"
    worker: str | None  # the lease holder while in_progress (the last one once finished)
    lease_expires_at: float | None
    output: str | None  # output key (a name inside the output storage, never a client string)
    cancel_requested: bool
    remixed_from: str | None


class QueueFull(Exception):
    """queued + in_progress jobs reached max_queue (HTTP 429)."""


class StoreUnavailable(ConnectionError):
    """The database stayed unreachable for the whole retry window (HTTP 503; the job state is intact)."""


@runtime_checkable
class JobStore(Protocol):
    def create(
        self, model: str, params: dict, *, max_queue: int | None = None, remixed_from: str | None = None
    ) -> Job: ...
    def get(self, job_id: str) -> Job | None: ...
    def list(self, *, after: str | None = None, limit: int = 20, order: str = "desc") -> list[Job]: ...
    def claim(self, worker: str, lease_s: float, models: Collection[str]) -> Job | None: ...
    def renew(self, job_id: str, worker: str, lease_s: float, *, attempt: int | None = None) -> bool: ...
    def set_progress(self, job_id: str, worker: str, progress: int, *, attempt: int | None = None) -> bool: ...
    def complete(self, job_id: str, worker: str, output: str, *, attempt: int | None = None) -> bool: ...
    def fail(self, job_id: str, worker: str, error: dict, *, attempt: int | None = None) -> bool: ...
    def mark_cancelled(self, job_id: str, worker: str, *, attempt: int | None = None) -> bool: ...
    def requeue_expired(self) -> list[Job]: ...
    def requeue_worker(self, worker: str, reason: str) -> list[Job]: ...
    def cancel(self, job_id: str) -> Job | None: ...
    def cancel_requested(self, job_id: str) -> bool: ...
    def delete(self, job_id: str) -> bool: ...
    def counts(self) -> dict[str, int]: ...
    def close(self) -> None: ...


# One schema for both engines (types both accept); `seq` orders jobs created in the same second and is the
# queue's FIFO order. `lease_s` is the lease length of the current attempt (set_progress renews by it).
COLUMNS = (
    "id", "status", "model", "params", "created_at", "started_at", "completed_at", "progress", "error",
    "attempts", "note", "worker", "lease_expires_at", "output", "cancel_requested", "remixed_from",
)  # fmt: skip
_SELECT = "SELECT " + ", ".join(COLUMNS) + " FROM jobs"


def schema_sql(seq_column: str) -> list[str]:
    """The DDL, with the engine's auto-increment primary key spelled by the caller."""
    statuses = ", ".join(f"'{s}'" for s in STATUSES)
    return [
        f"""CREATE TABLE IF NOT EXISTS jobs (
            seq {seq_column},
            id TEXT NOT NULL UNIQUE,
            status TEXT NOT NULL CHECK (status IN ({statuses})),
            model TEXT NOT NULL,
            params TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            started_at BIGINT,
            completed_at BIGINT,
            progress INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            note TEXT,
            worker TEXT,
            lease_expires_at DOUBLE PRECISION,
            lease_s DOUBLE PRECISION,
            output TEXT,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            remixed_from TEXT
        )""",
        "CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, model, seq)",
        "CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at, seq)",
        "CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ]


def new_job_id() -> str:
    return "video_" + secrets.token_hex(16)


def _job(row: tuple) -> Job:
    d = dict(zip(COLUMNS, row, strict=True))
    d["params"] = json.loads(d["params"])
    d["error"] = json.loads(d["error"]) if d["error"] is not None else None
    d["cancel_requested"] = bool(d["cancel_requested"])
    for key in ("created_at", "started_at", "completed_at", "progress", "attempts"):
        if d[key] is not None:
            d[key] = int(d[key])
    if d["lease_expires_at"] is not None:
        d["lease_expires_at"] = float(d["lease_expires_at"])
    return Job(**d)


class Tx(Protocol):
    """What a transaction body sees: `execute` with `?` placeholders, the rows, and the transaction's clock."""

    now: float  # unix seconds: time.time() on SQLite, the database clock on PostgreSQL
    retry: bool  # True when this body runs again after a lost connection (its first try may have committed)

    def execute(self, sql: str, params: tuple = ()) -> int: ...  # rows affected
    def one(self, sql: str, params: tuple = ()) -> tuple | None: ...
    def all(self, sql: str, params: tuple = ()) -> list[tuple]: ...


class SqlJobStore:
    """The transitions, written once over `Tx`; an engine supplies `_run` (one transaction, its clock, its
    locking) and `_claim_lock` (the row-lock clause of the claim's SELECT)."""

    _claim_lock = ""
    _expired_lock = ""

    def __init__(self, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.max_attempts = max_attempts

    # -- engine hooks -------------------------------------------------------------------------------------
    def _run(self, body: Callable[[Tx], T], *, write: bool = True) -> T:
        raise NotImplementedError

    def _soft_commit(self, tx: Tx) -> None:
        """A lease renewal or progress report may be lost in a database crash (the next one repeats it): the
        engine may commit it without waiting for the disk (PostgreSQL: synchronous_commit off)."""

    def _serialize_creates(self, tx: Tx) -> None:
        """Make the max_queue count and the insert one critical section (SQLite: BEGIN IMMEDIATE already)."""

    # -- jobs ---------------------------------------------------------------------------------------------
    def create(self, model: str, params: dict, *, max_queue: int | None = None, remixed_from: str | None = None) -> Job:
        job_id = new_job_id()  # chosen before the transaction so a retried transaction inserts it once
        body_json = json.dumps(params, sort_keys=True, separators=(",", ":"))

        def body(tx: Tx) -> Job:
            if max_queue is not None:
                self._serialize_creates(tx)
                (active,) = tx.one("SELECT count(*) FROM jobs WHERE status IN ('queued', 'in_progress')")
                if active >= max_queue:
                    raise QueueFull(f"the queue is full ({active} jobs queued or running, max {max_queue})")
            tx.execute(
                "INSERT INTO jobs (id, status, model, params, created_at, remixed_from) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO NOTHING",
                (job_id, "queued", model, body_json, int(tx.now), remixed_from),
            )
            return self._get(tx, job_id)

        job = self._run(body)
        log.info("job %s queued (model %s)", job.id, model)
        return job

    def get(self, job_id: str) -> Job | None:
        return self._run(lambda tx: self._find(tx, job_id), write=False)

    def list(self, *, after: str | None = None, limit: int = 20, order: str = "desc") -> list[Job]:
        if order not in ("asc", "desc"):
            raise UserError(f"order must be 'asc' or 'desc', got {order!r}")
        if limit < 1:
            raise UserError(f"limit must be >= 1, got {limit}")
        cmp, direction = ("<", "DESC") if order == "desc" else (">", "ASC")

        def body(tx: Tx) -> list[Job]:
            where, args = "", ()
            if after is not None:
                cursor = tx.one("SELECT created_at, seq FROM jobs WHERE id = ?", (after,))
                if cursor is None:
                    raise UserError(f"after={after!r} names no job: pass the id of a job from a previous page")
                where, args = f" WHERE (created_at, seq) {cmp} (?, ?)", tuple(cursor)
            rows = tx.all(f"{_SELECT}{where} ORDER BY created_at {direction}, seq {direction} LIMIT ?", (*args, limit))
            return [_job(r) for r in rows]

        return self._run(body, write=False)

    def claim(self, worker: str, lease_s: float, models: Collection[str]) -> Job | None:
        """The oldest queued job of one of `models`, now in_progress under `worker`'s lease (expired leases are
        requeued first, in the same transaction). `worker` names one replica, which runs one job at a time."""
        models = list(models)
        if not models:
            return None
        marks = ", ".join("?" * len(models))

        def body(tx: Tx) -> Job | None:
            if tx.retry:
                # This transaction is being retried after a lost connection: its first try may have committed.
                # A worker claims one job at a time, so a job it already holds is that claim: hand it back.
                held = tx.one("SELECT id FROM jobs WHERE status = 'in_progress' AND worker = ? ORDER BY seq", (worker,))
                if held is not None:
                    return self._get(tx, held[0])
            self._requeue_expired(tx)
            row = tx.one(
                f"SELECT id FROM jobs WHERE status = 'queued' AND model IN ({marks}) ORDER BY seq LIMIT 1"
                f"{self._claim_lock}",
                tuple(models),
            )
            if row is None:
                return None
            taken = tx.execute(
                "UPDATE jobs SET status = 'in_progress', attempts = attempts + 1, worker = ?, started_at = ?,"
                " lease_expires_at = ?, lease_s = ?, progress = 0 WHERE id = ? AND status = 'queued'",
                (worker, int(tx.now), tx.now + lease_s, lease_s, row[0]),
            )
            if taken != 1:  # the row lock (SQLite: the write lock) makes this impossible; never hand it out twice
                raise RuntimeError(f"claim of {row[0]} raced another worker")
            return self._get(tx, row[0])

        job = self._run(body)
        if job is not None:
            log.info("job %s in_progress on worker %s (attempt %d)", job.id, worker, job.attempts)
        return job

    @staticmethod
    def _holder(job_id: str, worker: str, attempt: int | None) -> tuple[str, tuple]:
        """The fencing condition: the job is in_progress under this worker (and this attempt, if given)."""
        sql = "id = ? AND status = 'in_progress' AND worker = ?"
        args: tuple = (job_id, worker)
        if attempt is not None:
            sql, args = sql + " AND attempts = ?", (*args, attempt)
        return sql, args

    def renew(self, job_id: str, worker: str, lease_s: float, *, attempt: int | None = None) -> bool:
        """Extend the lease; False once it was lost (requeued, taken over, finished): stop working on it."""
        where, args = self._holder(job_id, worker, attempt)

        def body(tx: Tx) -> bool:
            self._soft_commit(tx)
            sql = f"UPDATE jobs SET lease_expires_at = ?, lease_s = ? WHERE {where}"
            return tx.execute(sql, (tx.now + lease_s, lease_s, *args)) == 1

        return self._run(body)

    def set_progress(self, job_id: str, worker: str, progress: int, *, attempt: int | None = None) -> bool:
        """Record progress (0..100) and renew the lease by the attempt's lease length."""
        if not 0 <= int(progress) <= 100:
            raise ValueError(f"progress must be 0..100, got {progress}")
        where, args = self._holder(job_id, worker, attempt)

        def body(tx: Tx) -> bool:
            self._soft_commit(tx)
            sql = f"UPDATE jobs SET progress = ?, lease_expires_at = ? + lease_s WHERE {where}"
            return tx.execute(sql, (int(progress), tx.now, *args)) == 1

        return self._run(body)

    def _finish(
        self, job_id: str, worker: str, attempt: int | None, status: str, column: str | None = None, value: Any = None
    ) -> bool:
        where, args = self._holder(job_id, worker, attempt)
        sets, values = "", ()
        if column is not None:
            sets, values = f", {column} = ?", (value,)
        if status == "completed":
            sets += ", progress = 100"

        def body(tx: Tx) -> bool:
            changed = tx.execute(
                f"UPDATE jobs SET status = ?, completed_at = ?, lease_expires_at = NULL{sets} WHERE {where}",
                (status, int(tx.now), *values, *args),
            )
            if changed:
                return True
            # A transaction retried after its commit was lost in a reconnect finds its own result: still True.
            found = tx.one(f"SELECT status, worker, attempts, {column or 'NULL'} FROM jobs WHERE id = ?", (job_id,))
            return (
                found is not None
                and found[:2] == (status, worker)
                and found[3] == value
                and (attempt is None or found[2] == attempt)
            )

        ok = self._run(body)
        if ok:
            log.info("job %s %s on worker %s", job_id, status, worker)
        else:
            log.warning("job %s: worker %s no longer holds its lease; its %s was refused", job_id, worker, status)
        return ok

    def complete(self, job_id: str, worker: str, output: str, *, attempt: int | None = None) -> bool:
        """Publish `output` only if `worker` still holds this attempt's lease; False: the lease was taken over,
        delete your output. The key must be this attempt's own (e.g. include the attempt), so a late
        finisher never writes over the winner's file."""
        return self._finish(job_id, worker, attempt, "completed", "output", output)

    def fail(self, job_id: str, worker: str, error: dict, *, attempt: int | None = None) -> bool:
        text = json.dumps({"code": str(error.get("code", "error")), "message": str(error.get("message", ""))})
        return self._finish(job_id, worker, attempt, "failed", "error", text)

    def mark_cancelled(self, job_id: str, worker: str, *, attempt: int | None = None) -> bool:
        """The worker stopped a job whose cancel was requested: in_progress -> cancelled."""
        return self._finish(job_id, worker, attempt, "cancelled")

    # -- requeue ------------------------------------------------------------------------------------------
    def _lose(self, tx: Tx, job: Job, why: str) -> Job:
        """A job whose worker is gone: cancelled if asked, failed after max_attempts, else queued again."""
        guard = "id = ? AND status = 'in_progress' AND attempts = ?"
        if job.cancel_requested:
            tx.execute(
                f"UPDATE jobs SET status = 'cancelled', completed_at = ?, lease_expires_at = NULL WHERE {guard}",
                (int(tx.now), job.id, job.attempts),
            )
        elif job.attempts >= self.max_attempts:
            error = {
                "code": "worker_lost",
                "message": f"{why} on attempt {job.attempts} of {self.max_attempts}; not retried again",
            }
            tx.execute(
                "UPDATE jobs SET status = 'failed', completed_at = ?, lease_expires_at = NULL, error = ?, note = ?"
                f" WHERE {guard}",
                (int(tx.now), json.dumps(error), f"{why} (attempt {job.attempts})", job.id, job.attempts),
            )
        else:
            tx.execute(
                "UPDATE jobs SET status = 'queued', worker = NULL, lease_expires_at = NULL, lease_s = NULL,"
                f" started_at = NULL, progress = 0, note = ? WHERE {guard}",
                (f"requeued after {why} (attempt {job.attempts})", job.id, job.attempts),
            )
        after = self._get(tx, job.id)
        log.warning("job %s: %s (attempt %d): now %s", job.id, why, job.attempts, after.status)
        return after

    def _requeue_expired(self, tx: Tx) -> list[Job]:
        rows = tx.all(
            f"{_SELECT} WHERE status = 'in_progress' AND lease_expires_at < ? ORDER BY seq{self._expired_lock}",
            (tx.now,),
        )
        return [self._lose(tx, j, f"worker {j.worker} stopped renewing its lease") for j in map(_job, rows)]

    def requeue_expired(self) -> list[Job]:
        """Leases past expiry -> queued again (or failed after max_attempts, cancelled if asked)."""
        return self._run(self._requeue_expired)

    def requeue_worker(self, worker: str, reason: str) -> list[Job]:
        """A replica restarted: its in_progress jobs are queued again now, without waiting for the lease."""

        def body(tx: Tx) -> list[Job]:
            rows = tx.all(f"{_SELECT} WHERE status = 'in_progress' AND worker = ? ORDER BY seq", (worker,))
            return [self._lose(tx, j, f"worker {worker} {reason}") for j in map(_job, rows)]

        return self._run(body)

    # -- cancel, delete, metrics --------------------------------------------------------------------------
    def cancel(self, job_id: str) -> Job | None:
        """queued -> cancelled at once; in_progress -> cancel_requested (the worker stops between steps);
        a finished job is returned unchanged. None: no such job."""

        def body(tx: Tx) -> Job | None:
            tx.execute(
                "UPDATE jobs SET status = 'cancelled', completed_at = ? WHERE id = ? AND status = 'queued'",
                (int(tx.now), job_id),
            )
            tx.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'in_progress'", (job_id,))
            return self._find(tx, job_id)

        job = self._run(body)
        if job is not None:
            log.info("job %s cancel: now %s%s", job_id, job.status, " (cancel requested)" * job.cancel_requested)
        return job

    def cancel_requested(self, job_id: str) -> bool:
        row = self._run(lambda tx: tx.one("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)), write=False)
        return bool(row and row[0])

    def delete(self, job_id: str) -> bool:
        return self._run(lambda tx: tx.execute("DELETE FROM jobs WHERE id = ?", (job_id,)) == 1)

    def counts(self) -> dict[str, int]:
        rows = self._run(lambda tx: tx.all("SELECT status, count(*) FROM jobs GROUP BY status"), write=False)
        out = dict.fromkeys(STATUSES, 0)
        out.update({status: int(n) for status, n in rows})
        return out

    # -- helpers ------------------------------------------------------------------------------------------
    @staticmethod
    def _find(tx: Tx, job_id: str) -> Job | None:
        row = tx.one(f"{_SELECT} WHERE id = ?", (job_id,))
        return _job(row) if row is not None else None

    def _get(self, tx: Tx, job_id: str) -> Job:
        job = self._find(tx, job_id)
        assert job is not None, job_id
        return job

    def _check_schema(self, tx: Tx, where: str) -> None:
        """Create the schema in an empty database; refuse one written by another schema version."""
        row = tx.one("SELECT value FROM store_meta WHERE key = 'schema_version'")
        if row is None:
            tx.execute("INSERT INTO store_meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            raise UserError(
                f"{where} holds job store schema version {row[0]}, this ltx-ascend reads version {SCHEMA_VERSION}:"
                " use the ltx-ascend release that wrote it, or a new store"
            )


class _SqliteTx:
    def __init__(self, cur: sqlite3.Cursor) -> None:
        self.cur = cur
        self.now = time.time()
        self.retry = False

    def execute(self, sql: str, params: tuple = ()) -> int:
        return self.cur.execute(sql, params).rowcount

    def one(self, sql: str, params: tuple = ()) -> tuple | None:
        return self.cur.execute(sql, params).fetchone()

    def all(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self.cur.execute(sql, params).fetchall()


class SqliteJobStore(SqlJobStore):
    """The embedded store: one SQLite file in WAL mode, writes serialised by BEGIN IMMEDIATE (atomic across
    the processes of one host), time from time.time(). Not for a network filesystem (WAL needs shared
    memory): a fleet uses PostgreSQL. Thread-safe (one connection behind a lock); open one per process."""

    BUSY_TIMEOUT_MS = 30_000

    def __init__(self, path: str | Path, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
        super().__init__(max_attempts=max_attempts)
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"{self.path} is a folder: give the job store file (e.g. {self.path / 'jobs.db'})")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._closed = False
        try:
            self._connect()

            def setup(tx: Tx) -> None:
                for statement in schema_sql("INTEGER PRIMARY KEY AUTOINCREMENT"):
                    tx.execute(statement)
                self._check_schema(tx, str(self.path))

            self._run(setup)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise UserError(f"{self.path} is not a job store ({exc}): give a new file or the store's own") from None
        except BaseException:
            self.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self.BUSY_TIMEOUT_MS / 1000
        )
        self._conn, self._pid = conn, os.getpid()
        conn.execute(f"PRAGMA busy_timeout = {self.BUSY_TIMEOUT_MS}")
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode.lower() != "wal":
            raise UserError(f"{self.path}: SQLite refused WAL mode ({mode}): put the store on a local disk")
        conn.execute("PRAGMA synchronous = FULL")  # a committed transition survives a power cut
        return conn

    def _run(self, body: Callable[[Tx], T], *, write: bool = True) -> T:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"job store {self.path} is closed")
            if self._pid != os.getpid():  # a forked child: never share the parent's connection
                self._connect()
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = body(_SqliteTx(cur))
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
            return result

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __repr__(self) -> str:
        return f"SqliteJobStore({str(self.path)!r})"


def open_store(url: str, **options: Any) -> JobStore:
    """ "sqlite:///abs/path/jobs.db", a plain folder (-> folder/jobs.db) or "postgresql://user@host:port/db".

    Options go to the store (max_attempts; PostgreSQL: retry_s, the reconnect window)."""
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from ltx_ascend.serve.jobs_postgres import PostgresJobStore
        except ImportError as exc:
            raise UserError(f"a PostgreSQL job store needs psycopg ({exc}): pip install 'ltx-ascend[fleet]'") from None

        return PostgresJobStore(url, **options)
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        if not path.startswith("/"):
            raise UserError(f"{url!r}: a SQLite store URL names an absolute file, e.g. sqlite:///srv/ltx/jobs.db")
        return SqliteJobStore(path, **options)
    if "://" in url:
        raise UserError(f"{url!r}: unknown job store URL; use sqlite:///abs/path/jobs.db, postgresql://... or a folder")
    folder = Path(url)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{url!r} is a file: give the store folder (jobs.db goes inside) or sqlite:///{folder}")
    return SqliteJobStore(folder / "jobs.db", **options)
