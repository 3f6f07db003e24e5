"""The job store's behaviour on real databases: a SQLite file, and (where PostgreSQL is installed) a real server
started by the test. The same test functions run over both engines."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time
from dataclasses import replace

import pytest

from ltx_ascend.errors import UserError
from ltx_ascend.serve import jobs as jobs_module
from ltx_ascend.serve.jobs import STATUSES, Job, QueueFull, SqliteJobStore, StoreUnavailable, open_store
from tests import jobstore_workers
from tests.pg_server import _free_port

ENGINES = ["sqlite", "postgresql"]


@pytest.fixture(params=ENGINES)
def store_url(request, tmp_path) -> str:
    """A URL naming a fresh, empty job store of each engine (PostgreSQL: a new database on the session's
    server, tests/pg_server.py)."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'store' / 'jobs.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(store_url):
    s = open_store(store_url)
    yield s
    s.close()


def _make(store, n: int, model: str = "m") -> list[Job]:
    return [store.create(model, {"prompt": f"p{i}", "seed": i}) for i in range(n)]


# -- create / get / list ----------------------------------------------------------------------------------
def test_create_and_get_round_trip(store):
    job = store.create("ti2vid_two_stages", {"prompt": "a cat", "size": [1024, 1536]}, remixed_from="video_x")
    assert job.id.startswith("video_") and len(job.id) == len("video_") + 32
    assert (job.status, job.model, job.progress, job.attempts) == ("queued", "ti2vid_two_stages", 0, 0)
    assert job.params == {"prompt": "a cat", "size": [1024, 1536]}
    assert job.remixed_from == "video_x" and job.worker is None and job.output is None
    assert job.created_at > 1_700_000_000 and job.started_at is None and not job.cancel_requested
    assert store.get(job.id) == job
    assert store.get("video_" + "0" * 32) is None
    assert len({store.create("m", {}).id for _ in range(20)}) == 20  # fresh ids


def test_list_orders_pages_and_limits(store):
    jobs = _make(store, 7)
    ids = [j.id for j in jobs]
    assert [j.id for j in store.list(limit=100)] == ids[::-1]  # desc by default: newest first
    assert [j.id for j in store.list(order="asc", limit=3)] == ids[:3]
    page = store.list(order="asc", after=ids[2], limit=3)
    assert [j.id for j in page] == ids[3:6]
    assert [j.id for j in store.list(order="desc", after=ids[2])] == ids[:2][::-1]
    assert store.list(after=ids[0]) == []
    assert len(store.list()) == 7
    with pytest.raises(UserError, match="names no job"):
        store.list(after="video_nope")
    with pytest.raises(UserError, match="order"):
        store.list(order="sideways")
    with pytest.raises(UserError, match="limit"):
        store.list(limit=0)


# -- claim ------------------------------------------------------------------------------------------------
def test_claim_takes_the_oldest_job_of_the_served_models(store):
    a = store.create("a", {})
    b1 = store.create("b", {})
    b2 = store.create("b", {})
    assert store.claim("w1", 60, ["c"]) is None
    assert store.claim("w1", 60, []) is None
    got = store.claim("w1", 60, ["b", "c"])
    assert got.id == b1.id and got.status == "in_progress" and got.worker == "w1" and got.attempts == 1
    assert got.started_at is not None and got.lease_expires_at > got.started_at + 50
    assert store.claim("w2", 60, ["b"]).id == b2.id
    assert store.claim("w2", 60, ["b"]) is None
    assert store.get(a.id).status == "queued"
    assert store.counts() == {"queued": 1, "in_progress": 2, "completed": 0, "failed": 0, "cancelled": 0}


def _claim_from_processes(url: str, n_jobs: int, n_procs: int) -> dict[str, list[str]]:
    setup = open_store(url)
    ids = {j.id for j in _make(setup, n_jobs)}
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(n_procs), ctx.Queue()
    procs = [
        ctx.Process(target=jobstore_workers.claim_all, args=(url, f"w{i}", ["m"], barrier, results))
        for i in range(n_procs)
    ]
    for p in procs:
        p.start()
    claimed = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    every = [i for got in claimed.values() for i in got]
    assert sorted(every) == sorted(ids), "each job claimed exactly once"
    assert setup.counts()["completed"] == n_jobs
    for job in setup.list(limit=n_jobs):
        assert job.attempts == 1 and job.output == f"{job.id}-{job.worker}.mp4"
    setup.close()
    return claimed


