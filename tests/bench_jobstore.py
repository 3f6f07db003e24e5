"""Job store write rates, printed as a table: `python -m tests.bench_jobstore [--seconds S]`.

Per engine (SQLite file, a PostgreSQL server started here with fsync on) and connection count, the rate of
`set_progress` (the store's commonest write; asynchronous commit on PostgreSQL) and of `create` (a durable
commit). Needs PostgreSQL's binaries for the PostgreSQL rows (tests/pg_server.py)."""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time


def _rate(url: str, kind: str, seconds: float, start, results) -> None:
    from ltx_ascend.serve.jobs import open_store

    store = open_store(url)
    job = store.create("bench", {"prompt": "x" * 1000})
    worker = f"bench-{multiprocessing.current_process().pid}"
    store._run(lambda tx: tx.execute(
        "UPDATE jobs SET status = 'in_progress', worker = ?, attempts = 1, lease_s = 60 WHERE id = ?", (worker, job.id)
    ))  # fmt: skip
    start.wait()
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        if kind == "set_progress":
            store.set_progress(job.id, worker, n % 100)
        else:
            store.create("bench", {"prompt": "x" * 1000})
        n += 1
    store.close()
    results.put(n / seconds)


def measure(url: str, kind: str, connections: int, seconds: float) -> float:
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(connections), ctx.Queue()
    procs = [ctx.Process(target=_rate, args=(url, kind, seconds, start, results)) for _ in range(connections)]
    for p in procs:
        p.start()
    total = sum(results.get(timeout=120 + seconds) for _ in procs)
    for p in procs:
        p.join()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    import tests.pg_server as pg

    pg.TEST_SETTINGS = pg.TEST_SETTINGS.replace("-c fsync=off -c full_page_writes=off", "-c fsync=on")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        urls = [("sqlite", f"sqlite://{folder}/jobs.db")]
        server = None
        if pg.missing_reason() is None:
            server = pg.PgServer.start_new()
            urls.append(("postgresql (fsync on)", server.create_database()))
        try:
            for engine, url in urls:
                for kind in ("set_progress", "create"):
                    rows.append((engine, kind, *(measure(url, kind, n, args.seconds) for n in (1, 4))))
        finally:
            if server is not None:
                server.close()
    print(f"{'engine':<22} {'write':<13} {'1 connection /s':>16} {'4 connections /s':>17}")
    for engine, kind, one, four in rows:
        print(f"{engine:<22} {kind:<13} {one:>16,.0f} {four:>17,.0f}")


if __name__ == "__main__":
    main()
