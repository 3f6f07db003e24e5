"""Worker loops run in separate processes by the job store tests (spawned: they import only the store)."""

from __future__ import annotations

import time


def claim_all(url: str, worker: str, models: list[str], barrier, results) -> None:
    """Claim and complete jobs until the queue is empty; report each claimed id (and whether complete won)."""
    from ltx_ascend.serve.jobs import open_store

    store = open_store(url)
    barrier.wait()
    claimed = []
    try:
        while True:
            job = store.claim(worker, 60.0, models)
            if job is None:
                break
            claimed.append(job.id)
            time.sleep(0.005)  # hold it a moment: the other processes claim meanwhile
            if not store.complete(job.id, worker, f"{job.id}-{worker}.mp4", attempt=job.attempts):
                raise AssertionError(f"{worker} lost a lease it never gave up: {job.id}")
    finally:
        store.close()
        results.put((worker, claimed))


def renew_loop(url: str, worker: str, lease_s: float, seconds: float, results) -> None:
    """Claim one job, renew and report progress for `seconds` (across a database restart), then complete it."""
    from ltx_ascend.serve.jobs import open_store

    store = open_store(url, retry_s=60.0)
    job = None
    renewals = 0
    try:
        job = store.claim(worker, lease_s, ["m"])
        assert job is not None
        end = time.monotonic() + seconds
        step = 0
        while time.monotonic() < end:
            step += 1
            if not store.set_progress(job.id, worker, min(99, step), attempt=job.attempts):
                raise AssertionError(f"{worker} lost its lease on {job.id}")
            renewals += 1
            time.sleep(0.1)
        ok = store.complete(job.id, worker, f"{job.id}-a{job.attempts}.mp4", attempt=job.attempts)
        results.put(("done", job.id, ok, renewals, store.reconnects))
    except BaseException as exc:
        results.put(("error", job.id if job else None, repr(exc), renewals, None))
        raise
    finally:
        store.close()


def claim_and_hang(url: str, worker: str, lease_s: float, results) -> None:
    """Claim one job and never renew it: the parent kills this process with SIGKILL."""
    from ltx_ascend.serve.jobs import open_store

    store = open_store(url)
    job = store.claim(worker, lease_s, ["m"])
    results.put(job.id if job else None)
    time.sleep(600)