def test_claim_is_atomic_across_processes(store_url):
    claimed = _claim_from_processes(store_url, n_jobs=60, n_procs=3)
    assert sum(len(v) for v in claimed.values()) == 60
    assert sum(1 for v in claimed.values() if v) >= 2, f"no concurrency happened: {claimed}"


def test_one_store_is_shared_by_threads(store):
    """An API process's request threads and its replicas' threads share one store object."""
    from concurrent.futures import ThreadPoolExecutor

    ids = {j.id for j in _make(store, 40)}

    def drain(worker: str) -> list[str]:
        got = []
        while (job := store.claim(worker, 60, ["m"])) is not None:
            got.append(job.id)
            assert store.set_progress(job.id, worker, 50) and store.complete(job.id, worker, f"{job.id}.mp4")
        return got

    with ThreadPoolExecutor(4) as pool:
        claimed = [i for got in pool.map(drain, ["t0", "t1", "t2", "t3"]) for i in got]
    assert sorted(claimed) == sorted(ids)
    assert store.counts()["completed"] == 40


# -- leases, fencing --------------------------------------------------------------------------------------
def test_an_expired_lease_is_requeued_with_a_note(store):
    job = store.create("m", {})
    store.claim("w1", -1.0, ["m"])  # a lease already past: as if w1 stopped renewing
    requeued = store.requeue_expired()
    assert [j.id for j in requeued] == [job.id]
    again = store.get(job.id)
    assert again.status == "queued" and again.worker is None and again.lease_expires_at is None
    assert again.note == "requeued after worker w1 stopped renewing its lease (attempt 1)"
    assert store.requeue_expired() == []
    second = store.claim("w2", 60, ["m"])
    assert second.id == job.id and second.attempts == 2 and second.worker == "w2"
    assert second.note.startswith("requeued after worker w1")  # the job says why it ran twice


def test_a_renewed_lease_is_kept(store):
    job = store.create("m", {})
    store.claim("w1", -1.0, ["m"])
    assert store.renew(job.id, "w1", 60.0)  # renewed before anyone took it over
    assert store.requeue_expired() == []
    assert store.claim("w2", 60, ["m"]) is None
    assert store.set_progress(job.id, "w1", 40)
    assert store.get(job.id).progress == 40
    assert not store.renew(job.id, "w2", 60.0)  # not w2's lease
    with pytest.raises(ValueError, match="progress"):
        store.set_progress(job.id, "w1", 101)


def test_set_progress_renews_by_the_attempt_lease(store):
    job = store.create("m", {})
    claimed = store.claim("w1", 30.0, ["m"])
    store._run(lambda tx: tx.execute("UPDATE jobs SET lease_expires_at = 0 WHERE id = ?", (job.id,)))
    assert store.set_progress(job.id, "w1", 10)
    now = store.get(job.id)
    assert now.lease_expires_at >= claimed.lease_expires_at - 1  # ~now + 30 s again, not the zeroed value
    assert store.requeue_expired() == []


def test_claim_takes_over_an_expired_lease(store):
    job = store.create("m", {})
    store.claim("w1", -1.0, ["m"])
    taken = store.claim("w2", 60, ["m"])
    assert taken.id == job.id and taken.attempts == 2


def test_fencing_a_late_finisher_does_not_overwrite_the_winner(store):
    job = store.create("m", {})
    first = store.claim("w1", -1.0, ["m"])
    second = store.claim("w2", 60.0, ["m"])  # w1's lease ran out; w2 took the job over
    assert not store.set_progress(job.id, "w1", 50)
    assert not store.renew(job.id, "w1", 60)
    assert store.complete(job.id, "w2", "out-a2.mp4", attempt=second.attempts)
    assert not store.complete(job.id, "w1", "out-a1.mp4", attempt=first.attempts)  # late: refused
    assert not store.fail(job.id, "w1", {"code": "x", "message": "late"})
    done = store.get(job.id)
    assert (done.status, done.output, done.worker, done.progress, done.error) == (
        "completed",
        "out-a2.mp4",
        "w2",
        100,
        None,
    )
    assert done.completed_at is not None and done.lease_expires_at is None


def test_fencing_by_attempt_when_a_worker_name_comes_back(store):
    """The same worker name re-claimed the job (a restarted replica): only the current attempt may finish."""
    job = store.create("m", {})
    store.claim("w1", -1.0, ["m"])
    current = store.claim("w1", 60.0, ["m"])
    assert current.attempts == 2
    assert not store.complete(job.id, "w1", "a1.mp4", attempt=1)
    assert store.complete(job.id, "w1", "a2.mp4", attempt=2)
    assert store.get(job.id).output == "a2.mp4"


def test_a_sigkilled_worker_s_job_is_taken_over_after_its_lease(store_url):
    store = open_store(store_url)
    job = store.create("m", {})
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=jobstore_workers.claim_and_hang, args=(store_url, "w1", 1.0, results))
    proc.start()
    try:
        assert results.get(timeout=60) == job.id
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=30)
        assert store.claim("w2", 60, ["m"]) is None or pytest.fail("taken over before the lease ran out")
        time.sleep(1.2)
        taken = store.claim("w2", 60, ["m"])
        assert taken.id == job.id and taken.attempts == 2 and "worker w1 stopped renewing" in taken.note
        assert store.complete(job.id, "w2", "o-a2.mp4", attempt=2)
    finally:
        if proc.is_alive():
            proc.kill()
        store.close()


def test_fail_records_the_error_once(store):
    job = store.create("m", {})
    store.claim("w1", 60, ["m"])
    assert store.fail(job.id, "w1", {"code": "unsupported_size", "message": "size 10x10 is not served"})
    failed = store.get(job.id)
    assert failed.status == "failed" and failed.error == {
        "code": "unsupported_size",
        "message": "size 10x10 is not served",
    }
    assert not store.complete(job.id, "w1", "x.mp4")
    assert store.get(job.id).status == "failed"


def test_requeue_worker_puts_a_restarted_replicas_jobs_back(store):
    a, b, c = _make(store, 3)
    store.claim("w1", 60, ["m"])
    store.claim("w1", 60, ["m"])
    store.claim("w2", 60, ["m"])
    back = store.requeue_worker("w1", "was restarted")
    assert sorted(j.id for j in back) == sorted([a.id, b.id])
    for j in back:
        got = store.get(j.id)
        assert got.status == "queued" and got.note == "requeued after worker w1 was restarted (attempt 1)"
    assert store.get(c.id).status == "in_progress"
    assert store.requeue_worker("w1", "was restarted") == []


def test_a_job_lost_max_attempts_times_fails(store_url):
    store = open_store(store_url, max_attempts=2)
    job = store.create("m", {})
    store.claim("w1", -1, ["m"])
    store.claim("w2", -1, ["m"])  # takes over attempt 1, then loses attempt 2 too
    assert store.claim("w3", 60, ["m"]) is None  # attempt 2 expired: failed, not requeued
    failed = store.get(job.id)
    assert failed.status == "failed" and failed.attempts == 2
    assert failed.error["code"] == "worker_lost" and "worker w2 stopped renewing" in failed.error["message"]
    store.close()


# -- cancel, delete, queue limit ---------------------------------------------------------------------------
def test_cancel_queued_is_immediate(store):
    job = store.create("m", {})
    cancelled = store.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.completed_at is not None
    assert store.claim("w1", 60, ["m"]) is None
    assert store.cancel("video_nope") is None


def test_cancel_in_progress_asks_the_worker(store):
    job = store.create("m", {})
    store.claim("w1", 60, ["m"])
    asked = store.cancel(job.id)
    assert asked.status == "in_progress" and asked.cancel_requested
    assert store.cancel_requested(job.id)
    assert not store.mark_cancelled(job.id, "w2")
    assert store.mark_cancelled(job.id, "w1")
    assert store.get(job.id).status == "cancelled"
    assert store.cancel(job.id).status == "cancelled"


def test_cancel_of_a_finished_job_changes_nothing(store):
    job = store.create("m", {})
    store.claim("w1", 60, ["m"])
    store.complete(job.id, "w1", "o.mp4")
    before = store.get(job.id)
    assert store.cancel(job.id) == before
    assert not store.cancel_requested(job.id)


def test_a_cancelled_job_whose_worker_vanished_is_not_requeued(store):
    job = store.create("m", {})
    store.claim("w1", -1, ["m"])
    store.cancel(job.id)
    store.requeue_expired()
    assert store.get(job.id).status == "cancelled"


def test_queue_full_at_max_queue(store):
    a = store.create("m", {}, max_queue=2)
    store.create("m", {}, max_queue=2)
    with pytest.raises(QueueFull, match="max 2"):
        store.create("m", {}, max_queue=2)
    store.claim("w1", 60, ["m"])  # in_progress still counts
    with pytest.raises(QueueFull):
        store.create("m", {}, max_queue=2)
    store.complete(a.id, "w1", "o.mp4")
    store.create("m", {}, max_queue=2)  # room again
    assert store.counts()["queued"] + store.counts()["in_progress"] == 2
    assert len(store.list(limit=10)) == 3  # the refused ones left no row


def test_delete_removes_the_row(store):
    job = store.create("m", {})
    assert store.delete(job.id)
    assert store.get(job.id) is None and not store.delete(job.id)


def test_counts_every_status(store):
    jobs = _make(store, 4)
    store.claim("w", 60, ["m"])
    store.complete(jobs[0].id, "w", "o")
    store.claim("w", 60, ["m"])
    store.fail(jobs[1].id, "w", {"code": "e", "message": "m"})
    store.cancel(jobs[2].id)
    assert store.counts() == {"queued": 1, "in_progress": 0, "completed": 1, "failed": 1, "cancelled": 1}
    assert tuple(store.counts()) == STATUSES


# -- restart ----------------------------------------------------------------------------------------------
def test_restart_keeps_every_job(store_url):
    store = open_store(store_url)
    jobs = _make(store, 5)
    store.claim("w1", 60, ["m"])
    store.complete(jobs[0].id, "w1", "o.mp4")
    store.claim("w1", 60, ["m"])
    store.set_progress(jobs[1].id, "w1", 30)
    store.claim("w2", 60, ["m"])
    store.cancel(jobs[2].id)
    store.cancel(jobs[3].id)
    before = store.list(limit=100)
    store.close()

    reopened = open_store(store_url)
    assert reopened.list(limit=100) == before
    assert reopened.get(jobs[0].id).output == "o.mp4"
    assert reopened.get(jobs[1].id) == replace(before[3], progress=30)
    # the service's restart: jobs its replicas were running are queued again, and say so
    back = reopened.requeue_worker("w1", "stopped with the server")
    assert [j.id for j in back] == [jobs[1].id]
    assert reopened.claim("w9", 60, ["m"]).id == jobs[1].id
    reopened.close()


# -- opening a store (SQLite) -----------------------------------------------------------------------------
def test_open_store_takes_a_folder_or_a_sqlite_url(tmp_path):
    s = open_store(str(tmp_path / "st"))
    assert isinstance(s, SqliteJobStore) and s.path == tmp_path / "st" / "jobs.db"
    job = s.create("m", {})
    s.close()
    same = open_store(f"sqlite://{tmp_path / 'st' / 'jobs.db'}")
    assert same.get(job.id) is not None
    (mode,) = same._conn.execute("PRAGMA journal_mode").fetchone()
    (timeout,) = same._conn.execute("PRAGMA busy_timeout").fetchone()
    assert mode == "wal" and timeout >= 10_000
    same.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://relative/jobs.db", "absolute file"),
        ("redis://localhost", "unknown job store URL"),
    ],
)
def test_open_store_refuses_bad_urls(url, message):
    with pytest.raises(UserError, match=message):
        open_store(url)


def test_open_store_refuses_what_is_not_a_job_store(tmp_path):
    junk = tmp_path / "jobs.db"
    junk.write_bytes(b"\xff" * 4096)
    with pytest.raises(UserError, match="is not a job store"):
        open_store(f"sqlite://{junk}")
    with pytest.raises(UserError, match="is a file"):
        open_store(str(junk))
    other = tmp_path / "other.db"
    open_store(f"sqlite://{other}").close()
    con = sqlite3.connect(other)
    con.execute("UPDATE store_meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(UserError, match="schema version 99"):
        open_store(f"sqlite://{other}")


# -- PostgreSQL only --------------------------------------------------------------------------------------
def test_postgres_has_the_sqlite_schema(postgres_url, tmp_path):
    pg = open_store(postgres_url)
    sq = open_store(str(tmp_path))
    pg_cols = pg._run(
        lambda tx: [
            r[0]
            for r in tx.all(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'jobs' ORDER BY ordinal_position"
            )
        ]
    )
    sq_cols = [r[1] for r in sq._conn.execute("PRAGMA table_info(jobs)").fetchall()]
    assert pg_cols == sq_cols and "lease_expires_at" in pg_cols
    pg.close()
    sq.close()


def test_postgres_times_come_from_the_database_clock(postgres_url, tmp_path, monkeypatch):
    """This host's clock is ignored on PostgreSQL (hosts' clocks differ); SQLite uses it (the patch bites)."""
    monkeypatch.setattr(jobs_module.time, "time", lambda: 1000.0)
    pg = open_store(postgres_url)
    job = pg.create("m", {})
    claimed = pg.claim("w1", 60, ["m"])
    db_now = pg._run(lambda tx: tx.now)
    assert job.created_at > 1_700_000_000 and abs(claimed.lease_expires_at - (db_now + 60)) < 5
    sq = open_store(str(tmp_path))
    assert sq.create("m", {}).created_at == 1000
    pg.close()
    sq.close()


@pytest.mark.parametrize("outage", ["restart", "crash_2s_down"])
def test_postgres_restart_mid_run_loses_nothing(pg_server, outage):
    """A worker renews its lease (progress every 0.1 s) across `pg_ctl restart` (or a crash and 2 s down): its
    store reconnects, the job completes once on its first attempt, and every other job is still there."""
    url = pg_server.create_database()
    store = open_store(url)
    running = store.create("m", {"n": 0})
    waiting = [store.create("m", {"n": i}) for i in range(1, 4)] + [store.create("other", {})]
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=jobstore_workers.renew_loop, args=(url, "w1", 10.0, 4.0, results))
    proc.start()
    try:
        for _ in range(600):
            if store.get(running.id).progress >= 3:  # the worker is renewing
                break
            time.sleep(0.05)
        else:
            pytest.fail("the worker never started renewing")
        if outage == "restart":
            pg_server.restart("fast")
        else:
            pg_server.stop("immediate")
            time.sleep(2.0)
            pg_server.start()
        added = store.create("m", {"n": "after"})  # this process's store reconnects too
        kind, job_id, ok, renewals, worker_reconnects = results.get(timeout=90)
        proc.join(timeout=30)
    finally:
        if proc.is_alive():
            proc.kill()
    assert (kind, job_id, ok) == ("done", running.id, True), (kind, ok)
    assert worker_reconnects >= 1 and renewals > 3  # it renewed before (progress 3) and after the outage
    assert store.reconnects >= 1
    done = store.get(running.id)
    assert (done.status, done.attempts, done.note, done.output) == ("completed", 1, None, f"{running.id}-a1.mp4")
    for job in [*waiting, added]:
        assert store.get(job.id).status == "queued"
    assert store.counts() == {"queued": 5, "in_progress": 0, "completed": 1, "failed": 0, "cancelled": 0}
    store.close()


def test_postgres_down_past_the_retry_window_is_one_clear_error(pg_server):
    url = pg_server.create_database()
    store = open_store(url, retry_s=1.0)
    job = store.create("m", {})
    pg_server.stop()
    try:
        start = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"unreachable for 1 s .*the jobs are kept in the database"):
            store.get(job.id)
        assert time.monotonic() - start < 10
    finally:
        pg_server.start()
    assert store.get(job.id) == job  # reconnects once the server is back
    store.close()


def test_postgres_open_refuses_a_wrong_url_in_one_line(pg_server):
    with pytest.raises(UserError, match=r"unreachable .*start the server or fix the store URL"):
        open_store(f"postgresql://postgres@127.0.0.1:{_free_port()}/x", retry_s=0.5)
    start = time.monotonic()
    with pytest.raises(UserError, match=r"does not exist: fix the store URL"):
        open_store(pg_server.url("no_such_db"))
    assert time.monotonic() - start < 5  # no retrying what cannot succeed
    with pytest.raises(UserError) as err:
        open_store(f"postgresql://postgres:s3cret@127.0.0.1:{_free_port()}/x", retry_s=0.2)
    assert "s3cret" not in str(err.value) and "\n" not in str(err.value)


def test_postgres_commits_progress_asynchronously_and_state_changes_durably(postgres_url, monkeypatch):
    """Progress and renewals (most of a job's writes) skip the WAL flush; create/claim/complete never do."""
    from ltx_ascend.serve import jobs_postgres

    store = open_store(postgres_url)
    seen: list[str] = []
    execute = jobs_postgres._PgTx.execute
    monkeypatch.setattr(
        jobs_postgres._PgTx, "execute", lambda tx, sql, params=(): seen.append(sql) or execute(tx, sql, params)
    )

    def soft(call) -> bool:
        seen.clear()
        call()
        return "SET LOCAL synchronous_commit = off" in seen

    job = store.create("m", {})
    assert not soft(lambda: store.create("m", {}))
    assert not soft(lambda: store.claim("w1", 60, ["m"]))
    assert soft(lambda: store.set_progress(job.id, "w1", 5))
    assert soft(lambda: store.renew(job.id, "w1", 60))
    assert not soft(lambda: store.complete(job.id, "w1", "o.mp4"))
    assert not soft(lambda: store.cancel(job.id))
    store.close()
